"""Text-to-audio generation: classifier-free guided decoding of the delayed codes in one `lax.scan`.

The algorithm, as in MusicGen/AudioGen (Copet et al. 2023 §2.2-2.4, Kreuk et al. 2023 §3):

    descriptions ──T5 + output_proj──▶ condition [2B, L, D] for the batch [cond; null]
    code buffer [B, K, T] = prompt | -1 (unknown) ──delay pattern──▶ seq [B, K, S]
                                                                   (S = T + max_delay + 1)
    prefill the KV cache with the prompt's steps, then for each step s (one scan iteration):
        logits [2B, K, V] = LM(seq[:, :, s - 1], position s - 1, KV cache)    (one forward)
        guided = uncond + (cond - uncond) * cfg_coef
        ids    = sample(fold_in(key, s), guided)                     (or argmax when greedy)
        seq[:, :, s] = ids where the cell is still -1    (prompt, special cells never overwritten)
    undo the delay pattern ──▶ codes [B, K, T] (prompt included)
    EnCodec decode ──▶ wav [B, 1, T * hop]

Everything from the text encoder to the reverted codes is one `jax.jit` program (`_token_program`):
the condition and the cross-attention keys/values are computed once, the step is the LM's cached
`step` (weights read once per step, CFG as one forward of 2B rows), and there is no host round trip
per step except the optional progress callback.

Static shapes, so new inputs rarely recompile:
  - The number of frames T and the prompt length T0 are *traced* scalars. Their buffers are padded
    up to `frame_bucket` frames (`bucket_frames`): T_b = ceil(T / bucket) * bucket (at most the
    window). Cells of frames t >= T are laid out as special tokens, exactly as the reference lays
    out a pattern of T frames, and the scan iterations past the last real step S = T + max_delay + 1
    skip the LM call (`lax.cond`), so padding costs no LM steps. A new duration recompiles only when
    it crosses a bucket.
  - A new batch of the same size B with the same tokenized text length L reuses the program. L is
    not bucketed: the reference's cross-attention has no key mask, so padded (zero) text rows change
    the softmax; padding L further would change the result. A new L recompiles.
  - Changing `cfg_coef` or the seed never recompiles; the sampling settings (`SamplingParams`) and
    the progress flag are static.
  The prompt is written into the KV cache by one prefill forward over T0_b (bucketed) steps. Steps
  past the prompt in that block fill cache slots with placeholder values; each is overwritten by the
  scan's step at that position before any query can attend to it (causal attention by position).

Durations beyond the model's window (`max_frames`, the training segment: 10 s for AudioGen) use the
reference's sliding window (`BaseGenModel._generate_tokens`): each window re-runs generation with
the last `max_frames - stride_frames` frames of the previous window as its prompt and keeps only the
new frames.

Progress: `progress=True` adds a `jax.debug.callback` in the scan body that moves a tqdm bar (or,
with `progress=callable`, calls it with each step's index: benchmarks/bench_generate.py times steps
this way); the program stays one compiled scan (a separate compilation from the progress-free one). Measured cost
(2-core CPU, tiny-random, 10 s = 503 steps, best of 5): about 0.4 ms per step, all of it the
callback's host round trip (tqdm itself adds nothing measurable). That is ~0.1% of an
AudioGen-medium step (~0.3-0.5 s) but 2-4x the tiny model's 0.2-0.6 ms steps; see
docs/parity.md (## Generation).

References: audiocraft 1.3.0 `models/lm.py` (`LMModel.generate`, `_sample_next_token`),
`models/genmodel.py` (`BaseGenModel.generate*`, `_generate_tokens`).

Differences from the reference:
- The prompt is prefilled over steps [0, T0 + min_delay) and the scan's first step feeds step
  T0 + min_delay on its own; the reference feeds [0, T0 + min_delay] as one block. Same tokens;
  float rounding of the cached keys/values may differ in the last bits.
- The cross-attention keys/values of the condition are computed once (the reference recomputes them
  at every step); the self-attention cache is preallocated instead of grown by concatenation.
- Randomness: JAX keys, `fold_in(key, window)` then `fold_in(., step)`; the torch RNG stream is not
  reproduced, so only greedy decoding is token-identical to the reference.
- `two_step_cfg` (separate cond/null forwards) is not implemented: AudioGen uses the batched form.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from audiogen_jax import lm as lmlib
from audiogen_jax import patterns, sampling

UNKNOWN = -1  # a code not generated yet (the reference's `unknown_token`)


def bucket_frames(n: int, bucket: int | None, cap: int | None = None) -> int:
    """Rounds n up to a multiple of `bucket` (none when bucket is None or <= 1), at most `cap`."""
    if bucket is None or bucket <= 1 or n == 0:
        return n
    b = -(-n // bucket) * bucket
    return max(n, min(b, cap)) if cap is not None else b


# --------------------------------------------------------------------------------------------------
# Progress: the compiled program calls one module-level function; which bar it moves is set per
# call, so a cached program never holds on to an old bar.

_progress_sink: list[Any] = []


def _report_progress(i) -> None:
    if _progress_sink:
        _progress_sink[-1](int(i))


@contextlib.contextmanager
def _progress_bar(total: int, desc: str) -> Iterator[None]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=False)

    def update(i: int) -> None:
        # update() redraws at most every `mininterval` seconds: a fast loop is not slowed down.
        bar.update(min(i + 1, total) - bar.n)

    _progress_sink.append(update)
    try:
        yield
    finally:
        _progress_sink.pop()
        bar.n = total
        bar.close()


@contextlib.contextmanager
def _progress_calls(on_step: Callable[[int], None]) -> Iterator[None]:
    _progress_sink.append(on_step)
    try:
        yield
    finally:
        _progress_sink.pop()


# --------------------------------------------------------------------------------------------------
# The compiled program: condition -> prefill -> scan over steps -> revert the pattern.


@functools.partial(
    jax.jit,
    static_argnames=("lm_def", "cond_def", "frames_b", "prompt_b", "params", "progress"),
)
def _token_program(
    lm_def,
    cond_def,
    lm_state,
    cond_state,
    ids_2BL,
    mask_2BL,
    prompt_BKP,
    prompt_len,
    num_frames,
    key,
    cfg_coef,
    *,
    frames_b: int,
    prompt_b: int,
    params: sampling.SamplingParams,
    progress: bool,
):
    """One window of generation: codes [B, K, frames_b] (frames >= num_frames hold `card`)."""
    lm = nnx.merge(lm_def, lm_state)
    conditioner = nnx.merge(cond_def, cond_state)
    cfg = lm.config
    delays, special, K = tuple(cfg.delays), cfg.card, cfg.n_q
    B = prompt_BKP.shape[0]
    S_b = frames_b + max(delays) + 1

    # Text -> [cond; null] condition, then the cross-attention keys/values, once.
    condition_2BLD = conditioner(ids_2BL, mask_2BL)
    cache = lmlib.init_cache(lm, condition_2BLD, S_b)

    # The code buffer: prompt frames, then unknown frames, then (bucket padding) frames outside the
    # pattern, which the delay layout turns into special cells like the reference's pattern of
    # T frames.
    t_T = jnp.arange(frames_b)
    prompt_BKT = jnp.zeros((B, K, frames_b), jnp.int32).at[:, :, :prompt_b].set(prompt_BKP)
    codes_BKT = jnp.where(
        t_T < prompt_len, prompt_BKT, jnp.where(t_T < num_frames, UNKNOWN, special)
    ).astype(jnp.int32)
    seq_BKS = patterns.build_delayed(codes_BKT, delays, special)
    delays_K = jnp.asarray(delays, jnp.int32)

    # Steps before `start` are fully known (prompt or special): the LM sees them in one block.
    start = prompt_len + 1 + min(delays)
    stop = num_frames + max(delays) + 1
    prefill = prompt_b + min(delays) if prompt_b > 0 else 0
    if prefill > 0:
        block_BKP = seq_BKS[:, :, :prefill]
        block_BKP = jnp.where(block_BKP == UNKNOWN, special, block_BKP)
        _, cache = lmlib.step(lm, jnp.concatenate([block_BKP, block_BKP]), cache, jnp.int32(0))

    def decode_step(carry, i):
        seq_BKS, cache = carry
        s = start + i
        prev_BK1 = jax.lax.dynamic_slice_in_dim(seq_BKS, s - 1, 1, axis=2)
        logits_2BKSV, cache = lmlib.step(lm, jnp.concatenate([prev_BK1, prev_BK1]), cache, s - 1)
        logits_2BKV = logits_2BKSV[:, :, -1].astype(jnp.float32)
        guided_BKV = sampling.apply_cfg(logits_2BKV[:B], logits_2BKV[B:], cfg_coef)
        ids_BK = sampling.sample_next(jax.random.fold_in(key, s), guided_BKV, params)
        frame_K = s - 1 - delays_K
        valid_K = (frame_K >= 0) & (frame_K < num_frames)
        ids_BK = jnp.where(valid_K[None], ids_BK, special)
        current_BK = jax.lax.dynamic_index_in_dim(seq_BKS, s, axis=2, keepdims=False)
        new_BK = jnp.where(current_BK == UNKNOWN, ids_BK, current_BK)
        seq_BKS = jax.lax.dynamic_update_index_in_dim(seq_BKS, new_BK, s, axis=2)
        if progress:
            jax.debug.callback(_report_progress, i)
        return seq_BKS, cache

    def body(carry, i):
        carry = jax.lax.cond(start + i < stop, decode_step, lambda c, _: c, carry, i)
        return carry, None

    # The scan covers the longest possible run (no prompt); iterations past `stop` are skipped.
    (seq_BKS, _), _ = jax.lax.scan(body, (seq_BKS, cache), jnp.arange(S_b - 1 - min(delays)))
    return patterns.revert_delayed(seq_BKS, delays, frames_b)


# --------------------------------------------------------------------------------------------------
# Host-side driver: validation, bucketing, the sliding window.


def _check_prompt(prompt_BKT, B: int, K: int, card: int) -> np.ndarray:
    prompt = np.asarray(prompt_BKT)
    if prompt.ndim != 3 or prompt.shape[0] != B or prompt.shape[1] != K:
        raise ValueError(f"prompt codes must be [B={B}, K={K}, T0], got shape {prompt.shape}")
    if not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(f"prompt codes must be integers, got {prompt.dtype}")
    if prompt.size and (prompt.min() < 0 or prompt.max() >= card):
        raise ValueError(
            f"prompt codes must lie in [0, {card}), got [{prompt.min()}, {prompt.max()}]"
        )
    return prompt.astype(np.int32)


def generate_window(
    lm_config: Any,
    lm_split: tuple[Any, Any],
    cond_split: tuple[Any, Any],
    ids_2BL: np.ndarray,
    mask_2BL: np.ndarray,
    num_frames: int,
    *,
    key: jax.Array,
    params: sampling.SamplingParams,
    cfg_coef: float,
    prompt_BKT: np.ndarray | None = None,
    frame_bucket: int | None = None,
    max_frames: int | None = None,
    progress: bool | Callable[[int], None] = False,
) -> np.ndarray:
    """One call of the reference's `LMModel.generate`: T frames, optionally continuing T0 prompt
    frames.

    Args:
      lm_config: the LM's `LMConfig`.
      lm_split: `nnx.split(lm)` of an `LMModel`.
      cond_split: `nnx.split(conditioner)` of a `T5Conditioner`.
      ids_2BL, mask_2BL: int [2B, L] tokens of `[descriptions; [None] * B]` (`t5.tokenize`).
      num_frames: T, frames to return (prompt included).
      key: a `jax.random` key; step s samples with `fold_in(key, s)`.
      params: sampling settings (static; its cfg_coef is ignored).
      cfg_coef: guidance coefficient (traced).
      prompt_BKT: int [B, K, T0] codes to continue, T0 < T; None for no prompt.
      frame_bucket: pad T and T0 up to multiples of this many frames (None: exact shapes).
      max_frames: the largest T the bucketing may pad to (the window).
      progress: True shows a tqdm bar over the steps; a callable is called with each step's index
        (0, 1, ...) as the step finishes.

    Returns:
      int32 [B, K, T] numpy codes, prompt included.
    """
    lm_def, lm_state = lm_split
    cond_def, cond_state = cond_split
    cfg = lm_config
    B = ids_2BL.shape[0] // 2
    K = cfg.n_q
    if prompt_BKT is None:
        prompt = np.zeros((B, K, 0), np.int32)
    else:
        prompt = _check_prompt(prompt_BKT, B, K, cfg.card)
    T0 = prompt.shape[2]
    if not 0 <= T0 < num_frames:
        raise ValueError(
            f"the prompt ({T0} frames) must be shorter than the generation ({num_frames} frames)"
        )
    frames_b = bucket_frames(num_frames, frame_bucket, max_frames)
    prompt_b = bucket_frames(T0, frame_bucket, frames_b - 1) if T0 else 0
    prompt_BKP = np.zeros((B, K, prompt_b), np.int32)
    prompt_BKP[:, :, :T0] = prompt
    run = functools.partial(
        _token_program,
        lm_def,
        cond_def,
        lm_state,
        cond_state,
        jnp.asarray(ids_2BL, jnp.int32),
        jnp.asarray(mask_2BL, jnp.int32),
        jnp.asarray(prompt_BKP),
        jnp.int32(T0),
        jnp.int32(num_frames),
        key,
        jnp.float32(cfg_coef),
        frames_b=frames_b,
        prompt_b=prompt_b,
        params=params,
        progress=bool(progress),
    )
    if progress:
        total = num_frames + max(cfg.delays) - T0 - min(cfg.delays)
        reporter = (
            _progress_calls(progress) if callable(progress) else _progress_bar(total, "generating")
        )
        with reporter:
            codes = np.asarray(jax.device_get(run()))
    else:
        codes = np.asarray(jax.device_get(run()))
    return codes[:, :, :num_frames]


def generate_codes(
    lm: lmlib.LMModel,
    conditioner: nnx.Module,
    ids_2BL: np.ndarray,
    mask_2BL: np.ndarray,
    num_frames: int,
    *,
    key: jax.Array,
    params: sampling.SamplingParams,
    prompt_BKT: np.ndarray | None = None,
    max_frames: int | None = None,
    stride_frames: int | None = None,
    frame_bucket: int | None = None,
    progress: bool | Callable[[int], None] = False,
    splits: tuple[tuple[Any, Any], tuple[Any, Any]] | None = None,
    seconds: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Generates T frames of codes, with the sliding window when T exceeds `max_frames`.

    Args:
      lm: the `LMModel`.
      conditioner: the `T5Conditioner` (text -> condition, output_proj included).
      ids_2BL, mask_2BL: int [2B, L] tokens of `[descriptions; [None] * B]` (`t5.tokenize`).
      num_frames: T, total frames to return (prompt included).
      key: a `jax.random` key; window w, step s samples with `fold_in(fold_in(key, w), s)`.
      params: sampling settings and the guidance coefficient `params.cfg_coef`.
      prompt_BKT: int [B, K, T0] codes to continue (T0 <= min(T, max_frames)); None for none.
      max_frames: frames per window (the model's max_duration * frame_rate); None: no limit.
      stride_frames: how far each new window moves (extend_stride * frame_rate).
      frame_bucket: pad shapes to multiples of this many frames (fewer compilations); None: exact.
      progress: True shows a tqdm bar per window; a callable is called with each step's index.
      splits: `(nnx.split(lm), nnx.split(conditioner))`, to skip re-splitting on every call.
      seconds: (duration, max_duration, frame_rate): compute each window's length in float seconds
        exactly as the reference does, `int(min(duration - offset / frame_rate, max_duration) *
        frame_rate)`, rounding included (e.g. 1.7 s - 0.8 s gives 44 frames at 50 Hz, not 45).
        Without it, lengths are exact frame counts.

    Returns:
      int32 [B, K, T] numpy codes, prompt included.
    """
    if splits is None:
        splits = (nnx.split(lm), nnx.split(conditioner))
    lm_split, cond_split = splits
    B2 = np.asarray(ids_2BL).shape[0]
    if np.asarray(ids_2BL).ndim != 2 or B2 % 2 or B2 == 0:
        raise ValueError(
            f"ids must be [2B, L] ([descriptions; nulls]), got {np.asarray(ids_2BL).shape}"
        )
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    limit = max_frames if max_frames is not None else num_frames
    T0 = 0 if prompt_BKT is None else np.asarray(prompt_BKT).shape[-1]
    if T0 >= min(num_frames, limit):
        raise ValueError(
            f"the prompt ({T0} frames) must be shorter than the audio to generate "
            f"({min(num_frames, limit)} frames per window)"
        )
    one = functools.partial(
        generate_window,
        lm.config,
        lm_split,
        cond_split,
        ids_2BL,
        mask_2BL,
        cfg_coef=params.cfg_coef,
        frame_bucket=frame_bucket,
        max_frames=max_frames,
        progress=progress,
    )
    # cfg_coef is a traced argument of the program; keep it out of the static settings so that a new
    # coefficient does not recompile.
    one = functools.partial(one, params=dataclasses.replace(params, cfg_coef=1.0))
    if num_frames <= limit:
        return one(num_frames, key=jax.random.fold_in(key, 0), prompt_BKT=prompt_BKT)
    if stride_frames is None:
        raise ValueError("a duration beyond the model's window needs an extend stride")
    if not 0 < stride_frames < limit:
        raise ValueError(f"extend stride ({stride_frames} frames) must be in (0, {limit}) frames")
    pieces = [] if prompt_BKT is None else [np.asarray(prompt_BKT, np.int32)]
    prompt, offset, w = prompt_BKT, 0, 0
    prompt_len = T0
    while offset + prompt_len < num_frames:
        if seconds is not None:
            duration, max_duration, frame_rate = seconds
            length = int(min(duration - offset / frame_rate, max_duration) * frame_rate)
        else:
            length = min(num_frames - offset, limit)
        codes = one(length, key=jax.random.fold_in(key, w), prompt_BKT=prompt)
        pieces.append(codes if prompt is None else codes[:, :, np.asarray(prompt).shape[-1] :])
        prompt = codes[:, :, stride_frames:]
        prompt_len = prompt.shape[-1]
        offset += stride_frames
        w += 1
    return np.concatenate(pieces, axis=-1)


