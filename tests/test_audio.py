"""Audio output and resampling against the reference: torchaudio's loudness, audiocraft's
normalize_audio / audio_write (ffmpeg) / convert_audio, and julius.resample_frac.

Files are compared by their decoded samples (ffmpeg adds metadata chunks; bytes differ).
Every tolerance below is a measured number; see docs/parity.md, "Audio output".
"""

from __future__ import annotations

import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from audiogen_jax import audio
from audiogen_jax.audio import (
    audio_write,
    convert_audio,
    loudness,
    normalize_audio,
    normalize_loudness,
    resample,
)

# Measured max |ours - torchaudio| in LU: 2.8e-5 at 16 kHz, 2.9e-4 at 48 kHz (torchaudio's float32
# recursion; run in float64 it agrees with ours to 1.9e-13 LU). See docs/parity.md.
LOUDNESS_TOL_LU = {16000: 1e-4, 48000: 1e-3}
LOUDNESS_GAIN_RTOL = 5e-6  # loudness-normalised samples, relative to the peak; measured 9.3e-7
RESAMPLE_TOL = 3e-6  # measured max |ours - julius| on noise of std 0.5: 7.2e-7
# Decoded-sample differences (in LSBs of the file's bit depth) allowed per (format, strategy):
# peak and clip are exact; rms differs from torch's float32 mean by an ulp now and then, which
# moves a 24-bit LSB; loudness inherits the ~1e-5 LU measurement difference as a ~2e-6 gain.
WRITE_TOL_LSB = {
    ("wav", "peak"): 0,
    ("wav", "clip"): 0,
    ("wav", "rms"): 0,
    ("wav", "loudness"): 1,
    ("flac", "peak"): 0,
    ("flac", "clip"): 0,
    ("flac", "rms"): 1,
    ("flac", "loudness"): 16,
}
SHIFT = {"wav": 16, "flac": 8}  # soundfile reads both as left-aligned int32


