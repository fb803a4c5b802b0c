"""The delay pattern: how K parallel codebooks become one sequence of LM steps, and back.

EnCodec gives K codebooks per frame (`codes_BKT`). The LM predicts all K tokens of a step at
once, but codebook k of frame t should see codebooks 0..k-1 of the same frame. The delay pattern
shifts codebook k right by `delays[k]` steps, so that when it is predicted, the coarser codebooks
of its frame are already in the context (MusicGen, Copet et al. 2023, §2.2, "delay" interleaving;
AudioGen-medium uses delays [0, 1, 2, 3]).

The layout, with S = T + max(delays) + 1 steps:

    step 0 is all special (the LM's "start" input, it holds no code);
    step s holds, for codebook k, frame t = s - 1 - delays[k] when 0 <= t < T, else special.

For K = 4, T = 5, delays [0, 1, 2, 3] and c[k, t] = 10k + t (S = special):

    k0: S  0  1  2  3  4  S  S  S
    k1: S  S 10 11 12 13 14  S  S
    k2: S  S  S 20 21 22 23 24  S
    k3: S  S  S  S 30 31 32 33 34

The LM's output at step s predicts the input of step s + 1, so codebook k of frame t is *produced*
by the logits at step t + delays[k] and *written* at step t + 1 + delays[k].

Everything here is index math on static shapes: the gather indices are computed once per
(delays, T) in numpy, and applying them is one gather, so the functions work inside `jax.jit`
(with `delays` static) and numpy in gives numpy out.

Reference: audiocraft `modules/codebooks_patterns.py` (`DelayedPatternProvider` with
`flatten_first=0, empty_initial=0`; `Pattern.build_pattern_sequence`, `revert_pattern_sequence`,
`revert_pattern_logits`, `get_first_step_with_timesteps`).

Differences from the reference:
- No `Pattern` object with a list-of-coordinates layout: the delay pattern is closed-form
  (s = t + 1 + delays[k]), so the index tables are built directly, vectorised.
- Delays need not be sorted (the reference asserts they are non-decreasing); the layout formula is
  the same either way.
- `revert_delayed` takes T and reads the first T + max(delays) + 1 steps; the reference's pattern
  carries its own T and fills coordinates past the end of a short sequence with a special token.
- `flatten_first` / `empty_initial` and the other pattern providers are not implemented:
  AudioGen does not use them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _check_delays(delays: Sequence[int]) -> tuple[int, ...]:
    delays = tuple(delays)
    if len(delays) == 0:
        raise ValueError("delays is empty: need one delay per codebook")
    for d in delays:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or d < 0:
            raise ValueError(f"delays must be non-negative ints, got {delays}")
    return tuple(int(d) for d in delays)


def _check_T(T: int) -> int:
    if isinstance(T, (bool, np.bool_)) or not isinstance(T, (int, np.integer)) or T < 0:
        raise ValueError(f"T (number of frames) must be a non-negative int, got {T!r}")
    return int(T)


def _xp(x: Any):
    """jnp for JAX arrays (and tracers under jit), numpy for everything else."""
    return jnp if isinstance(x, jax.Array) else np


def num_steps(T: int, delays: Sequence[int]) -> int:
    """S = T + max(delays) + 1: the number of LM steps that hold T frames in the delayed layout."""
    return _check_T(T) + max(_check_delays(delays)) + 1


def step_of(t: int, k: int, delays: Sequence[int]) -> int:
    """The step s at which codebook k of frame t sits in the delayed sequence: t + 1 + delays[k].

    The LM produces that token from its logits at step s - 1.
    """
    delays = _check_delays(delays)
    if not 0 <= k < len(delays):
        raise ValueError(f"codebook {k} out of range for {len(delays)} codebooks")
    return int(t) + 1 + delays[k]


def first_step_with(t: int, delays: Sequence[int]) -> int:
    """The first step holding any codebook of frame t: t + 1 + min(delays).

    Mirrors `Pattern.get_first_step_with_timesteps`. Generation after a prompt of t frames starts
    writing at this step (everything before it is fully determined by the prompt).
    """
    return int(t) + 1 + min(_check_delays(delays))


@functools.lru_cache(maxsize=128)
def _frame_table(delays: tuple[int, ...], T: int) -> np.ndarray:
    S = T + max(delays) + 1
    frame_KS = np.arange(S)[None, :] - 1 - np.asarray(delays)[:, None]
    frame_KS[(frame_KS < 0) | (frame_KS >= T)] = -1
    frame_KS.setflags(write=False)
    return frame_KS


def delayed_frames(delays: Sequence[int], T: int) -> np.ndarray:
    """The frame index each cell of the delayed layout holds, -1 for special cells.

    Returns:
      int [K, S] numpy array, S = T + max(delays) + 1: `frame_KS[k, s] = s - 1 - delays[k]` where
      that is a real frame (0 <= t < T), else -1.
    """
    return _frame_table(_check_delays(delays), _check_T(T)).copy()


def delay_mask(delays: Sequence[int], T: int) -> np.ndarray:
    """True where step s holds a real coordinate (frame t < T) of codebook k.

    This is the reference's `mask` from `build_pattern_sequence(..., keep_only_valid_steps=False)`.

    Returns:
      bool [K, S] numpy array, S = T + max(delays) + 1.
    """
    return _frame_table(_check_delays(delays), _check_T(T)) >= 0


def build_delayed(codes_BKT, delays: Sequence[int], special: int):
    """Lays codes out in the delay pattern; step 0 and cells outside the pattern hold `special`.

    Same values as the reference's
    `build_pattern_sequence(codes, special, keep_only_valid_steps=False)`.
    Under `jax.jit`, pass `delays` as a static tuple; T is the static shape of `codes_BKT`.

    Args:
      codes_BKT: int [B, K, T] codes (numpy or jax). Any values are carried over as they are, so
        a placeholder such as -1 for "not generated yet" works.
      delays: K non-negative ints, the delay of each codebook in steps.
      special: the special token id (the LM's `card`).

    Returns:
      seq_BKS: [B, K, S] with S = T + max(delays) + 1, the dtype of `codes_BKT`; numpy in, numpy
        out.
    """
    xp = _xp(codes_BKT)
    codes_BKT = xp.asarray(codes_BKT)
    delays = _check_delays(delays)
    if codes_BKT.ndim != 3:
        raise ValueError(f"codes must be [B, K, T], got shape {codes_BKT.shape}")
    B, K, T = codes_BKT.shape
    if K != len(delays):
        raise ValueError(
            f"codes have K={K} codebooks but {len(delays)} delays were given: {delays}"
        )
    frame_KS = _frame_table(delays, T)
    # Point special cells at an extra column T that holds the special token, then gather once.
    index_KS = np.where(frame_KS >= 0, frame_KS, T)
    special_BK1 = xp.full((B, K, 1), special, dtype=codes_BKT.dtype)
    padded_BKT1 = xp.concatenate([codes_BKT, special_BK1], axis=2)
    return padded_BKT1[:, np.arange(K)[:, None], index_KS]


def revert_delayed(seq_BKS, delays: Sequence[int], T: int):
    """Undoes `build_delayed`: `codes[b, k, t] = seq[b, k, t + 1 + delays[k]]`.

    Same values as the reference's `revert_pattern_sequence` for the pattern of T frames.

    Args:
      seq_BKS: [B, K, S] delayed sequence (numpy or jax), S >= T + max(delays) + 1; later steps are
        ignored.
      delays: K non-negative ints, as given to `build_delayed`.
      T: number of frames to read back.

    Returns:
      codes_BKT: [B, K, T], the dtype of `seq_BKS`; numpy in, numpy out.
    """
    xp = _xp(seq_BKS)
    seq_BKS = xp.asarray(seq_BKS)
    delays, T = _check_delays(delays), _check_T(T)
    if seq_BKS.ndim != 3:
        raise ValueError(f"seq must be [B, K, S], got shape {seq_BKS.shape}")
    _, K, S = seq_BKS.shape
    if K != len(delays):
        raise ValueError(f"seq has K={K} codebooks but {len(delays)} delays were given: {delays}")
    if S < T + max(delays) + 1:
        raise ValueError(
            f"seq has S={S} steps, but T={T} frames with delays {delays} need "
            f"S >= T + max(delays) + 1 = {T + max(delays) + 1}"
        )
    index_KT = np.arange(T)[None, :] + 1 + np.asarray(delays)[:, None]
    return seq_BKS[:, np.arange(K)[:, None], index_KT]


def revert_logits(logits_BKSV, delays: Sequence[int], T: int, fill: float = float("nan")):
    """Maps LM outputs on the delayed sequence back to frames, for a loss on `codes_BKT`.

    The output at step s predicts the input at step s + 1, so the prediction of codebook k of
    frame t is `logits[:, k, t + delays[k]]`. It counts as valid where its target step is in the
    sequence too: t + delays[k] < S - 1 (the last step's output is never used). Mirrors the
    reference's `revert_pattern_logits` on the two sequences it builds: the full one
    (S = T + max(delays) + 1) and, in `LMModel.compute_predictions` with
    `keep_only_valid_steps=True`, its first T + 1 + min(delays) steps.

    Args:
      logits_BKSV: float [B, K, S, V] LM outputs (numpy or jax), S >= 1.
      delays: K non-negative ints.
      T: number of frames.
      fill: value of the invalid predictions (the reference uses NaN, so misuse is loud).

    Returns:
      (logits_BKTV [B, K, T, V], mask_KT bool [K, T] numpy, True where the prediction is valid).
    """
    xp = _xp(logits_BKSV)
    logits_BKSV = xp.asarray(logits_BKSV)
    delays, T = _check_delays(delays), _check_T(T)
    if logits_BKSV.ndim != 4:
        raise ValueError(f"logits must be [B, K, S, V], got shape {logits_BKSV.shape}")
    _, K, S, _ = logits_BKSV.shape
    if K != len(delays):
        raise ValueError(
            f"logits have K={K} codebooks but {len(delays)} delays were given: {delays}"
        )
    source_KT = np.arange(T)[None, :] + np.asarray(delays)[:, None]
    mask_KT = source_KT < S - 1
    gathered = logits_BKSV[:, np.arange(K)[:, None], np.where(mask_KT, source_KT, 0)]
    return xp.where(mask_KT[None, :, :, None], gathered, fill), mask_KT
