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

    codes_BKT = generate_codes(lm, conditioner, ids_2BL, mask_2BL, settings, key=key)
    codes_BKT, wav_B1W = generate(lm, conditioner, tokenizer, codec, texts, settings, key=key)

`GenerationSettings` says what to generate (duration, windows, `SamplingParams`), in seconds as the
reference's `set_generation_params`. Everything from the text encoder to the reverted codes is one
`jax.jit` program (`_token_program`; `trace_program` shows it): the condition and the
cross-attention keys/values are computed once, the step is the LM's cached `step` (weights read
once per step, CFG as one forward of 2B rows), the scan carries a `DecodeState`, and there is no
host round trip per step.

Static shapes, so new inputs rarely recompile:
  - The number of frames T and the prompt length T0 are *traced* scalars. Their buffers are padded
    up to `frame_bucket` frames (`bucket_frames`): T_b = ceil(T / bucket) * bucket (at most the
    window). Cells of frames t >= T are laid out as special tokens, exactly as the reference lays
    out a pattern of T frames, and the scan iterations past the last real step S = T + max_delay + 1
    skip the LM call (`lax.cond`), so padding costs no LM steps. A new duration recompiles only when
    it crosses a bucket.
  - The tokenized text length L (the batch's longest description, as the reference pads it) is
    padded up to a bucket (`bucket_text`: 16, 32, 64, ... tokens), so a new prompt of the same
    batch size B reuses the program unless its length crosses a bucket. The reference's
    cross-attention has no key mask: it attends its own padded positions (zero condition rows),
    which change the softmax, so those stay attended; only the positions added beyond L are masked
    (`Window.text_len`, the LM's `context_mask_BL`). The tokens are the reference's.
  - Changing `cfg_coef` or the seed never recompiles; the other sampling settings are static.
  The prompt is written into the KV cache by one prefill forward over T0_b (bucketed) steps. Steps
  past the prompt in that block fill cache slots with placeholder values; each is overwritten by the
  scan's step at that position before any query can attend to it (causal attention by position).

Durations beyond the model's window (`max_duration`, the training segment: 10 s for AudioGen) use
the reference's sliding window (`BaseGenModel._generate_tokens`): each window re-runs generation
with the last `max_duration - extend_stride` seconds of the previous window as its prompt and keeps
only the new frames.

Progress: with `progress=True` (a tqdm bar) or a callable, the same program runs in pieces: one
program for the set-up (`_start`), then the scan `PROGRESS_STEPS` iterations at a time
(`decode_steps`, its state donated from piece to piece), the host reporting between pieces while the
next piece is already queued. A callback inside the scan would report every step, but JAX never
writes a program holding a Python callback to its persistent compilation cache, so every process
would compile it again (see `compilation_cache.py`); the pieces hold none. Same tokens; the cost is
measured in docs/parity.md (## Generation). The bar reads "generating (compiling)" until the first
piece reports, then restarts its clock, so its rate and time left count decoding steps only.

Warm start: with the compilation cache on, every program here runs through `program_cache.py`, so a
later process loads its executable without tracing the model (static arguments by keyword).

Non-finite logits: the scan carries one flag, set when a step's guided logits hold NaN or inf
(non-finite weights, a bf16 overflow, an extreme `cfg_coef`); such a window raises
`FloatingPointError` instead of returning codes that argmax/sampling made from NaN.

References: audiocraft 1.3.0 `models/lm.py` (`LMModel.generate`, `_sample_next_token`),
`models/genmodel.py` (`BaseGenModel.generate*`, `_generate_tokens`).

Differences from the reference:
- The prompt is prefilled over steps [0, T0 + min_delay) and the scan's first step feeds step
  T0 + min_delay on its own; the reference feeds [0, T0 + min_delay] as one block. Same tokens;
  float rounding of the cached keys/values may differ in the last bits.
- The cross-attention keys/values of the condition are computed once (the reference recomputes them
  at every step); the self-attention cache is preallocated instead of grown by concatenation.
- The text is padded beyond the batch's longest description to a bucketed length, and those added
  positions are masked in cross-attention (the reference pads to the longest and masks nothing).
- Randomness: JAX keys, `fold_in(key, window)` then `fold_in(., step)`; the torch RNG stream is not
  reproduced, so only greedy decoding is token-identical to the reference.
- `two_step_cfg` (separate cond/null forwards) is not implemented: AudioGen uses the batched form.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from audiogen_jax import checks, patterns, program_cache, sampling, sharding, t5
from audiogen_jax import lm as lmlib

UNKNOWN = -1  # a code not generated yet (the reference's `unknown_token`)
MIN_TEXT_BUCKET = 16  # the shortest padded text length (AudioGen's descriptions are mostly shorter)

Progress = bool | Callable[[int], None]
Splits = tuple[tuple[Any, Any], tuple[Any, Any]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """What to generate: how long, in which windows, and how each token is picked.

    Lengths are in seconds, as the reference's `set_generation_params`, and become frame counts the
    way the reference rounds them, `int(seconds * frame_rate)`: the sliding window's lengths depend
    on that rounding (see `window_frames`). Invalid settings raise `ValueError` here.
    """

    duration: float  # seconds of audio to return, prompt included
    frame_rate: float  # codec frames per second (EnCodec: sample_rate / hop_length)
    sampling: sampling.SamplingParams  # how each token is picked, and the guidance coefficient
    max_duration: float | None = None  # seconds per window (the training segment); None: one
    extend_stride: float | None = None  # seconds each window moves, 0 < stride < max_duration
    frame_bucket: int | None = None  # pad frame counts to multiples of this (fewer compilations)

    def __post_init__(self):
        optional = ("max_duration", "extend_stride")
        for name in ("duration", "frame_rate", *optional):
            value = getattr(self, name)
            if value is not None or name not in optional:
                # Plain floats: equal and hashable alike whatever number type came in.
                object.__setattr__(self, name, checks.finite_number(name, value))
        if self.duration <= 0:
            raise ValueError(f"duration must be > 0 seconds, got {self.duration}")
        if self.frame_rate <= 0:
            raise ValueError(f"frame_rate must be > 0 frames per second, got {self.frame_rate}")
        if self.num_frames < 1:
            raise ValueError(
                f"duration {self.duration} s is shorter than one frame (1/{self.frame_rate:g} s)"
            )
        if not isinstance(self.sampling, sampling.SamplingParams):
            raise ValueError(f"sampling must be a SamplingParams, got {self.sampling!r}")
        if self.frame_bucket is not None and checks.integer("frame_bucket", self.frame_bucket) < 1:
            raise ValueError(f"frame_bucket must be >= 1 (or None), got {self.frame_bucket}")
        if self.max_duration is None:
            if self.extend_stride is not None:
                raise ValueError("extend_stride needs max_duration (the window it moves)")
            return
        if self.max_frames < 1:
            raise ValueError(f"max_duration {self.max_duration} s is shorter than one frame")
        if self.extend_stride is None:
            if self.num_frames > self.max_frames:
                raise ValueError(
                    f"duration {self.duration} s is beyond the window ({self.max_duration} s): "
                    "it needs an extend stride"
                )
        elif not 0 < self.extend_stride < self.max_duration:
            raise ValueError(
                f"extend_stride must be in (0, max_duration={self.max_duration}) seconds, got "
                f"{self.extend_stride}"
            )
        elif not 0 < self.stride_frames < self.max_frames:
            raise ValueError(
                f"extend_stride ({self.stride_frames} frames) must be in (0, {self.max_frames}) "
                "frames"
            )

    @property
    def num_frames(self) -> int:
        """T, the frames to return."""
        return int(self.duration * self.frame_rate)

    @property
    def max_frames(self) -> int | None:
        """Frames per window; None: no window."""
        return None if self.max_duration is None else int(self.max_duration * self.frame_rate)

    @property
    def stride_frames(self) -> int | None:
        return None if self.extend_stride is None else int(self.extend_stride * self.frame_rate)

    def window_frames(self, offset: int) -> int:
        """Frames of the window that starts at frame `offset`, in the reference's float seconds:
        `int(min(duration - offset / frame_rate, max_duration) * frame_rate)`, rounding included
        (1.7 s - 0.8 s gives 44 frames at 50 Hz, not 45)."""
        remaining = self.duration - offset / self.frame_rate
        return int(min(remaining, self.max_duration) * self.frame_rate)


def bucket_frames(n: int, bucket: int | None, cap: int | None = None) -> int:
    """Rounds n up to a multiple of `bucket` (none when bucket is None or <= 1), at most `cap`."""
    if bucket is None or bucket <= 1 or n == 0:
        return n
    b = -(-n // bucket) * bucket
    return max(n, min(b, cap)) if cap is not None else b


def bucket_text(n: int) -> int:
    """The padded text length for n tokens: the next power of two, at least `MIN_TEXT_BUCKET`.

    Powers of two keep the count of programs small (16, 32, 64, ... cover every length) and at
    most double the text's share of the work, which is small: T5 runs once per generation and a
    step's cross-attention reads L keys against the LM's full set of weights.
    """
    return max(MIN_TEXT_BUCKET, 1 << max(0, n - 1).bit_length())


# --------------------------------------------------------------------------------------------------
# The compiled program: condition -> prefill -> scan over steps -> revert the pattern.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Window:
    """One window's inputs to the compiled program: traced, so new values never recompile."""

    ids_2BL: jax.Array  # [2B, L_b] int32 tokens of [descriptions; nulls], padded to a bucket
    mask_2BL: jax.Array  # [2B, L_b] int32, 0 on padding and on the null rows
    text_len: jax.Array  # int32 scalar L <= L_b: the length `t5.tokenize` padded the batch to
    prompt_BKP: jax.Array  # [B, K, P] int32 prompt codes, zero-padded to P (bucketed) frames
    prompt_len: jax.Array  # int32 scalar T0 <= P: the real prompt frames
    num_frames: jax.Array  # int32 scalar T: frames to return, prompt included
    key: jax.Array  # PRNG key; step s samples with fold_in(key, s)
    cfg_coef: jax.Array  # float32 scalar guidance coefficient


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
    """The scan carry: what one decoding step reads and writes."""

    seq_BKS: jax.Array  # [B, K, S_b] int32 delayed codes; UNKNOWN (-1) where not generated yet
    cache: lmlib.KVCache  # the LM's keys/values for the 2B rows [cond; null], up to S_b steps
    nonfinite: jax.Array  # bool scalar: some step's guided logits held NaN or inf


def _scan_length(frames_b: int, delays: Sequence[int]) -> int:
    """Iterations of the scan that covers the longest possible run of one window (no prompt)."""
    return frames_b + max(delays) - min(delays)


def _start(
    lm: lmlib.LMModel,
    conditioner: nnx.Module,
    window: Window,
    frames_b: int,
    placement: sharding.Placement | None = None,
) -> DecodeState:
    """The scan's first carry: the text condition and its cross-attention keys/values, the delayed
    code buffer, and the KV cache with the prompt's steps written."""
    cfg = lm.config
    delays, special, K = tuple(cfg.delays), cfg.card, cfg.n_q
    B, _, prompt_b = window.prompt_BKP.shape
    S_b = frames_b + max(delays) + 1

    # Text -> [cond; null] condition, then the cross-attention keys/values, once. Cross-attention
    # sees the batch's own L positions (its padding included, as the reference), not the bucket's.
    condition_2BLD = conditioner(window.ids_2BL, window.mask_2BL)
    L_b = window.ids_2BL.shape[1]
    context_mask_2BL = jnp.broadcast_to(jnp.arange(L_b) < window.text_len, (2 * B, L_b))
    cache = lmlib.init_cache(lm, condition_2BLD, S_b, context_mask_BL=context_mask_2BL)
    cache = sharding.constrain_cache(cache, placement)

    # The code buffer: prompt frames, then unknown frames, then (bucket padding) frames outside the
    # pattern, which the delay layout turns into special cells like the reference's pattern of
    # T frames.
    t_T = jnp.arange(frames_b)
    prompt_BKT = jnp.zeros((B, K, frames_b), jnp.int32).at[:, :, :prompt_b].set(window.prompt_BKP)
    codes_BKT = jnp.where(
        t_T < window.prompt_len,
        prompt_BKT,
        jnp.where(t_T < window.num_frames, UNKNOWN, special),
    ).astype(jnp.int32)
    seq_BKS = patterns.build_delayed(codes_BKT, delays, special)

    # Steps before the first generated one are fully known (prompt or special): the LM sees them in
    # one block.
    prefill = prompt_b + min(delays) if prompt_b > 0 else 0
    if prefill > 0:
        block_BKP = seq_BKS[:, :, :prefill]
        block_BKP = jnp.where(block_BKP == UNKNOWN, special, block_BKP)
        _, cache = lmlib.step(lm, jnp.concatenate([block_BKP, block_BKP]), cache, jnp.int32(0))
    return DecodeState(seq_BKS=seq_BKS, cache=cache, nonfinite=jnp.bool_(False))


def decode_steps(
    lm: lmlib.LMModel,
    state: DecodeState,
    window: Window,
    first: jax.Array,
    count: int,
    params: sampling.SamplingParams,
    placement: sharding.Placement | None = None,
) -> DecodeState:
    """The decoding loop: one `lax.scan` over `count` iterations, traced in the generation program.

    Iteration i (first <= i < first + count) generates delayed step s = start + i, where start is
    the first step after the prompt: it runs the LM on column s - 1 for the 2B rows (descriptions,
    then null rows), guides, samples, and writes column s where it is still unknown. Iterations
    past the last step skip the LM (`lax.cond`), so the frame count can be padded to a bucket.

    Args:
      lm: the LM (its config gives the delays and the special token).
      state: `DecodeState` after the set-up (code buffer [B, K, S], KV cache, non-finite flag).
      window: the window's traced settings (prompt length, frames, guidance, key).
      first: the first iteration, a traced int32 (the progress bar runs the loop in pieces).
      count: how many iterations (static).
      params: sampling settings (static).
      placement: device placement of the code buffer and cache on a mesh, or None.

    Returns:
      The `DecodeState` after the iterations.
    """
    cfg = lm.config
    delays, special = tuple(cfg.delays), cfg.card
    B = state.seq_BKS.shape[0]
    delays_K = jnp.asarray(delays, jnp.int32)
    start = window.prompt_len + 1 + min(delays)
    stop = window.num_frames + max(delays) + 1

    def decode_step(state: DecodeState, i: jax.Array) -> DecodeState:
        s = start + i
        prev_BK1 = jax.lax.dynamic_slice_in_dim(state.seq_BKS, s - 1, 1, axis=2)
        prev_2BK1 = jnp.concatenate([prev_BK1, prev_BK1])
        logits_2BKSV, cache = lmlib.step(lm, prev_2BK1, state.cache, s - 1)
        logits_2BKV = logits_2BKSV[:, :, -1].astype(jnp.float32)
        guided_BKV = sampling.apply_cfg(logits_2BKV[:B], logits_2BKV[B:], window.cfg_coef)
        ids_BK = sampling.sample_next(jax.random.fold_in(window.key, s), guided_BKV, params)
        frame_K = s - 1 - delays_K
        valid_K = (frame_K >= 0) & (frame_K < window.num_frames)
        ids_BK = jnp.where(valid_K[None], ids_BK, special)
        current_BK = jax.lax.dynamic_index_in_dim(state.seq_BKS, s, axis=2, keepdims=False)
        new_BK = jnp.where(current_BK == UNKNOWN, ids_BK, current_BK)
        seq_BKS = jax.lax.dynamic_update_index_in_dim(state.seq_BKS, new_BK, s, axis=2)
        nonfinite = state.nonfinite | ~jnp.all(jnp.isfinite(guided_BKV))
        cache = sharding.constrain_cache(cache, placement)
        return DecodeState(seq_BKS=seq_BKS, cache=cache, nonfinite=nonfinite)

    def body(state: DecodeState, i: jax.Array) -> tuple[DecodeState, None]:
        state = jax.lax.cond(start + i < stop, decode_step, lambda st, _: st, state, i)
        return state, None

    state, _ = jax.lax.scan(body, state, first + jnp.arange(count))
    return state


@functools.partial(
    jax.jit, static_argnames=("lm_def", "cond_def", "frames_b", "params", "placement")
)
def _token_program(
    lm_state,
    cond_state,
    window: Window,
    *,
    lm_def,
    cond_def,
    frames_b: int,
    params: sampling.SamplingParams,
    placement: sharding.Placement | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One window of generation: codes [B, K, frames_b] (frames >= num_frames hold `card`), and
    whether any step's guided logits were not finite (its codes are then meaningless).

    With a `placement` the weights and text rows arrive sharded; the KV cache is pinned to rows over
    data x fsdp and heads over tensor, and the codes come back whole on every device.
    """
    lm = nnx.merge(lm_def, lm_state)
    conditioner = nnx.merge(cond_def, cond_state)
    delays = tuple(lm.config.delays)
    state = _start(lm, conditioner, window, frames_b, placement)
    length = _scan_length(frames_b, delays)
    state = decode_steps(lm, state, window, jnp.int32(0), length, params, placement)
    codes_BKT = patterns.revert_delayed(state.seq_BKS, delays, frames_b)
    return sharding.constrain(codes_BKT, (), placement), state.nonfinite


# --------------------------------------------------------------------------------------------------
# With progress: the same program in pieces. A callback inside the scan would tie the compiled
# program to this process's Python functions, and JAX does not write such a program to its
# persistent compilation cache; these pieces hold no callback, so a warm start skips them too.
# The host runs the scan `PROGRESS_STEPS` iterations at a time and reports between the pieces.

PROGRESS_STEPS = 8  # decoding steps per piece: one report per piece


@functools.partial(jax.jit, static_argnames=("lm_def", "cond_def", "frames_b", "placement"))
def _start_program(
    lm_state, cond_state, window: Window, *, lm_def, cond_def, frames_b: int, placement=None
):
    lm, conditioner = nnx.merge(lm_def, lm_state), nnx.merge(cond_def, cond_state)
    return _start(lm, conditioner, window, frames_b, placement)


@functools.partial(
    jax.jit, static_argnames=("lm_def", "count", "params", "placement"), donate_argnames="state"
)
def _decode_program(
    lm_state, state: DecodeState, window: Window, first, *, lm_def, count: int, params, placement
) -> tuple[DecodeState, jax.Array]:
    """`count` iterations from `first`, and first + count: a scalar the host waits on while the
    next piece is already queued (the state itself is donated to that piece)."""
    lm = nnx.merge(lm_def, lm_state)
    state = decode_steps(lm, state, window, first, count, params, placement)
    # The code buffer whole on every device (and process): the host reads it after the last piece.
    seq_BKS = sharding.constrain(state.seq_BKS, (), placement)
    return dataclasses.replace(state, seq_BKS=seq_BKS), first + count


@contextlib.contextmanager
def _progress_bar(total: int, desc: str) -> Iterator[tuple[tqdm, Callable[[int], None]]]:
    """A tqdm bar and the function that reports the index of the last step done to it."""
    # Until the first piece reports, the programs are being compiled (or fetched from a cache): the
    # bar says so, and its clock restarts at the first report, so the rate and the time left count
    # steps only.
    bar = tqdm(total=total, desc=f"{desc} (compiling)", unit="step", leave=False)

    def update(i: int) -> None:
        if bar.n == 0:
            bar.set_description_str(desc, refresh=False)
            bar.reset(total=total)
        bar.update(min(i + 1, total) - bar.n)

    try:
        yield bar, update
    finally:
        bar.n = total
        bar.close()


def _run_in_pieces(
    splits: Splits,
    window: Window,
    frames_b: int,
    params: sampling.SamplingParams,
    report: Callable[[int], None],
    steps: int,
    delays: Sequence[int],
    placement: sharding.Placement | None = None,
) -> tuple[np.ndarray, jax.Array]:
    """`_token_program`'s outputs, computed piece by piece, with `report(index of the last step
    done)` after each piece."""
    (lm_def, lm_state), (cond_def, cond_state) = splits
    if placement is not None:
        window = _place_window(window, placement)
    state = program_cache.call(
        _start_program,
        lm_state,
        cond_state,
        window,
        lm_def=lm_def,
        cond_def=cond_def,
        frames_b=frames_b,
        placement=placement,
    )
    queued: list[jax.Array] = []
    for first in range(0, steps, PROGRESS_STEPS):
        state, done = program_cache.call(
            _decode_program,
            lm_state,
            state,
            window,
            np.int32(first),
            lm_def=lm_def,
            count=PROGRESS_STEPS,
            params=params,
            placement=placement,
        )
        queued.append(done)
        if len(queued) > 1:  # the previous piece, waited for while this one is queued
            report(min(int(queued.pop(0)), steps) - 1)
    for done in queued:
        report(min(int(done), steps) - 1)
    codes = patterns.revert_delayed(np.asarray(state.seq_BKS), delays, frames_b)
    return codes, state.nonfinite


# --------------------------------------------------------------------------------------------------
# Host-side driver: validation, bucketing, the sliding window.


def _check_ids(ids_2BL, mask_2BL) -> None:
    shape = np.shape(ids_2BL)
    if len(shape) != 2 or shape[0] % 2 or shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"ids must be [2B, L] ([descriptions; nulls]), got {shape}")
    if np.shape(mask_2BL) != shape:
        raise ValueError(f"mask shape {np.shape(mask_2BL)} != token ids shape {shape}")


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


def _window(
    lm_config: Any,
    ids_2BL,
    mask_2BL,
    num_frames: int,
    settings: GenerationSettings,
    *,
    key: jax.Array,
    prompt_BKT,
) -> tuple[Window, int]:
    """The program's inputs for T = `num_frames` frames continuing `prompt_BKT` (or None), and the
    bucketed frame count frames_b."""
    B, K = np.shape(ids_2BL)[0] // 2, lm_config.n_q
    if prompt_BKT is None:
        prompt = np.zeros((B, K, 0), np.int32)
    else:
        prompt = _check_prompt(prompt_BKT, B, K, lm_config.card)
    T0 = prompt.shape[2]
    if not 0 <= T0 < num_frames:
        raise ValueError(
            f"the prompt ({T0} frames) must be shorter than the generation ({num_frames} frames)"
        )
    frames_b = bucket_frames(num_frames, settings.frame_bucket, settings.max_frames)
    prompt_b = bucket_frames(T0, settings.frame_bucket, frames_b - 1) if T0 else 0
    prompt_BKP = np.zeros((B, K, prompt_b), np.int32)
    prompt_BKP[:, :, :T0] = prompt
    # Text padded with pad tokens (id 0) under a zero mask: T5 ignores them, the conditioner zeroes
    # their rows, and cross-attention does not attend them (`text_len`).
    L = np.shape(ids_2BL)[1]
    pad = ((0, 0), (0, bucket_text(L) - L))
    window = Window(
        ids_2BL=np.pad(np.asarray(ids_2BL, np.int32), pad),
        mask_2BL=np.pad(np.asarray(mask_2BL, np.int32), pad),
        text_len=np.int32(L),
        prompt_BKP=prompt_BKP,
        prompt_len=np.int32(T0),
        num_frames=np.int32(num_frames),
        key=key,
        cfg_coef=np.float32(settings.sampling.cfg_coef),
    )
    # device_put copies host arrays as they are; jnp.asarray would compile a small program for each
    # new shape.
    return jax.device_put(window), frames_b


def _static_params(settings: GenerationSettings, card: int) -> sampling.SamplingParams:
    # cfg_coef is a traced input of the program (`Window`); keep it out of the static settings so
    # that a new coefficient does not recompile.
    return dataclasses.replace(settings.sampling.validate(card), cfg_coef=1.0)


def _call_program(
    method: Callable[..., Any],
    splits: Splits,
    window: Window,
    frames_b: int,
    params: sampling.SamplingParams,
    placement: sharding.Placement | None = None,
) -> Any:
    """`method` (`_token_program` through `program_cache`, or its `.trace`) on one window's
    inputs."""
    (lm_def, lm_state), (cond_def, cond_state) = splits
    if placement is not None:
        window = _place_window(window, placement)
    return method(
        lm_state,
        cond_state,
        window,
        lm_def=lm_def,
        cond_def=cond_def,
        frames_b=frames_b,
        params=params,
        placement=placement,
    )


def _place_window(window: Window, placement: sharding.Placement) -> Window:
    """The text rows split over data x fsdp, the rest replicated (same values on every process)."""
    B2 = window.ids_2BL.shape[0]
    if B2 % placement.batch_devices:
        raise sharding.ShardingError(
            f"{B2 // 2} descriptions make {B2} rows with the null condition, which do not divide "
            f"over the mesh's {placement.batch_devices} batch devices (data x fsdp): give a "
            f"multiple of {placement.batch_devices // math.gcd(2, placement.batch_devices)} "
            "descriptions"
        )
    rows = {"ids_2BL", "mask_2BL"}
    return Window(
        **{
            f.name: placement.put(getattr(window, f.name), ("batch",) if f.name in rows else ())
            for f in dataclasses.fields(Window)
        }
    )


def _run_window(
    splits: Splits,
    window: Window,
    frames_b: int,
    params: sampling.SamplingParams,
    progress: Progress,
    steps: int,
    delays: Sequence[int],
    placement: sharding.Placement | None = None,
) -> tuple[np.ndarray, bool]:
    """Runs one window of `steps` LM steps: int32 [B, K, frames_b] numpy codes, and whether some
    step's logits were not finite."""
    if not progress:
        run = functools.partial(program_cache.call, _token_program)
        codes, nonfinite = _call_program(run, splits, window, frames_b, params, placement)
    else:
        run = functools.partial(_run_in_pieces, splits, window, frames_b, params)
        if callable(progress):
            codes, nonfinite = run(progress, steps, delays, placement)
        else:
            with _progress_bar(steps, "generating") as (_, report):
                codes, nonfinite = run(report, steps, delays, placement)
    codes, nonfinite = jax.device_get((codes, nonfinite))
    return np.asarray(codes), bool(nonfinite)


def trace_program(
    lm: lmlib.LMModel,
    conditioner: nnx.Module,
    ids_2BL: np.ndarray,
    mask_2BL: np.ndarray,
    settings: GenerationSettings,
    *,
    key: jax.Array,
    prompt_BKT: np.ndarray | None = None,
    placement: sharding.Placement | None = None,
) -> jax.stages.Traced:
    """The compiled program of the first window, traced but not run.

    `.jaxpr` is what runs (T5, the cache set-up, one `scan` over the steps, the pattern undone);
    `.lower().compile()` compiles it ahead of time. Arguments as `generate_codes`.
    """
    _check_ids(ids_2BL, mask_2BL)
    num_frames = min(settings.num_frames, settings.max_frames or settings.num_frames)
    window, frames_b = _window(
        lm.config, ids_2BL, mask_2BL, num_frames, settings, key=key, prompt_BKT=prompt_BKT
    )
    splits = (nnx.split(lm), nnx.split(conditioner))
    params = _static_params(settings, lm.config.card)
    return _call_program(_token_program.trace, splits, window, frames_b, params, placement)


def generate_codes(
    lm: lmlib.LMModel,
    conditioner: nnx.Module,
    ids_2BL: np.ndarray,
    mask_2BL: np.ndarray,
    settings: GenerationSettings,
    *,
    key: jax.Array,
    prompt_BKT: np.ndarray | None = None,
    progress: Progress = False,
    splits: Splits | None = None,
    placement: sharding.Placement | None = None,
) -> np.ndarray:
    """Generates `settings.duration` of codes, with the sliding window beyond `max_duration`.

    Args:
      lm: the `LMModel`.
      conditioner: the `T5Conditioner` (text -> condition, output_proj included).
      ids_2BL, mask_2BL: int [2B, L] tokens of `[descriptions; [None] * B]` (`t5.tokenize`).
      settings: how long, the windows, and the sampling settings (`GenerationSettings`).
      key: a `jax.random` key; window w, step s samples with `fold_in(fold_in(key, w), s)`.
      prompt_BKT: int [B, K, T0] codes to continue, T0 shorter than the first window; None for
        none.
      progress: True shows a tqdm bar per window; a callable is called with the index of the last
        step done (0-based, within the window) every `PROGRESS_STEPS` steps and at the end.
      splits: `(nnx.split(lm), nnx.split(conditioner))`, to skip re-splitting on every call.
      placement: the mesh the weights are sharded over (`sharding.py`); the 2B text rows must
        divide over its data x fsdp devices. None: one device.

    Returns:
      int32 [B, K, T] numpy codes, prompt included (T = `settings.num_frames`).

    Raises:
      FloatingPointError: some step's guided logits were NaN or infinite (checked in the scan,
        reported once the window is done).
    """
    if splits is None:
        splits = (nnx.split(lm), nnx.split(conditioner))
    _check_ids(ids_2BL, mask_2BL)
    params = _static_params(settings, lm.config.card)
    T = settings.num_frames
    limit = settings.max_frames or T
    T0 = 0 if prompt_BKT is None else np.shape(prompt_BKT)[-1]
    if T0 >= min(T, limit):
        raise ValueError(
            f"the prompt ({T0} frames) must be shorter than the audio to generate "
            f"({min(T, limit)} frames per window)"
        )

    delays = lm.config.delays

    def one(num_frames: int, w: int, prompt, prompt_len: int) -> np.ndarray:
        """Window w: `num_frames` frames continuing `prompt` (None or prompt_len frames)."""
        window, frames_b = _window(
            lm.config,
            ids_2BL,
            mask_2BL,
            num_frames,
            settings,
            key=jax.random.fold_in(key, w),
            prompt_BKT=prompt,
        )
        steps = num_frames + max(delays) - prompt_len - min(delays)
        codes, nonfinite = _run_window(
            splits, window, frames_b, params, progress, steps, delays, placement
        )
        if nonfinite:
            raise FloatingPointError(
                f"the LM gave NaN or infinite logits (window {w}), so the codes are meaningless: "
                "non-finite weights, an overflow in a low-precision dtype (try float32), or an "
                f"extreme cfg_coef ({settings.sampling.cfg_coef:g})"
            )
        return codes[:, :, :num_frames]

    if T <= limit:
        return one(T, 0, prompt_BKT, T0)
    pieces = [] if prompt_BKT is None else [np.asarray(prompt_BKT, np.int32)]
    prompt, prompt_len, offset, w = prompt_BKT, T0, 0, 0
    while offset + prompt_len < T:
        codes = one(settings.window_frames(offset), w, prompt, prompt_len)
        pieces.append(codes[:, :, prompt_len:])
        prompt = codes[:, :, settings.stride_frames :]
        prompt_len = prompt.shape[-1]
        offset += settings.stride_frames
        w += 1
    return np.concatenate(pieces, axis=-1)


def generate(
    lm: lmlib.LMModel,
    conditioner: nnx.Module,
    tokenizer: Any,
    codec: Any,
    descriptions: Sequence[str | None],
    settings: GenerationSettings,
    *,
    key: jax.Array,
    prompt_BKT: np.ndarray | None = None,
    progress: Progress = False,
    splits: Splits | None = None,
    placement: sharding.Placement | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Text (and optional prompt codes) -> codes [B, K, T] and audio [B, 1, T * hop].

    `descriptions` may hold None (unconditional rows). The batch `[descriptions; [None] * B]` is
    tokenized together, padded to one length, as the reference does. The codec is the
    `EncodecModel`; see `generate_codes` for the rest.

    Returns:
      (codes_BKT int32, wav_B1W float32), numpy.
    """
    if codec.frame_rate != settings.frame_rate:
        raise ValueError(
            f"settings.frame_rate {settings.frame_rate} is not the codec's {codec.frame_rate}"
        )
    ids_2BL, mask_2BL = t5.tokenize(tokenizer, list(descriptions) + [None] * len(descriptions))
    codes_BKT = generate_codes(
        lm,
        conditioner,
        ids_2BL,
        mask_2BL,
        settings,
        key=key,
        prompt_BKT=prompt_BKT,
        progress=progress,
        splits=splits,
        placement=placement,
    )
    codes = jnp.asarray(codes_BKT)
    if placement is not None:  # EnCodec runs data-parallel over the rows when they divide
        codes = placement.put(codes_BKT, () if len(codes) % placement.batch_devices else ("batch",))
    wav_B1W = sharding.to_host(codec.decode(codes)).astype(np.float32)
    return codes_BKT, wav_B1W