def generate(
    lm: lmlib.LMModel,
    conditioner: nnx.Module,
    tokenizer: Any,
    codec: Any,
    descriptions: Sequence[str | None],
    num_frames: int,
    *,
    key: jax.Array,
    params: sampling.SamplingParams,
    prompt_BKT: np.ndarray | None = None,
    max_frames: int | None = None,
    stride_frames: int | None = None,
    frame_bucket: int | None = None,
    progress: bool | Callable[[int], None] = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Text (and optional prompt codes) -> codes [B, K, T] and audio [B, 1, T * hop].

    `descriptions` may hold None (unconditional rows). The batch `[descriptions; [None] * B]` is
    tokenized together, padded to one length, as the reference does. See `generate_codes` for the
    rest.
    """
    from audiogen_jax import t5

    ids_2BL, mask_2BL = t5.tokenize(tokenizer, list(descriptions) + [None] * len(descriptions))
    codes_BKT = generate_codes(
        lm,
        conditioner,
        ids_2BL,
        mask_2BL,
        num_frames,
        key=key,
        params=params,
        prompt_BKT=prompt_BKT,
        max_frames=max_frames,
        stride_frames=stride_frames,
        frame_bucket=frame_bucket,
        progress=progress,
    )
    wav_B1W = np.asarray(jax.device_get(codec.decode(jnp.asarray(codes_BKT))), np.float32)
    return codes_BKT, wav_B1W


__all__ = [
    "UNKNOWN",
    "bucket_frames",
    "generate",
    "generate_codes",
    "generate_window",
]
