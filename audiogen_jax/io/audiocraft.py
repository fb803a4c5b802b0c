"""audiocraft export packages and their training config (`xp.cfg`).

audiocraft exports a model (`state_dict.bin`, `compression_state_dict.bin`) as a `torch.save`d dict:
`best_state` (the model's state dict), `xp.cfg` (the whole training config as a YAML string, its
OmegaConf interpolations `${...}` unresolved), `version` and `exported`. `load_audiocraft_package`
reads one without torch; `YamlConfig` resolves the interpolations of the keys that are read. A
codec export may instead point to a pretrained model by name (`pretrained_pointer`).

The config comes from an untrusted file, so its parsing is bounded, each limit a clear
`ConversionError`: the YAML text is at most `MAX_CONFIG_BYTES`; YAML aliases are expanded by
reference (as PyYAML loads them), and a tree that would expand to more than `MAX_VALUES` values (an
alias bomb) or refers to itself is refused; resolving `${...}` stops at `MAX_DEPTH` nested
references and at `MAX_VALUES` values or `MAX_CHARS` characters produced by one lookup.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml

from audiogen_jax.io.errors import ConversionError, short_list
from audiogen_jax.io.torch_pickle import LazyTensor, load_torch_checkpoint

_INTERP = re.compile(r"\$\{([^}]*)\}")
# AudioGen's xp.cfg is about 20 KB and 2,000 values; these leave a wide margin.
MAX_CONFIG_BYTES = 2**20
MAX_VALUES = 200_000
MAX_CHARS = 2**20
MAX_DEPTH = 20


def _expanded_size(tree: Any) -> int:
    """How many values `tree` holds once every shared (aliased) node is counted each time it
    appears; refuses a tree that contains itself, and integers past 64 bits (Python cannot even
    print those). Linear in the number of distinct nodes."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    todo: list[tuple[Any, bool]] = [(tree, False)]
    while todo:
        node, done = todo.pop()
        if isinstance(node, int) and node.bit_length() > 64:
            raise ConversionError(f"xp.cfg holds a {node.bit_length()}-bit integer; refusing")
        if not isinstance(node, (dict, list)):
            continue
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        if done:
            open_.discard(id(node))
            total = 1 + sum(size.get(id(c), 1) for c in children)
            size[id(node)] = min(total, MAX_VALUES + 1)  # saturate: the answer is "too many"
            continue
        if id(node) in size:
            continue
        if id(node) in open_:
            raise ConversionError("xp.cfg contains itself (a recursive YAML alias)")
        open_.add(id(node))
        todo.append((node, True))
        todo += [(c, False) for c in children]
    return size.get(id(tree), 1)


class _Budget:
    """Values and characters one `YamlConfig.get` may produce."""

    def __init__(self, where: str):
        self.where, self.values, self.chars = where, 0, 0

    def spend(self, value: Any) -> None:
        self.values += 1
        if isinstance(value, str):
            self.chars += len(value)
        if self.values > MAX_VALUES or self.chars > MAX_CHARS:
            raise ConversionError(
                f"xp.cfg: resolving {self.where!r} produces more than {MAX_VALUES} values or "
                f"{MAX_CHARS} characters; refusing"
            )


