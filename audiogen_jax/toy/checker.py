"""The checker: reads the toy world's properties back from a waveform, with plain signal processing.

    wav -> energy envelope -> events (loud runs split at deep dips) -> per event: click? noise?
        -> tones: pitch track -> chirp (glide >= CHIRP_MIN_OCTAVES, up or down) or beep (low / high)

It is how the toy model is graded: a generated clip is read by `read`, compared with the scene its
caption describes by `score`, and the per-property hit rates are the model's quality numbers
(source type, pitch class, sweep direction, event count, order). It knows the world's ranges (8 kHz
audio, beeps below 400 Hz or above 1.6 kHz, glides of more than an octave) but nothing about any
model. Its thresholds sit between the world's ranges, and its event finder tolerates what a codec
does to silence (a faint smear of the neighbouring sounds, 20-30 dB down, instead of zeros):

    events: runs of frames within EVENT_DB of the loudest; two runs are one event unless the
            envelope between them stays DIP_DB below the quieter run's peak for GAP_SECONDS (the
            world's gaps last >= 100 ms; through the toy codec they stay 16 dB down for >= 56 ms,
            while its chirps and beeps never dip that far for longer than 46 ms)
    length: how long an event stays within LENGTH_DB of its own peak
    click:  shorter than CLICK_SECONDS (a click lasts 4 ms; the shortest burst 60 ms)
    noise:  median spectral flatness above NOISE_FLATNESS (white noise ~0.55, a tone ~0.001);
            a hiss if longer than HISS_SECONDS (hisses >= 0.28 s, bursts <= 0.12 s)
    chirp:  the glide of the pitch track (frames within TRACK_DB of the peak; Theil-Sen line)
            exceeds CHIRP_MIN_OCTAVES (chirps glide >= 1.2)
    beep:   low if its median pitch is below PITCH_SPLIT_HZ (the geometric middle of 400 and 1600)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from audiogen_jax.toy.world import SAMPLE_RATE, Event, Scene

WINDOW_SECONDS = 0.008  # energy envelope window
HOP_SECONDS = 0.002  # energy envelope hop
EVENT_DB = 20.0
DIP_DB = 16.0
GAP_SECONDS = 0.05
LENGTH_DB = 15.0
TRACK_DB = 20.0
SUBHARMONIC_DB = 20.0
CLICK_SECONDS = 0.035
NOISE_FLATNESS = 0.35
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


def _envelope(wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int, int]:
    window, hop = int(WINDOW_SECONDS * sample_rate), int(HOP_SECONDS * sample_rate)
    return _frame_energy_db(wav, window, hop), window, hop


def find_events(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of the sound events in `wav` [W], in time order.

    Each range reaches halfway into the quiet between its event and the next, so it holds the
    event's whole envelope; `event_length` measures the event inside it.
    """
    if len(wav) < int(WINDOW_SECONDS * sample_rate):
        return []
    db, window, hop = _envelope(wav, sample_rate)
    if db.max() < -80:  # silence
        return []
    runs = [list(r) for r in _runs(db > db.max() - EVENT_DB)]
    merged = [runs[0]]
    for start, end in runs[1:]:
        prev = merged[-1]
        quieter = min(db[prev[0] : prev[1]].max(), db[start:end].max())
        quiet = _runs(db[prev[1] : start] < quieter - DIP_DB)
        if max((b - a for a, b in quiet), default=0) * hop < GAP_SECONDS * sample_rate:
            prev[1] = end
        else:
            merged.append([start, end])
    # Split the quiet between neighbours at its quietest frame.
    cuts = [0]
    for (_, end), (start, _) in zip(merged, merged[1:], strict=False):
        cuts.append(end + int(np.argmin(db[end:start])))
    cuts.append(len(db))
    return [
        (a * hop, min((b - 1) * hop + window, len(wav)))
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]