def _clip(
    kind: str, sample_rate: int, channels: int, seconds: float, amp: float, seed: int = 0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(sample_rate * seconds)
    t = np.arange(n) / sample_rate
    if kind == "tone":
        freqs = np.array([440.0, 1000.0, 3000.0, 60.0, 5000.0][:channels])[:, None]
        x = amp * np.sin(2 * np.pi * freqs * t)
    elif kind == "noise":
        x = amp * rng.standard_normal((channels, n))
    elif kind == "silence_padded":  # exercises the absolute gate
        x = np.zeros((channels, n))
        x[:, n // 4 : n // 2] = amp * rng.standard_normal((channels, n // 2 - n // 4))
    elif kind == "quiet_padded":  # exercises the relative gate
        x = 1e-4 * rng.standard_normal((channels, n))
        x[:, n // 3 : 2 * n // 3] += amp * np.sin(2 * np.pi * 700 * t[n // 3 : 2 * n // 3])
    elif kind == "clamped":  # loud broadband noise: the K-weighting outputs hit the [-1, 1] clamp
        x = np.clip(1.5 * amp * rng.standard_normal((channels, n)), -1, 1)
    else:
        raise AssertionError(kind)
    return x.astype(np.float32)


KINDS = ("tone", "noise", "silence_padded", "quiet_padded", "clamped")
AMPS = (0.01, 0.3, 0.9)
LOUDNESS_GROUPS = [
    (16000, 1, 1.0),
    (16000, 2, 1.0),
    (16000, 5, 1.0),
    (48000, 1, 0.6),
    (48000, 2, 0.6),
]


@pytest.fixture(scope="module")
def reference_loudness(reference):
    """torchaudio's loudness of every clip in LOUDNESS_GROUPS, keyed by (rate, channels).

    torchaudio's lfilter runs a Python loop over samples here (~60 us each, whatever the batch),
    so each rate is measured in ONE batched call: clips with fewer channels are zero-padded to
    the widest. A silent channel adds exactly nothing to the weighted energies (and its filter
    output stays 0), so the reference's answer is that of the unpadded clip.
    """
    import torch
    import torchaudio

    out = {}
    for sample_rate in sorted({g[0] for g in LOUDNESS_GROUPS}):
        groups = [g for g in LOUDNESS_GROUPS if g[0] == sample_rate]
        widest = max(g[1] for g in groups)
        batch, index = [], []
        for _, channels, seconds in groups:
            for i, (kind, amp) in enumerate((k, a) for k in KINDS for a in AMPS):
                clip = _clip(kind, sample_rate, channels, seconds, amp, seed=i)
                batch.append(np.pad(clip, ((0, widest - channels), (0, 0))))
                index.append((channels, clip))
        measured = torchaudio.transforms.Loudness(sample_rate)(torch.from_numpy(np.stack(batch)))
        for (channels, clip), value in zip(index, measured.numpy(), strict=True):
            out.setdefault((sample_rate, channels), []).append((clip, float(value)))
    return out


@pytest.mark.parity
@pytest.mark.parametrize("sample_rate, channels, seconds", LOUDNESS_GROUPS)
def test_loudness_matches_torchaudio(reference_loudness, sample_rate, channels, seconds):
    clips, want = zip(*reference_loudness[(sample_rate, channels)], strict=True)
    assert clips[0].shape == (channels, int(sample_rate * seconds))
    got = np.array([loudness(clip, sample_rate) for clip in clips])
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, np.array(want), rtol=0, atol=LOUDNESS_TOL_LU[sample_rate])


@pytest.mark.parity
def test_loudness_matches_torchaudio_run_in_float64(reference):
    """The remaining difference is torchaudio's float32 arithmetic: in float64 it agrees with
    ours to rounding (measured 1.9e-13 LU)."""
    import torch
    import torchaudio

    clips = np.stack([_clip(kind, 16000, 2, 0.5, 0.3, seed=i) for i, kind in enumerate(KINDS)])
    want = torchaudio.functional.loudness(torch.from_numpy(clips).double(), 16000).numpy()
    got = np.array([loudness(clip, 16000) for clip in clips])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_loudness_of_a_clip_shorter_than_a_block_is_one_block():
    x = _clip("noise", 16000, 1, 0.4, 0.3)  # exactly one 400 ms block: the reference's path
    full_block = loudness(x, 16000)
    short = loudness(x[:, :-1], 16000)  # one sample short: measured as one block of 6399
    assert math.isfinite(short) and abs(short - full_block) < 0.01
    assert loudness(x[:, :800], 16000) == pytest.approx(full_block, abs=0.5)


def test_loudness_all_gated_is_minus_inf_and_skips_gain(tmp_path):
    # A 1 Hz sine: RMS 0.035 (above the energy floor) but the K-weighting's high-pass leaves
    # every block below -70 LKFS. The reference returns NaN and then asserts.
    t = np.arange(16000) / 16000
    x = (0.05 * np.sin(2 * np.pi * t)).astype(np.float32)
    assert loudness(x, 16000) == -math.inf
    np.testing.assert_array_equal(normalize_loudness(x, 16000)[0], x)
    path = audio_write(tmp_path / "gated", x, 16000, strategy="loudness")
    decoded, _ = soundfile.read(path, dtype="int16")
    np.testing.assert_array_equal(decoded, np.rint(x * 2**15).astype(np.int16))


def test_loudness_is_louder_for_louder_input():
    x = _clip("noise", 16000, 1, 1.0, 0.02)  # quiet enough that no filter output is clamped
    gain_db = loudness(2 * x, 16000) - loudness(x, 16000)
    assert gain_db == pytest.approx(20 * math.log10(2), abs=1e-6)


@pytest.mark.parametrize(
    "wav, message",
    [
        (np.zeros((6, 16000), np.float32), "up to 5 channels"),
        (np.zeros((2, 3, 100), np.float32), r"\[C, W\] or \[W\]"),
        (np.zeros(100, np.int16), "floating point"),
        (np.full(100, np.nan, np.float32), "NaN or infinite"),
        (np.zeros((1, 0), np.float32), "empty"),
    ],
)
def test_loudness_rejects_bad_input(wav, message):
    with pytest.raises(ValueError, match=message):
        loudness(wav, 16000)


# ----------------------------------------------------------------------------- normalisation

STRATEGY_CASES = [
    dict(strategy="peak"),
    dict(strategy="peak", normalize=False),
    dict(strategy="peak", peak_clip_headroom_db=3),
    dict(strategy="clip"),
    dict(strategy="rms"),
    dict(strategy="rms", normalize=False, rms_headroom_db=6),
    dict(strategy="loudness"),
    dict(strategy="loudness", loudness_compressor=True, loudness_headroom_db=10),
]


def _music_like(channels: int, amp: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000
    x = amp * (0.6 * np.sin(2 * np.pi * 440 * t) + 0.4 * rng.standard_normal((channels, 16000)))
    return x.astype(np.float32)


@pytest.mark.parity
@pytest.mark.parametrize("kwargs", STRATEGY_CASES, ids=lambda k: "-".join(map(str, k.values())))
def test_normalize_audio_matches_reference(reference, kwargs):
    import torch
    from audiocraft.data.audio_utils import normalize_audio as ref_normalize

    for channels, amp in ((1, 2.0), (2, 0.05)):
        x = _music_like(channels, amp)
        want = ref_normalize(torch.from_numpy(x.copy()), sample_rate=16000, **kwargs).numpy()
        got = normalize_audio(x, sample_rate=16000, **kwargs)
        assert got.dtype == np.float32 and got.shape == want.shape
        if kwargs["strategy"] == "loudness":
            peak = np.abs(want).max()
            np.testing.assert_allclose(got, want, rtol=0, atol=LOUDNESS_GAIN_RTOL * peak)
        elif kwargs["strategy"] == "rms":  # torch's float32 mean vs ours: at most an ulp apart
            np.testing.assert_allclose(got, want, rtol=2 * np.finfo(np.float32).eps, atol=0)
        else:
            np.testing.assert_array_equal(got, want)


def test_normalize_audio_edge_cases():
    zeros = np.zeros((1, 100), np.float32)
    for strategy in ("peak", "rms"):  # the reference divides by zero here
        np.testing.assert_array_equal(normalize_audio(zeros, strategy=strategy), zeros)
    np.testing.assert_array_equal(normalize_audio(zeros + 0.5, strategy="none"), zeros + 0.5)
    with pytest.raises(ValueError, match="strictly inside"):
        normalize_audio(zeros + 1.0, strategy="none")
    with pytest.raises(ValueError, match="strategy must be one of"):
        normalize_audio(zeros, strategy="lufs")
    with pytest.raises(ValueError, match="needs the sample_rate"):
        normalize_audio(zeros, strategy="loudness")
    quiet = np.full((1, 16000), 1e-3, np.float32)  # RMS below the 2e-3 floor: left unchanged
    np.testing.assert_array_equal(normalize_loudness(quiet, 16000), quiet)


# ----------------------------------------------------------------------------- writing


def _decoded(path) -> np.ndarray:
    samples, _ = soundfile.read(path, dtype="int32", always_2d=True)
    return samples.astype(np.int64)


def _reference_write(tmp_path, wav: np.ndarray, fmt: str, **kwargs):
    import torch
    from audiocraft.data.audio import audio_write as ref_audio_write

    return ref_audio_write(
        tmp_path / "reference",
        torch.from_numpy(wav.copy()),
        16000,
        format=fmt,
        log_clipping=False,
        **kwargs,
    )


WRITE_CASES = [
    ("wav", 1, 2.0, dict(strategy="peak")),
    ("wav", 2, 0.05, dict(strategy="peak", normalize=False)),
    ("wav", 2, 2.0, dict(strategy="clip")),
    ("wav", 1, 0.05, dict(strategy="rms")),
    ("wav", 1, 0.05, dict(strategy="loudness", loudness_compressor=True)),  # AudioGen's call
    ("wav", 2, 2.0, dict(strategy="loudness")),
    ("flac", 1, 2.0, dict(strategy="peak")),
    ("flac", 2, 2.0, dict(strategy="clip")),
    ("flac", 1, 0.05, dict(strategy="rms")),
    ("flac", 1, 0.05, dict(strategy="loudness", loudness_compressor=True)),
]


@pytest.mark.parity
@pytest.mark.parametrize(
    "fmt, channels, amp, kwargs",
    WRITE_CASES,
    ids=[f"{c[0]}-{c[1]}ch-{c[2]}-{'-'.join(map(str, c[3].values()))}" for c in WRITE_CASES],
)
def test_audio_write_matches_reference(reference, tmp_path, fmt, channels, amp, kwargs):
    x = _music_like(channels, amp, seed=channels)
    want_path = _reference_write(tmp_path, x, fmt, **kwargs)
    got_path = audio_write(tmp_path / "ours", x, 16000, format=fmt, log_clipping=False, **kwargs)
    assert got_path == tmp_path / f"ours.{fmt}"
    want_info, got_info = soundfile.info(want_path), soundfile.info(got_path)
    assert (got_info.format, got_info.subtype) == (want_info.format, want_info.subtype)
    assert (got_info.samplerate, got_info.channels) == (16000, channels)
    want, got = _decoded(want_path), _decoded(got_path)
    assert got.shape == want.shape == (16000, channels)
    lsb = np.abs(got - want) >> SHIFT[fmt]
    assert lsb.max() <= WRITE_TOL_LSB[(fmt, kwargs["strategy"])]
    assert (lsb > 0).mean() <= 0.01 or fmt == "flac"


@pytest.mark.parity
@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_float_to_pcm_mapping_matches_ffmpeg(reference, tmp_path, fmt):
    """Round half to even, +1.0 saturates, -1.0 is the most negative code, beyond ±1 clips."""
    lsb = 2.0 ** -(15 if fmt == "wav" else 23)
    special = np.array([0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49, -3.51], np.float64) * lsb
    edges = np.array([1.0, -1.0, 1 - lsb / 2, -1 + lsb / 2, 1.2, -1.3, 1 / 3, -2 / 3])
    rng = np.random.default_rng(0)
    x = np.concatenate([special, edges, rng.uniform(-1.1, 1.1, 4000)]).astype(np.float32)
    x = np.stack([x, -x])
    # 'clip' at 0 dB headroom is a plain clamp to [-1, 1]: only the PCM conversion remains.
    kwargs = dict(strategy="clip", peak_clip_headroom_db=0)
    want = _decoded(_reference_write(tmp_path, x, fmt, **kwargs))
    got = _decoded(audio_write(tmp_path / "ours", x, 16000, format=fmt, **kwargs))
    np.testing.assert_array_equal(got, want)


def test_audio_write_paths_and_inputs(tmp_path):
    x = jnp.asarray(_music_like(1, 0.3)[0])  # a JAX [W] array
    path = audio_write(tmp_path / "a" / "b" / "clip", x, 16000)
    assert path == tmp_path / "a" / "b" / "clip.wav" and path.exists()
    assert soundfile.info(path).frames == 16000
    path = audio_write(tmp_path / "raw", np.asarray(x), 16000, format="flac", add_suffix=False)
    assert path == tmp_path / "raw" and soundfile.info(path).format == "FLAC"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "raw"]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not a 0600 temp


@pytest.mark.parametrize(
    "wav, kwargs, message",
    [
        (np.full((1, 10), np.inf, np.float32), {}, "NaN or infinite"),
        (np.zeros((1, 2, 10), np.float32), {}, r"\[C, W\] or \[W\]"),
        (np.zeros((1, 10), np.int16), {}, "floating point"),
        (np.zeros((1, 10), np.float32), dict(format="mp3"), "format must be one of"),
        (np.zeros((1, 10), np.float32), dict(strategy="loud"), "strategy must be one of"),
        (np.zeros((1, 10), np.float32), dict(sample_rate=0), "positive integer"),
        (np.zeros((1, 10), np.float32), dict(sample_rate=16000.5), "positive integer"),
    ],
)
def test_audio_write_rejects_bad_input(tmp_path, wav, kwargs, message):
    kwargs = {"sample_rate": 16000, **kwargs}
    with pytest.raises(ValueError, match=message):
        audio_write(tmp_path / "bad", wav, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_audio_write_unwritable_directory(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot create a file in"):
        audio_write(blocker / "clip", np.zeros(100, np.float32), 16000)
    with pytest.raises(OSError, match="cannot create a file in"):
        audio_write(blocker / "sub" / "clip", np.zeros(100, np.float32), 16000)


def test_audio_write_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    (tmp_path / "clip.wav").write_bytes(b"previous")

    def failing_write(file, data, *args, **kwargs):
        file.write(b"RIFF partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(audio.soundfile, "write", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        audio_write(tmp_path / "clip", np.zeros(100, np.float32), 16000)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.wav"]
    assert (tmp_path / "clip.wav").read_bytes() == b"previous"  # the old file is untouched


# ----------------------------------------------------------------------------- resampling

RATE_PAIRS = [
    (48000, 16000),
    (44100, 16000),
    (16000, 44100),
    (22050, 16000),
    (8000, 16000),
    (16000, 24000),
]


@pytest.mark.parity
@pytest.mark.parametrize("from_sr, to_sr", RATE_PAIRS)
def test_resample_matches_julius(reference, from_sr, to_sr):
    import julius
    import torch

    x = (0.5 * np.random.default_rng(0).standard_normal((2, 3, 4321))).astype(np.float32)
    reference_resampler = julius.ResampleFrac(from_sr, to_sr)  # its filter design is slow here
    for kwargs in ({}, dict(full=True), dict(output_length=7)):
        want = reference_resampler(torch.from_numpy(x), **kwargs).numpy()
        got = np.asarray(resample(x, from_sr, to_sr, **kwargs))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=RESAMPLE_TOL)


@pytest.mark.parity
def test_resample_length_follows_julius_float32_rounding(reference):
    """julius floors new_sr * W / old_sr as a float32; at this length that rounds up to an
    integer, so it returns one sample more than the exact floor. So do we."""
    import julius
    import torch

    length = next(n for n in range(180_634, 200_000) if (160 * n) % 441 == 440)
    assert math.floor(160 * length / 441) == math.floor(np.float32(160 * length / 441)) - 1
    x = np.random.default_rng(1).standard_normal(length).astype(np.float32)
    want = julius.resample_frac(torch.from_numpy(x), 44100, 16000).numpy()
    got = np.asarray(resample(x, 44100, 16000))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=RESAMPLE_TOL * 2)


def test_resample_preserves_a_constant_and_identity():
    x = np.ones((1, 1000), np.float32)
    np.testing.assert_allclose(np.asarray(resample(x, 44100, 16000)), 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(resample(x, 16000, 16000)), x)


def test_resample_rejects_bad_arguments():
    x = np.zeros(100, np.float32)
    with pytest.raises(ValueError, match="from_sr must be a positive integer"):
        resample(x, 44100.5, 16000)
    with pytest.raises(ValueError, match="to_sr must be a positive integer"):
        resample(x, 44100, -1)
    with pytest.raises(ValueError, match="output_length must be between 0 and 37"):
        resample(x, 44100, 16000, output_length=38)
    with pytest.raises(ValueError, match="either output_length or full"):
        resample(x, 44100, 16000, output_length=3, full=True)
    with pytest.raises(ValueError, match="float array"):
        resample(np.zeros(100, np.int32), 44100, 16000)


@pytest.mark.parity
@pytest.mark.parametrize(
    "shape, rates, to_channels",
    [
        ((2, 3000), (44100, 16000), 1),  # stereo prompt to AudioGen's mono 16 kHz
        ((1, 3000), (16000, 16000), 2),  # mono to stereo: repeat
        ((2, 3, 3000), (48000, 16000), 2),  # batched; more channels than asked: keep the first
        ((2, 2, 3000), (16000, 16000), 2),  # nothing to do
    ],
)
def test_convert_audio_matches_reference(reference, shape, rates, to_channels):
    import torch
    from audiocraft.data.audio_utils import convert_audio as ref_convert

    x = (0.5 * np.random.default_rng(2).standard_normal(shape)).astype(np.float32)
    want = ref_convert(torch.from_numpy(x), *rates, to_channels).numpy()
    got = np.asarray(convert_audio(x, *rates, to_channels))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=RESAMPLE_TOL)


def test_convert_audio_rejects_bad_input():
    with pytest.raises(ValueError, match="cannot make 3 channels from 2"):
        convert_audio(np.zeros((2, 100), np.float32), 16000, 16000, 3)
    with pytest.raises(ValueError, match=r"\[C, W\] or \[B, C, W\]"):
        convert_audio(np.zeros(100, np.float32), 16000, 16000, 1)
    with pytest.raises(ValueError, match="to_channels must be a positive int"):
        convert_audio(np.zeros((1, 100), np.float32), 16000, 16000, 0)