class YamlConfig:
    """An OmegaConf-style YAML tree whose `${a.b}` interpolations are resolved lazily, on the keys
    read.

    audiocraft exports its training config unresolved (`encodec.sample_rate: ${sample_rate}`), and
    some keys we never read (`${oc.env:USER}`) cannot be resolved on every machine, so only what is
    asked for is resolved.
    """

    def __init__(self, tree: Mapping[str, Any]):
        self.tree = tree

    @classmethod
    def from_text(cls, text: str) -> YamlConfig:
        """Parses the YAML text, within the limits in the module docstring."""
        if len(text) > MAX_CONFIG_BYTES:
            raise ConversionError(
                f"xp.cfg is {len(text)} characters; refusing configs over {MAX_CONFIG_BYTES}"
            )
        try:
            tree = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError) as e:
            raise ConversionError(f"xp.cfg is not valid YAML ({type(e).__name__}: {e})") from e
        if not isinstance(tree, dict):
            raise ConversionError("xp.cfg is not a YAML mapping")
        if _expanded_size(tree) > MAX_VALUES:
            raise ConversionError(
                f"xp.cfg expands to more than {MAX_VALUES} values (nested YAML aliases); refusing"
            )
        return cls(tree)

    def get(self, dotted: str, default: Any = ...) -> Any:
        """The resolved value at `dotted` ("a.b.0"); `default` if absent (an error if not given)."""
        return self._resolve(self._lookup(dotted, default), dotted, 0, _Budget(dotted))

    def has(self, dotted: str) -> bool:
        return self._lookup(dotted, None) is not None

    def _lookup(self, dotted: str, default: Any) -> Any:
        node: Any = self.tree
        for part in dotted.split("."):
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                if default is ...:
                    raise ConversionError(f"xp.cfg has no key {dotted!r}")
                return default
        return node

    def _resolve(self, value: Any, where: str, depth: int, budget: _Budget) -> Any:
        if depth > MAX_DEPTH:
            raise ConversionError(
                f"xp.cfg: interpolations nest deeper than {MAX_DEPTH} at {where!r}"
            )
        budget.spend(value)
        if isinstance(value, str):
            whole = _INTERP.fullmatch(value)
            if whole:
                ref = whole.group(1)
                return self._resolve(self._ref(ref, where), ref, depth + 1, budget)
            if _INTERP.search(value):
                out = _INTERP.sub(
                    lambda m: str(
                        self._resolve(self._ref(m.group(1), where), m.group(1), depth + 1, budget)
                    ),
                    value,
                )
                budget.spend(out)
                return out
            return value
        if isinstance(value, Mapping):
            return {k: self._resolve(v, f"{where}.{k}", depth, budget) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v, f"{where}.{i}", depth, budget) for i, v in enumerate(value)]
        return value

    def _ref(self, ref: str, where: str) -> Any:
        if ref.startswith("oc.env:"):
            name, _, default = ref[len("oc.env:") :].partition(",")
            if name in os.environ:
                return os.environ[name]
            if default:
                return default.strip()
            raise ConversionError(f"xp.cfg: {where!r} needs environment variable {name}")
        if ref.startswith("."):
            raise ConversionError(
                f"xp.cfg: relative interpolation ${{{ref}}} at {where!r} is not supported"
            )
        return self._lookup(ref, ...)


@dataclasses.dataclass(frozen=True)
class AudiocraftPackage:
    state: Mapping[str, LazyTensor | np.ndarray]  # `best_state`
    cfg: YamlConfig  # `xp.cfg`
    version: str | None  # the audiocraft version that exported it


def pretrained_pointer(obj: Any) -> str | None:
    """The model an export points to instead of holding weights, or None.

    audiocraft's `export_pretrained_compression_model` writes `{'pretrained': name, ...}` for a
    codec it did not train (`facebook/encodec_32khz`: a transformers EnCodec on the hub), and its
    loader then fetches that model (`CompressionModel.get_pretrained`).
    """
    if isinstance(obj, dict) and "pretrained" in obj and "best_state" not in obj:
        name = obj["pretrained"]
        if not isinstance(name, str):
            raise ConversionError(f"'pretrained' should name a model, got {type(name).__name__}")
        return name
    return None


def load_audiocraft_package(
    path: str | os.PathLike, what: str, obj: Any = None
) -> AudiocraftPackage:
    """Reads an audiocraft export (`state_dict.bin` or `compression_state_dict.bin`).

    Args:
      path: the file.
      what: what it should hold, for error messages ("LM", "compression (EnCodec)").
      obj: the file's contents when already read (`load_torch_checkpoint(path)`).
    """
    obj = load_torch_checkpoint(path) if obj is None else obj
    if not isinstance(obj, dict) or "best_state" not in obj or "xp.cfg" not in obj:
        found = [str(k)[:40] for k in list(obj)[:10]] if isinstance(obj, dict) else type(obj)
        raise ConversionError(
            f"{path} is not an audiocraft {what} checkpoint: expected a dict with 'best_state' "
            f"and 'xp.cfg', found {found}"
        )
    if "pretrained" in obj:
        raise ConversionError(
            f"{path} points to another pretrained model ({str(obj['pretrained'])[:200]!r})"
        )
    state, cfg_text, version = obj["best_state"], obj["xp.cfg"], obj.get("version")
    if not isinstance(cfg_text, str):
        raise ConversionError(
            f"{path}: 'xp.cfg' should be a YAML string, got {type(cfg_text).__name__}"
        )
    if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
        raise ConversionError(f"{path}: 'best_state' is not a dict of named tensors")
    not_tensors = [k[:100] for k, v in state.items() if not isinstance(v, (LazyTensor, np.ndarray))]
    if not_tensors:
        raise ConversionError(
            f"{path}: 'best_state' entries that are not tensors: {short_list(not_tensors)}"
        )
    try:
        cfg = YamlConfig.from_text(cfg_text)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from e
    return AudiocraftPackage(state, cfg, version if isinstance(version, str) else None)
