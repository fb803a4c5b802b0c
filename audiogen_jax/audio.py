"""Audio around the model: loudness (ITU-R BS.1770-4), normalisation, writing files, resampling.

Mirrors, in numpy/scipy (and JAX for the resampler's convolution):
- `audiocraft/data/audio.py::audio_write` and `audiocraft/data/audio_utils.py::normalize_audio`,
  `normalize_loudness`, `convert_audio`, `convert_audio_channels`;
- `torchaudio.functional.loudness` (the measure `torchaudio.transforms.Loudness` applies): two
  K-weighting biquads (a +4 dB high shelf at 1500 Hz, then a 38 Hz high-pass), each output
  clamped to [-1, 1], mean energy in 400 ms blocks with 75% overlap, channel weights
  (1, 1, 1, 1.41, 1.41), an absolute gate at -70 LKFS and a relative gate 10 LU below the
  gated mean;
- `julius.resample_frac`: after dividing both rates by their gcd, a bank of windowed-sinc
  filters (one per output phase) convolved with stride `old_sr` over the edge-padded signal.

Arrays are `[C, W]` (channels, samples) or `[W]`; `convert_audio` also takes `[B, C, W]`.

Differences from the reference:
- Files are written with soundfile, not by piping to the `ffmpeg` CLI. The float -> integer
  mapping is ffmpeg's: WAV is 16-bit `clip(rint(x * 2**15))` (round half to even); FLAC is
  24-bit, ffmpeg's `clip(rint(x * 2**31)) >> 8`. Only 'wav' and 'flac' are offered (no mp3/ogg).
- Writing goes to a temporary file in the target directory, renamed into place at the end, so
  a failure never leaves a partial file; bad input is a `ValueError` instead of an assert.
- Loudness of a clip shorter than one 400 ms block: measured as a single block spanning the whole
  clip (the reference returns NaN and its finite-assert fires). When every block falls below
  the absolute gate, the loudness is -inf and loudness normalisation leaves the wav unchanged
  (the reference returns NaN and asserts).
- 'peak' and 'rms' leave an all-zero wav unchanged (the reference divides by zero and writes
  NaN); strategy 'none' raises a `ValueError` on samples outside (-1, 1) instead of asserting.
- The loudness measure runs in float64 (the reference: the input dtype, float32); the
  normalisation arithmetic runs in float32 in the reference's order, so 'peak', 'clip' and
  'rms' output match it sample for sample (see docs/parity.md for the measured differences).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal
import soundfile

from audiogen_jax import atomic

logger = logging.getLogger(__name__)

# BS.1770-4 gating blocks and channel weights (L, R, C, Ls, Rs).
BLOCK_SECONDS = 0.4
BLOCK_OVERLAP = 0.75
ABSOLUTE_GATE_LKFS = -70.0
RELATIVE_GATE_LU = -10.0
K_WEIGHTING_OFFSET = -0.691
CHANNEL_WEIGHTS = (1.0, 1.0, 1.0, 1.41, 1.41)
# normalize_loudness: below this RMS the wav is left as it is.
LOUDNESS_ENERGY_FLOOR = 2e-3
STRATEGIES = ("peak", "clip", "rms", "loudness", "none")
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_24")}


# ----------------------------------------------------------------------------- input checks


def _as_channels_time(wav, name: str = "wav") -> np.ndarray:
    """float32 `[C, W]` from a `[C, W]` or `[W]` float array; ValueError on anything else."""
    wav = np.asarray(wav)
    if not np.issubdtype(wav.dtype, np.floating):
        raise ValueError(f"{name} must be floating point audio in [-1, 1], got dtype {wav.dtype}")
    if wav.ndim == 1:
        wav = wav[None]
    elif wav.ndim != 2:
        raise ValueError(f"{name} must be [C, W] or [W], got shape {wav.shape}")
    if wav.shape[-1] == 0:
        raise ValueError(f"{name} is empty (shape {wav.shape})")
    if not np.isfinite(wav).all():
        raise ValueError(f"{name} contains NaN or infinite samples")
    return wav.astype(np.float32, copy=False)


def _check_rate(sample_rate, name: str = "sample_rate") -> int:
    if isinstance(sample_rate, bool) or not float(sample_rate).is_integer() or sample_rate <= 0:
        raise ValueError(f"{name} must be a positive integer number of Hz, got {sample_rate!r}")
    return int(sample_rate)


# ----------------------------------------------------------------------------- loudness


def _biquad(wav: np.ndarray, b: tuple[float, ...], a: tuple[float, ...]) -> np.ndarray:
    """One IIR biquad with zero initial state, output clamped to [-1, 1] as torchaudio's lfilter."""
    return np.clip(scipy.signal.lfilter(b, a, wav, axis=-1), -1.0, 1.0)