def event_length(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Seconds the envelope of `x` stays within LENGTH_DB of its loudest frame, around it."""
    db, window, hop = _envelope(x, sample_rate)
    if len(db) == 0:
        return len(x) / sample_rate
    k = int(np.argmax(db))
    inside = db > db[k] - LENGTH_DB
    first, last = k, k
    while first > 0 and inside[first - 1]:
        first -= 1
    while last < len(db) - 1 and inside[last + 1]:
        last += 1
    return ((last - first) * hop + window) / sample_rate


def _spectra(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(power [frames, bins] of Hann-windowed frames, each frame's energy in dB)."""
    if len(x) < N_FFT:
        x = np.pad(x, (0, N_FFT - len(x)))
    starts = np.arange(0, len(x) - N_FFT + 1, FFT_HOP)
    frames = x[starts[:, None] + np.arange(N_FFT)] * np.hanning(N_FFT)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    return power, 10 * np.log10(power.sum(-1) + 1e-12)


def _pitch_track(log_p: np.ndarray, band: np.ndarray, bin_hz: float) -> np.ndarray:
    """Each frame's fundamental in Hz from log power spectra [frames, bins], inside `band`.

    The strongest bin, moved down to a half or a third of its frequency when that partial is within
    SUBHARMONIC_DB of it (a codec may render a low beep's overtone louder than the beep itself),
    then refined by a parabola through the log powers around it.
    """
    rows = np.arange(len(log_p))
    k = np.argmax(np.where(band, log_p, -np.inf), axis=-1)
    lowest = int(np.flatnonzero(band)[0])
    for divisor in (2, 3):
        sub = np.round(k / divisor).astype(int)
        near = np.stack([log_p[rows, np.clip(sub + d, 0, None)] for d in (-1, 0, 1)])
        strong = (near.max(0) > log_p[rows, k] - SUBHARMONIC_DB * np.log(10) / 10) & (sub > lowest)
        k = np.where(strong, sub + near.argmax(0) - 1, k)
    k = np.clip(k, 1, log_p.shape[1] - 2)
    left, mid, right = log_p[rows, k - 1], log_p[rows, k], log_p[rows, k + 1]
    offset = 0.5 * (left - right) / np.minimum(left - 2 * mid + right, -1e-9)
    return (k + np.clip(offset, -0.5, 0.5)) * bin_hz


def _glide(t: np.ndarray, octaves: np.ndarray) -> float:
    """Octaves covered from the first to the last time of a track, along its Theil-Sen line.

    The slope is the median of the pairwise slopes, so a few frames tracked an octave off (an
    onset's smeared spectrum, an overtone) do not tilt it.
    """
    if len(t) < 2:
        return 0.0
    i, j = np.triu_indices(len(t), k=1)
    return float(np.median((octaves[j] - octaves[i]) / (t[j] - t[i])) * (t[-1] - t[0]))


def classify(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Event:
    """The kind of one event from its samples `x` [W] (a range cut by `find_events`)."""
    seconds = event_length(x, sample_rate)
    if seconds < CLICK_SECONDS:
        return Event("click")
    power, frame_db = _spectra(x)
    freqs = np.fft.rfftfreq(N_FFT, 1 / sample_rate)
    band = (freqs >= BAND_HZ[0]) & (freqs <= BAND_HZ[1])
    body = frame_db > frame_db.max() - 10  # the event's loudest part, not its fades
    p = power[body][:, band] + 1e-12
    flatness = np.exp(np.mean(np.log(p), axis=-1)) / np.mean(p, axis=-1)
    if np.median(flatness) > NOISE_FLATNESS:
        return Event("noise", texture="hiss" if seconds > HISS_SECONDS else "burst")
    # The pitch track covers every frame within TRACK_DB of the peak: a codec may render one end
    # of a glide much quieter than the other.
    loud = frame_db > frame_db.max() - TRACK_DB
    hz = _pitch_track(np.log(power[loud] + 1e-12), band, freqs[1])
    t = np.flatnonzero(loud) * FFT_HOP / sample_rate
    glide = _glide(t, np.log2(np.maximum(hz, 1.0)))
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
