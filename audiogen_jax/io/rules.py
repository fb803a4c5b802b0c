"""Declarative checkpoint mapping: `Rule`s from source keys onto parameter paths, checked up front.

A model's weight map is a list of `Rule`s (each model's `*_params.py`). `plan_conversion` checks the
whole mapping before any tensor data is read: every source key is consumed exactly once, every
parameter is filled exactly once, and every rule, run on zero-stride stand-ins of its sources'
shapes, gives the shapes the config implies. It raises one `ConversionError` listing every problem,
so one run names them all; `convert_state` then reads and converts one group of tensors at a time.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from audiogen_jax.io.errors import ConversionError, short_list


def as_numpy(t: Any) -> np.ndarray:
    """A source tensor's values: numpy arrays as they are, lazy tensors (`.numpy()`) read now."""
    return t if isinstance(t, np.ndarray) else t.numpy()


def _first(srcs: dict[str, np.ndarray]) -> np.ndarray:
    return next(iter(srcs.values()))


@dataclasses.dataclass(frozen=True)
class Rule:
    """Maps the source keys matching `pattern` onto `targets` (templates using the regex's groups).

    All source keys that give the same targets form one group; `fn` receives them as
    {source_key: array} (in the order they appear in the checkpoint) and returns one array per
    target. Examples:
      weight norm:  (?P<m>.*)\\.weight_[gv]  ->  \\g<m>.kernel         fn folds g and v into one
      packed qkv:   (.*)\\.in_proj_weight    ->  (\\1.q, \\1.k, \\1.v)   fn splits the rows in 3
    `fn` also runs on zero-stride stand-ins to check shapes, so it should only reshape, transpose,
    split or do arithmetic.
    """

    pattern: str
    targets: str | tuple[str, ...]
    fn: Callable[[dict[str, np.ndarray]], np.ndarray | tuple[np.ndarray, ...]] = _first

    def target_tuple(self, m: re.Match) -> tuple[str, ...]:
        ts = (self.targets,) if isinstance(self.targets, str) else self.targets
        return tuple(m.expand(t) for t in ts)

    def apply(self, srcs: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        out = self.fn(srcs)
        return out if isinstance(out, tuple) else (out,)


@dataclasses.dataclass(frozen=True)
class Group:
    """Source keys that one rule turns into `targets` together."""

    rule: Rule
    sources: tuple[str, ...]
    targets: tuple[str, ...]


def plan_conversion(
    state: Mapping[str, Any],
    rules: list[Rule],
    expected: Mapping[str, tuple[int, ...]],
    ignore: Iterable[str] = (),
) -> list[Group]:
    """Groups source keys by rule and checks keys and shapes before any tensor is read.

    Args:
      state: {source key: tensor}; only the keys and `.shape`s are used.
      rules: the model's weight map.
      expected: {parameter path: shape} the config implies.
      ignore: regexes of source keys to drop (training buffers, a decoder not ported).

    Raises:
      ConversionError: listing unexpected source keys (no rule matched), keys claimed by two rules,
        expected parameters that no rule fills or that two rules fill, and mis-shaped parameters.
    """
    ignore_res = [re.compile(p) for p in ignore]
    compiled = [(r, re.compile(r.pattern)) for r in rules]
    groups: dict[tuple[int, tuple[str, ...]], list[str]] = {}
    unexpected, doubly = [], []
    for key in state.keys():
        if any(p.fullmatch(key) for p in ignore_res):
            continue
        hits = [(i, r, m) for i, (r, p) in enumerate(compiled) if (m := p.fullmatch(key))]
        if not hits:
            unexpected.append(key)
            continue
        if len(hits) > 1:
            doubly.append(key)
        i, r, m = hits[0]
        groups.setdefault((i, r.target_tuple(m)), []).append(key)
    plan = [Group(rules[i], tuple(srcs), targets) for (i, targets), srcs in groups.items()]
    filled: dict[str, int] = {}
    for g in plan:
        for t in g.targets:
            filled[t] = filled.get(t, 0) + 1
    missing = sorted(k for k in expected if k not in filled)
    unknown_targets = sorted(t for t in filled if t not in expected)
    twice = sorted(t for t, n in filled.items() if n > 1)
    problems = []
    if unexpected:
        problems.append(f"unexpected source keys ({len(unexpected)}): {short_list(unexpected)}")
    if doubly:
        problems.append(f"source keys matched by several rules: {short_list(doubly)}")
    if missing:
        problems.append(
            f"parameters missing from the checkpoint ({len(missing)}): {short_list(missing)}"
        )
    if unknown_targets:
        problems.append(
            f"checkpoint fills parameters the config does not have: {short_list(unknown_targets)}"
        )
    if twice:
        problems.append(f"parameters filled more than once: {short_list(twice)}")
    misshaped = _shape_problems(state, plan, expected)
    if misshaped:
        problems.append(
            f"shapes disagree with the config ({len(misshaped)}):\n    " + "\n    ".join(misshaped)
        )
    if problems:
        raise ConversionError("checkpoint does not match its config:\n  " + "\n  ".join(problems))
    return plan


def _shape_problems(
    state: Mapping[str, Any], plan: list[Group], expected: Mapping[str, tuple[int, ...]]
) -> list[str]:
    """Runs every rule on zero-stride stand-ins of its sources (no memory, no reads)."""
    problems = []
    for g in plan:
        if any(t not in expected for t in g.targets):
            continue  # already reported
        stand_ins = {k: np.broadcast_to(np.float32(0), tuple(state[k].shape)) for k in g.sources}
        try:
            with np.errstate(all="ignore"):  # arithmetic on zeros (a weight-norm fold: 0 / 0)
                outs = g.rule.apply(stand_ins)
        except (ValueError, IndexError, TypeError) as e:
            problems.append(f"{', '.join(g.sources)}: {e}")
            continue
        for name, arr in zip(g.targets, outs, strict=True):
            if tuple(arr.shape) != tuple(expected[name]):
                problems.append(
                    f"{name}: checkpoint gives {tuple(arr.shape)}, "
                    f"config wants {tuple(expected[name])}"
                )
    return problems


def convert_state(
    state: Mapping[str, Any], plan: list[Group], dtype: np.dtype | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (parameter path, array) one group at a time, reading only that group's tensors.

    Args:
      state: {source key: tensor}, as given to `plan_conversion`.
      plan: from `plan_conversion` (keys and shapes already checked).
      dtype: cast floating-point outputs to this dtype; None keeps what the rules give.
    """
    for g in plan:
        outs = g.rule.apply({k: as_numpy(state[k]) for k in g.sources})
        for name, arr in zip(g.targets, outs, strict=True):
            if dtype is not None and np.issubdtype(arr.dtype, np.floating):
                arr = arr.astype(dtype)
            yield name, arr