def _k_weighting(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """The BS.1770 pre-filter, with torchaudio's `treble_biquad` and `highpass_biquad` designs."""
    # High shelf: +4 dB around 1500 Hz, Q = 1/sqrt(2) (audio EQ cookbook).
    w0 = 2 * math.pi * 1500.0 / sample_rate
    alpha = math.sin(w0) / 2 / (1 / math.sqrt(2))
    amp = math.exp(4.0 / 40 * math.log(10))
    t1, t2, t3 = 2 * math.sqrt(amp) * alpha, (amp - 1) * math.cos(w0), (amp + 1) * math.cos(w0)
    b = (amp * ((amp + 1) + t2 + t1), -2 * amp * ((amp - 1) + t3), amp * ((amp + 1) + t2 - t1))
    a = ((amp + 1) - t2 + t1, 2 * ((amp - 1) - t3), (amp + 1) - t2 - t1)
    wav = _biquad(wav, b, a)
    # High-pass at 38 Hz, Q = 0.5.
    w0 = 2 * math.pi * 38.0 / sample_rate
    alpha = math.sin(w0) / 2 / 0.5
    b = ((1 + math.cos(w0)) / 2, -1 - math.cos(w0), (1 + math.cos(w0)) / 2)
    a = (1 + alpha, -2 * math.cos(w0), 1 - alpha)
    return _biquad(wav, b, a)


def loudness(wav, sample_rate: int) -> float:
    """Integrated loudness in LKFS (= LUFS), ITU-R BS.1770-4 as `torchaudio.functional.loudness`.

    Args:
      wav: float audio `[C, W]` or `[W]`, at most 5 channels (L, R, C, Ls, Rs).
      sample_rate: Hz.

    Returns:
      The loudness as a float; -inf when every block is below the -70 LKFS absolute gate.
      A clip shorter than one 400 ms block is measured as one block over its whole length.
    """
    wav = _as_channels_time(wav).astype(np.float64)
    sample_rate = _check_rate(sample_rate)
    if wav.shape[0] > len(CHANNEL_WEIGHTS):
        raise ValueError(
            f"loudness supports up to {len(CHANNEL_WEIGHTS)} channels, got {wav.shape[0]}"
        )
    block = int(round(BLOCK_SECONDS * sample_rate))
    hop = int(round(block * (1 - BLOCK_OVERLAP)))
    power = np.square(_k_weighting(wav, sample_rate))
    if power.shape[-1] < block:
        energy_CN = power.mean(axis=-1, keepdims=True)
    else:
        windows = np.lib.stride_tricks.sliding_window_view(power, block, axis=-1)[:, ::hop]
        energy_CN = windows.mean(axis=-1)
    weights_C = np.asarray(CHANNEL_WEIGHTS[: wav.shape[0]])[:, None]

    def lkfs(energy_N):
        with np.errstate(divide="ignore"):
            return K_WEIGHTING_OFFSET + 10 * np.log10(energy_N)

    block_lkfs_N = lkfs((weights_C * energy_CN).sum(axis=0))
    gated_N = block_lkfs_N > ABSOLUTE_GATE_LKFS
    if not gated_N.any():
        return -math.inf
    relative_gate = lkfs((weights_C * energy_CN[:, gated_N].mean(axis=-1)[:, None]).sum())
    gated_N &= block_lkfs_N > relative_gate + RELATIVE_GATE_LU
    return float(lkfs((weights_C * energy_CN[:, gated_N].mean(axis=-1)[:, None]).sum()))


# ----------------------------------------------------------------------------- normalisation


def _clip(wav: np.ndarray, log_clipping: bool, stem_name: str | None) -> np.ndarray:
    peak = np.abs(wav).max()
    if log_clipping and peak > 1:
        share = float((np.abs(wav) > 1).mean())
        logger.warning(
            "CLIPPING %s happening with proba (a bit of clipping is okay): %s maximum scale: %s",
            stem_name or "",
            share,
            float(peak),
        )
    return np.clip(wav, -1.0, 1.0)


def normalize_loudness(
    wav,
    sample_rate: int,
    loudness_headroom_db: float = 14,
    loudness_compressor: bool = False,
    energy_floor: float = LOUDNESS_ENERGY_FLOOR,
) -> np.ndarray:
    """Scales the wav to -loudness_headroom_db LUFS (optionally soft-clipped by tanh).

    Args:
      wav: float audio `[C, W]` or `[W]`.
      sample_rate: Hz.
      loudness_headroom_db: the target is minus this, in LUFS.
      loudness_compressor: apply tanh after the gain.
      energy_floor: below this RMS (over all samples) the wav is returned unchanged.

    Returns:
      float32 `[C, W]`, not clipped.
    """
    wav = _as_channels_time(wav)
    if math.sqrt(np.mean(np.square(wav, dtype=np.float64))) < energy_floor:
        return wav
    measured = loudness(wav, sample_rate)
    if measured == -math.inf:
        return wav
    gain = 10.0 ** ((-loudness_headroom_db - measured) / 20.0)
    out = np.float32(gain) * wav  # the reference scales a float32 tensor by a Python float
    return np.tanh(out) if loudness_compressor else out


def normalize_audio(
    wav,
    normalize: bool = True,
    strategy: str = "peak",
    peak_clip_headroom_db: float = 1,
    rms_headroom_db: float = 18,
    loudness_headroom_db: float = 14,
    loudness_compressor: bool = False,
    log_clipping: bool = False,
    sample_rate: int | None = None,
    stem_name: str | None = None,
) -> np.ndarray:
    """The reference's `normalize_audio`: rescale by peak, RMS or loudness, or clip.

    Args:
      wav: float audio `[C, W]` or `[W]`.
      normalize: rescale even when not needed to avoid clipping ('peak' and 'rms').
      strategy: 'peak' (to -peak_clip_headroom_db dBFS), 'clip' (to that level), 'rms' (RMS of
        the channel mean to -rms_headroom_db dBFS, then clip), 'loudness' (see
        `normalize_loudness`, then clip) or 'none' (samples must already be in (-1, 1)).
      sample_rate: Hz; needed by 'loudness'.

    Returns:
      float32 `[C, W]`.
    """
    wav = _as_channels_time(wav)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    # float32 arithmetic in the reference's order: a float32 scalar times the float32 wav.
    scale_peak = np.float32(10 ** (-peak_clip_headroom_db / 20))
    scale_rms = np.float32(10 ** (-rms_headroom_db / 20))
    if strategy == "peak":
        peak = np.abs(wav).max()
        if peak > 0:
            rescaling = scale_peak * (np.float32(1) / peak)  # torch: peak.reciprocal() * scale
            if normalize or rescaling < 1:
                wav = wav * rescaling
    elif strategy == "clip":
        wav = np.clip(wav, -scale_peak, scale_peak)
    elif strategy == "rms":
        rms = np.float32(np.sqrt(np.mean(np.square(wav.mean(axis=0, dtype=np.float64)))))
        if rms > 0:
            rescaling = scale_rms * (np.float32(1) / rms)
            if normalize or rescaling < 1:
                wav = wav * rescaling
        wav = _clip(wav, log_clipping, stem_name)
    elif strategy == "loudness":
        if sample_rate is None:
            raise ValueError("strategy='loudness' needs the sample_rate")
        wav = normalize_loudness(wav, sample_rate, loudness_headroom_db, loudness_compressor)
        wav = _clip(wav, log_clipping, stem_name)
    elif np.abs(wav).max() >= 1:
        raise ValueError(
            "strategy='none' needs samples strictly inside (-1, 1); "
            "choose 'peak', 'clip', 'rms' or 'loudness'"
        )
    return wav


# ----------------------------------------------------------------------------- writing


def _to_pcm(wav: np.ndarray, format: str) -> np.ndarray:
    """`[W, C]` integers as ffmpeg converts float32 samples (round half to even, saturate)."""
    if format == "wav":
        s16 = np.clip(np.rint(wav.astype(np.float64) * 2**15), -(2**15), 2**15 - 1)
        return s16.astype(np.int16).T
    # FLAC: ffmpeg feeds the encoder 32-bit samples and keeps their top 24 bits (>> 8).
    s32 = np.clip(np.rint(wav.astype(np.float64) * 2**31), -(2**31), 2**31 - 1).astype(np.int32)
    return ((s32 >> 8) << 8).T  # soundfile writes int32 to PCM_24 as its top 24 bits


def audio_write(
    stem_name: str | os.PathLike,
    wav,
    sample_rate: int,
    format: str = "wav",
    normalize: bool = True,
    strategy: str = "peak",
    peak_clip_headroom_db: float = 1,
    rms_headroom_db: float = 18,
    loudness_headroom_db: float = 14,
    loudness_compressor: bool = False,
    log_clipping: bool = True,
    make_parent_dir: bool = True,
    add_suffix: bool = True,
) -> Path:
    """Normalises a waveform and writes it as 16-bit WAV or 24-bit FLAC (reference `audio_write`).

    AudioGen's documented use: `audio_write(stem, wav, 16000, strategy="loudness",
    loudness_compressor=True)`.

    Args:
      stem_name: the path without extension (the extension is added unless add_suffix=False).
      wav: float audio `[C, W]` or `[W]` (numpy or JAX), finite.
      sample_rate: Hz.
      format: 'wav' (PCM 16-bit) or 'flac' (24-bit).
      normalize, strategy, peak_clip_headroom_db, rms_headroom_db, loudness_headroom_db,
        loudness_compressor, log_clipping: see `normalize_audio`.
      make_parent_dir: create missing parent directories.
      add_suffix: append '.wav' / '.flac' to stem_name.

    Returns:
      The path written.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    sample_rate = _check_rate(sample_rate)
    wav = normalize_audio(
        wav,
        normalize,
        strategy,
        peak_clip_headroom_db,
        rms_headroom_db,
        loudness_headroom_db,
        loudness_compressor,
        log_clipping=log_clipping,
        sample_rate=sample_rate,
        stem_name=str(stem_name),
    )
    path = Path(str(stem_name) + (f".{format}" if add_suffix else ""))
    container, subtype = FORMATS[format]
    # A hidden temporary name next to the target, renamed over it only once fully written.
    with atomic.replacing_file(path) as tmp:
        try:
            if make_parent_dir:
                path.parent.mkdir(parents=True, exist_ok=True)
            f = open(tmp, "xb")  # noqa: SIM115 - closed by the `with` below
        except OSError as e:
            raise OSError(
                f"cannot write {path}: cannot create a file in {path.parent} ({e})"
            ) from e
        with f:
            soundfile.write(f, _to_pcm(wav, format), sample_rate, subtype=subtype, format=container)
    return path


# ----------------------------------------------------------------------------- resampling


@functools.lru_cache(maxsize=16)
def _resample_kernels(old_sr: int, new_sr: int, zeros: int, rolloff: float) -> np.ndarray:
    """julius's polyphase filter bank `[new_sr, 2 * width + old_sr]` (rates already gcd-reduced).

    Output sample j sits at time j / new_sr; its phase i = j mod new_sr sees the input at offsets
    idx / old_sr - i / new_sr. Each filter is a sinc low-passed at rolloff * min(old_sr, new_sr)
    / 2, with a cos^2 window over `zeros` zero crossings, normalised to sum 1. Computed in
    float32 in julius's order: its float32 rounding of `t` is part of the reference's filters
    (a float64 design differs from them by up to 1.4e-5; this one by 2e-7).
    """
    f32 = np.float32
    cutoff = min(old_sr, new_sr) * rolloff
    width = math.ceil(zeros * old_sr / cutoff)
    idx = np.arange(-width, width + old_sr, dtype=f32)
    phase = (-np.arange(new_sr) / new_sr).astype(f32)[:, None]
    t = np.clip((phase + idx / f32(old_sr)) * f32(cutoff), -zeros, zeros) * f32(math.pi)
    window = np.cos(t / f32(zeros) / f32(2)) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc = np.where(t == 0, f32(1), np.sin(t) / t)
    kernels = sinc * window
    return kernels / kernels.sum(axis=-1, keepdims=True, dtype=f32)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _polyphase(x_NW: jax.Array, old_sr: int, width: int, kernels_PL: jax.Array) -> jax.Array:
    """Edge-pad, convolve every phase filter with stride old_sr, interleave phases: `[N, W']`."""
    padded = jnp.pad(x_NW, ((0, 0), (width, width + old_sr)), mode="edge")
    y_NPF = jax.lax.conv_general_dilated(
        padded[:, None, :],
        kernels_PL[:, None, :],
        window_strides=(old_sr,),
        padding="VALID",
        dimension_numbers=("NCH", "OIH", "NCH"),
        precision=jax.lax.Precision.HIGHEST,
    )
    return jnp.swapaxes(y_NPF, 1, 2).reshape(x_NW.shape[0], -1)


def resample(
    wav,
    from_sr: int,
    to_sr: int,
    *,
    zeros: int = 24,
    rolloff: float = 0.945,
    output_length: int | None = None,
    full: bool = False,
) -> jax.Array:
    """Band-limited resampling with `julius.resample_frac` semantics.

    Args:
      wav: float audio `[..., W]`.
      from_sr, to_sr: integer rates (Hz); only their ratio matters.
      zeros: zero crossings kept on each side of the sinc.
      rolloff: low-pass cutoff as a share of the lower Nyquist frequency.
      output_length: samples to return, in [0, ceil(W * to_sr / from_sr)]; default the floor.
      full: return ceil(W * to_sr / from_sr) samples instead of the floor.

    Returns:
      float32 `[..., W']` (the input itself, as an array, when the rates are equal).
    """
    from_sr, to_sr = _check_rate(from_sr, "from_sr"), _check_rate(to_sr, "to_sr")
    wav = jnp.asarray(wav)
    if wav.ndim < 1 or not jnp.issubdtype(wav.dtype, jnp.floating):
        raise ValueError(f"wav must be a float array [..., W], got {wav.dtype} {wav.shape}")
    gcd = math.gcd(from_sr, to_sr)
    old_sr, new_sr = from_sr // gcd, to_sr // gcd
    if old_sr == new_sr:
        return wav
    length = wav.shape[-1]
    # julius takes floor/ceil of this ratio as a float32 tensor; do the same so lengths agree.
    exact = np.float32(new_sr * length / old_sr)
    longest = int(np.ceil(exact))
    if output_length is None:
        output_length = longest if full else int(np.floor(exact))
    elif full:
        raise ValueError("pass either output_length or full=True, not both")
    elif not 0 <= output_length <= longest:
        raise ValueError(f"output_length must be between 0 and {longest}, got {output_length}")
    kernels = _resample_kernels(old_sr, new_sr, zeros, rolloff)
    width = (kernels.shape[-1] - old_sr) // 2
    y = _polyphase(wav.reshape(-1, length).astype(jnp.float32), old_sr, width, kernels)
    return y[:, :output_length].reshape(*wav.shape[:-1], output_length)


def convert_audio_channels(wav: jax.Array, channels: int) -> jax.Array:
    """`[..., C, W]` to `[..., channels, W]`: mean to mono, repeat mono, or keep the first ones."""
    source = wav.shape[-2]
    if source == channels:
        return wav
    if channels == 1:
        return wav.mean(axis=-2, keepdims=True)
    if source == 1:
        return jnp.broadcast_to(wav, (*wav.shape[:-2], channels, wav.shape[-1]))
    if source > channels:
        return wav[..., :channels, :]
    raise ValueError(f"cannot make {channels} channels from {source} (only from mono or more)")


def convert_audio(wav, from_sr: int, to_sr: int, to_channels: int) -> jax.Array:
    """Resample, then mix channels (audiocraft `convert_audio`).

    Args:
      wav: float audio `[C, W]` or `[B, C, W]`.
      from_sr, to_sr: Hz.
      to_channels: channels wanted (1 for AudioGen).

    Returns:
      float32 `[to_channels, W']` or `[B, to_channels, W']`, W' = floor(W * to_sr / from_sr).
    """
    wav = jnp.asarray(wav)
    if wav.ndim not in (2, 3):
        raise ValueError(f"wav must be [C, W] or [B, C, W], got shape {wav.shape}")
    if isinstance(to_channels, bool) or not isinstance(to_channels, int) or to_channels < 1:
        raise ValueError(f"to_channels must be a positive int, got {to_channels!r}")
    return convert_audio_channels(resample(wav, from_sr, to_sr), to_channels)
