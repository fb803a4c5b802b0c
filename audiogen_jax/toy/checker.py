"""The checker: reads the toy world's properties back from a waveform, with plain signal processing.

    wav -> energy envelope -> events (runs of loud frames) -> per event: click? noise? tone?
        -> tones: pitch track -> chirp (glide >= CHIRP_MIN_OCTAVES, up or down) or beep (low / high)

It is how the toy model is graded: a generated clip is read by `read`, compared with the scene its
caption describes by `score`, and the per-property hit rates are the model's quality numbers
(source type, pitch class, sweep direction, event count, order). It knows the world's ranges (8 kHz
audio, beeps below 400 Hz or above 1.6 kHz, glides of more than an octave) but nothing about any
model, and its thresholds sit between the world's ranges, not at their edges:

    event:  frames within EVENT_DB of the loudest, gaps shorter than MERGE_SECONDS bridged,
            runs quieter than KEEP_DB below the loudest dropped (codec hum, not sounds)
    click:  shorter than CLICK_SECONDS (a click lasts 4 ms; the shortest burst 60 ms)
    noise:  median spectral flatness above NOISE_FLATNESS (white noise ~0.5, a tone ~0.01);
            a hiss if longer than HISS_SECONDS (hisses >= 0.28 s, bursts <= 0.12 s)
    chirp:  the pitch track's fitted glide exceeds CHIRP_MIN_OCTAVES (chirps glide >= 1.2)
    beep:   low if its median pitch is below PITCH_SPLIT_HZ (the geometric middle of 400 and 1600)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from audiogen_jax.toy.world import SAMPLE_RATE, Event, Scene

WINDOW_SECONDS = 0.008  # energy envelope window
HOP_SECONDS = 0.002  # energy envelope hop
EVENT_DB = 35.0
KEEP_DB = 25.0
MERGE_SECONDS = 0.04
CLICK_SECONDS = 0.035
NOISE_FLATNESS = 0.2
HISS_SECONDS = 0.2
CHIRP_MIN_OCTAVES = 0.6
PITCH_SPLIT_HZ = 800.0
N_FFT = 256  # 32 ms at 8 kHz: 31 Hz bins, enough for a 150 Hz beep
FFT_HOP = 64
BAND_HZ = (80.0, 3800.0)  # where pitch and flatness are measured

PROPERTIES = ("source", "pitch", "direction", "count", "order", "exact")


def _frame_energy_db(wav: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Mean power of each `window`-sample frame every `hop` samples, in dB."""
    power = np.concatenate([[0.0], np.cumsum(wav.astype(np.float64) ** 2)])
    starts = np.arange(0, max(len(wav) - window, 0) + 1, hop)
    energy = (power[starts + window] - power[starts]) / window
    return 10 * np.log10(energy + 1e-12)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs of a boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def find_events(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of the sound events in `wav` [W], in time order."""
    window, hop = int(WINDOW_SECONDS * sample_rate), int(HOP_SECONDS * sample_rate)
    if len(wav) < window:
        return []
    db = _frame_energy_db(wav, window, hop)
    loudest = db.max()
    if loudest < -80:  # silence
        return []
    runs = _runs(db > loudest - EVENT_DB)
    merged: list[list[int]] = []
    for start, end in runs:
        if merged and (start - merged[-1][1]) * hop < MERGE_SECONDS * sample_rate:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [
        (start * hop, (end - 1) * hop + window)
        for start, end in merged
        if db[start:end].max() > loudest - KEEP_DB
    ]


def _spectra(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(power [frames, bins] of Hann-windowed frames, each frame's energy in dB)."""
    if len(x) < N_FFT:
        x = np.pad(x, (0, N_FFT - len(x)))
    starts = np.arange(0, len(x) - N_FFT + 1, FFT_HOP)
    frames = x[starts[:, None] + np.arange(N_FFT)] * np.hanning(N_FFT)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    return power, 10 * np.log10(power.sum(-1) + 1e-12)


def classify(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Event:
    """The kind of one event's samples `x` [W] (as cut by `find_events`)."""
    if len(x) < CLICK_SECONDS * sample_rate:
        return Event("click")
    power, frame_db = _spectra(x)
    loud = frame_db > frame_db.max() - 10  # the event's body, not its fades
    freqs = np.fft.rfftfreq(N_FFT, 1 / sample_rate)
    band = (freqs >= BAND_HZ[0]) & (freqs <= BAND_HZ[1])
    p = power[loud][:, band] + 1e-12
    flatness = np.exp(np.mean(np.log(p), axis=-1)) / np.mean(p, axis=-1)
    if np.median(flatness) > NOISE_FLATNESS:
        return Event("noise", texture="hiss" if len(x) > HISS_SECONDS * sample_rate else "burst")
    # Pitch track: each loud frame's peak bin, refined by a parabola through the log powers.
    log_p = np.log(p)
    k = np.clip(np.argmax(log_p, axis=-1), 1, log_p.shape[1] - 2)
    rows = np.arange(len(k))
    left, mid, right = log_p[rows, k - 1], log_p[rows, k], log_p[rows, k + 1]
    offset = 0.5 * (left - right) / np.minimum(left - 2 * mid + right, -1e-9)
    hz = freqs[band][0] + (k + offset) * (freqs[1] - freqs[0])
    t = np.flatnonzero(loud) * FFT_HOP / sample_rate
    octaves = np.log2(np.maximum(hz, 1.0))
    glide = np.polyfit(t, octaves, 1)[0] * (t[-1] - t[0]) if len(t) > 1 else 0.0
    if abs(glide) >= CHIRP_MIN_OCTAVES:
        return Event("chirp", direction="rising" if glide > 0 else "falling")
    return Event("beep", pitch="low" if np.median(hz) < PITCH_SPLIT_HZ else "high")


def read(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[Event, ...]:
    """The events heard in a clip `wav` [W] (or [1, W]), in time order."""
    wav = np.asarray(wav, np.float32).reshape(-1)
    return tuple(classify(wav[a:b], sample_rate) for a, b in find_events(wav, sample_rate))


def _kinds_in_order(events) -> list[Event]:
    """Events with consecutive repeats collapsed: the order of what was heard."""
    return [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]


def score(expected: Scene, heard: tuple[Event, ...]) -> dict[str, bool | None]:
    """Which properties of `expected` the events `heard` get right (None: not applicable).

    source: the same set of sources; pitch: the same set of pitch words over the beeps (scenes
    with beeps only); direction: the same over the chirps (scenes with chirps); count: as many
    events; order: the same kinds in the same order, repeats collapsed (two-kind scenes only);
    exact: every event right.
    """

    def words(events, attr, source):
        return {getattr(e, attr) for e in events if e.source == source}

    want = expected.events
    return {
        "source": {e.source for e in want} == {e.source for e in heard},
        "pitch": words(want, "pitch", "beep") == words(heard, "pitch", "beep")
        if any(e.source == "beep" for e in want)
        else None,
        "direction": words(want, "direction", "chirp") == words(heard, "direction", "chirp")
        if any(e.source == "chirp" for e in want)
        else None,
        "count": len(heard) == len(want),
        "order": _kinds_in_order(heard) == _kinds_in_order(want) if expected.is_sequence else None,
        "exact": tuple(heard) == want,
    }


@dataclasses.dataclass
class Tally:
    """Per-property hit counts over many scored clips."""

    hits: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(PROPERTIES, 0))
    totals: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(PROPERTIES, 0))

    def add(self, result: dict[str, bool | None]) -> None:
        for name, ok in result.items():
            if ok is not None:
                self.hits[name] += int(ok)
                self.totals[name] += 1

    def accuracy(self) -> dict[str, float]:
        return {k: self.hits[k] / self.totals[k] for k in PROPERTIES if self.totals[k]}

    def __str__(self) -> str:
        return "  ".join(
            f"{k} {self.hits[k]}/{self.totals[k]} ({100 * self.hits[k] / self.totals[k]:.1f}%)"
            for k in PROPERTIES
            if self.totals[k]
        )
