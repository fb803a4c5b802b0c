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
host round trip per step except the optional progress callback.

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
  - Changing `cfg_coef` or the seed never recompiles; the other sampling settings and the progress
    flag are static.
  The prompt is written into the KV cache by one prefill forward over T0_b (bucketed) steps. Steps
  past the prompt in that block fill cache slots with placeholder values; each is overwritten by the
  scan's step at that position before any query can attend to it (causal attention by position).

Durations beyond the model's window (`max_duration`, the training segment: 10 s for AudioGen) use
the reference's sliding window (`BaseGenModel._generate_tokens`): each window re-runs generation
with the last `max_duration - extend_stride` seconds of the previous window as its prompt and keeps
only the new frames.

Progress: `progress=True` adds a `jax.debug.callback` in the scan body that moves a tqdm bar (or,
with `progress=callable`, calls it with each step's index: benchmarks/bench_generate.py times steps
this way); the program stays one compiled scan (a separate compilation from the progress-free one).
Its cost is one host round trip per step (measured in docs/parity.md, ## Generation). The bar reads
"generating (compiling)" until the first step reports, then restarts its clock, so its rate and
time left count decoding steps only.

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

from audiogen_jax import checks, patterns, sampling, sharding, t5
from audiogen_jax import lm as lmlib

UNKNOWN = -1  # a code not generated yet (the reference's `unknown_token`)

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


# --------------------------------------------------------------------------------------------------
# Progress: the compiled program calls one module-level function; which bar it moves is set per
# call, so a cached program never holds on to an old bar.

_progress_sink: list[Any] = []


def _report_progress(i) -> None:
    if _progress_sink:
        _progress_sink[-1](int(i))


@contextlib.contextmanager
def _progress_bar(total: int, desc: str) -> Iterator[tqdm]:
    # Until the first step reports, the program is being compiled (or fetched from a cache): the
    # bar says so, and its clock restarts at the first step, so the rate and the time left count
    # steps only.
    bar = tqdm(total=total, desc=f"{desc} (compiling)", unit="step", leave=False)

    def update(i: int) -> None:
        if bar.n == 0:
            bar.set_description_str(desc, refresh=False)
            bar.reset(total=total)
        # update() redraws at most every `mininterval` seconds: a fast loop is not slowed down.
        bar.update(min(i + 1, total) - bar.n)

    _progress_sink.append(update)
    try:
        yield bar
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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Window:
    """One window's inputs to the compiled program: traced, so new values never recompile."""

    ids_2BL: jax.Array  # [2B, L] int32 tokens of [descriptions; nulls] (`t5.tokenize`)
    mask_2BL: jax.Array  # [2B, L] int32, 0 on padding and on the null rows
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


@functools.partial(
    jax.jit, static_argnames=("lm_def", "cond_def", "frames_b", "params", "progress", "placement")
)
def _token_program(
    lm_def,
    cond_def,
    lm_state,
    cond_state,
    window: Window,
    *,
    frames_b: int,
    params: sampling.SamplingParams,
    progress: bool,
    placement: sharding.Placement | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One window of generation: codes [B, K, frames_b] (frames >= num_frames hold `card`), and
    whether any step's guided logits were not finite (its codes are then meaningless).

    With a `placement` the weights and text rows arrive sharded; the KV cache is pinned to rows over
    data x fsdp and heads over tensor, and the codes come back whole on every device.
    """
    lm = nnx.merge(lm_def, lm_state)
    conditioner = nnx.merge(cond_def, cond_state)
    cfg = lm.config
    delays, special, K = tuple(cfg.delays), cfg.card, cfg.n_q
    B, _, prompt_b = window.prompt_BKP.shape
    S_b = frames_b + max(delays) + 1

    # Text -> [cond; null] condition, then the cross-attention keys/values, once.
    condition_2BLD = conditioner(window.ids_2BL, window.mask_2BL)
    cache = sharding.constrain_cache(lmlib.init_cache(lm, condition_2BLD, S_b), placement)

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
    delays_K = jnp.asarray(delays, jnp.int32)

    # Steps before `start` are fully known (prompt or special): the LM sees them in one block.
    start = window.prompt_len + 1 + min(delays)
    stop = window.num_frames + max(delays) + 1
    prefill = prompt_b + min(delays) if prompt_b > 0 else 0
    if prefill > 0:
        block_BKP = seq_BKS[:, :, :prefill]
        block_BKP = jnp.where(block_BKP == UNKNOWN, special, block_BKP)
        _, cache = lmlib.step(lm, jnp.concatenate([block_BKP, block_BKP]), cache, jnp.int32(0))

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
        if progress:
            jax.debug.callback(_report_progress, i)
        cache = sharding.constrain_cache(cache, placement)
        return DecodeState(seq_BKS=seq_BKS, cache=cache, nonfinite=nonfinite)

    def body(state: DecodeState, i: jax.Array) -> tuple[DecodeState, None]:
        state = jax.lax.cond(start + i < stop, decode_step, lambda st, _: st, state, i)
        return state, None

    # The scan covers the longest possible run (no prompt); iterations past `stop` are skipped.
    init = DecodeState(seq_BKS=seq_BKS, cache=cache, nonfinite=jnp.bool_(False))
    state, _ = jax.lax.scan(body, init, jnp.arange(S_b - 1 - min(delays)))
    codes_BKT = patterns.revert_delayed(state.seq_BKS, delays, frames_b)
    return sharding.constrain(codes_BKT, (), placement), state.nonfinite


# --------------------------------------------------------------------------------------------------
# Host-side driver: validation, bucketing, the sliding window.


def _check_ids(ids_2BL) -> None:
    shape = np.shape(ids_2BL)
    if len(shape) != 2 or shape[0] % 2 or shape[0] == 0:
        raise ValueError(f"ids must be [2B, L] ([descriptions; nulls]), got {shape}")


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
    window = Window(
        ids_2BL=jnp.asarray(ids_2BL, jnp.int32),
        mask_2BL=jnp.asarray(mask_2BL, jnp.int32),
        prompt_BKP=jnp.asarray(prompt_BKP),
        prompt_len=jnp.int32(T0),
        num_frames=jnp.int32(num_frames),
        key=key,
        cfg_coef=jnp.float32(settings.sampling.cfg_coef),
    )
    return window, frames_b


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
    progress: bool,
    placement: sharding.Placement | None = None,
) -> Any:
    """`method` (`_token_program` or its `.trace`) on one window's inputs."""
    (lm_def, lm_state), (cond_def, cond_state) = splits
    if placement is not None:
        window = _place_window(window, placement)
    return method(
        lm_def,
        cond_def,
        lm_state,
        cond_state,
        window,
        frames_b=frames_b,
        params=params,
        progress=progress,
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
    placement: sharding.Placement | None = None,
) -> tuple[np.ndarray, bool]:
    """Runs the program on one window of `steps` LM steps: int32 [B, K, frames_b] numpy codes,
    and whether some logits were not finite."""
    run = functools.partial(
        _call_program, _token_program, splits, window, frames_b, params, bool(progress), placement
    )
    if not progress:
        reporter = contextlib.nullcontext()
    elif callable(progress):
        reporter = _progress_calls(progress)
    else:
        reporter = _progress_bar(steps, "generating")
    with reporter:
        codes, nonfinite = jax.device_get(run())
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
    _check_ids(ids_2BL)
    num_frames = min(settings.num_frames, settings.max_frames or settings.num_frames)
    window, frames_b = _window(
        lm.config, ids_2BL, mask_2BL, num_frames, settings, key=key, prompt_BKT=prompt_BKT
    )
    splits = (nnx.split(lm), nnx.split(conditioner))
    params = _static_params(settings, lm.config.card)
    return _call_program(_token_program.trace, splits, window, frames_b, params, False, placement)


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
      progress: True shows a tqdm bar per window; a callable is called with each step's index.
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
    _check_ids(ids_2BL)
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
        codes, nonfinite = _run_window(splits, window, frames_b, params, progress, steps, placement)
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
