"""The toy sound world: scenes drawn from a small grammar, their captions, and their waveforms.

A scene is one to three sound events in time order. Each event is one of seven kinds:

    beep   low (f0 150-400 Hz) or high (f0 1.6-3 kHz): a steady tone, 120-250 ms
    chirp  rising or falling: an exponential glide over 1.2-2.3 octaves, 250-450 ms
    noise  a hiss (300-500 ms of steady white noise) or a burst (60-120 ms, decaying)
    click  a 4 ms broadband transient

A scene is either one kind heard once, twice or three times ("a shrill beep repeated three times")
or two different kinds one after the other ("a low beep then a rising chirp"): 7 x 3 + 7 x 6 = 63
scenes. A scene's n events fall one in each of n equal slots of the clip, so when an event
starts says which of them it is: the third of three starts about a second in, the second of two
three quarters of a second in. (With starts drawn freely, a 1.1 M-parameter LM trained for 3,000
updates overshot "three times" to four or five events in 13 of 20 seeds: counting what it has
already made is harder for it than reading the time; docs/toy.md.) Five of the scenes
(`HELD_OUT`) never occur in training, so a model's captions for them combine words it has only
seen apart.

Every caption is written from its scene by the phrase tables below, in several phrasings, and
`parse_caption` reads the scene back from the words alone, so a caption's structured properties are
always derivable from it (the tests check this for every generated caption). `Example` keeps the
scene beside the caption anyway.

The world is sampled at 8 kHz: its highest tone is a 3 kHz beep (chirps stay at or below 3 kHz
too), so a 4 kHz Nyquist band holds every tonal component; the noises and clicks are white up to
that band, which is what "broadband" means here. Every example is a pure function of
(seed, split, index), so any subset can be regenerated without the rest.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

SAMPLE_RATE = 8000  # Hz
DURATION = 1.5  # seconds per clip

LOW_HZ = (150.0, 400.0)  # low beeps' fundamental
HIGH_HZ = (1600.0, 3000.0)  # high beeps' fundamental
CHIRP_HZ = (200.0, 3000.0)  # chirps start and end inside this band
CHIRP_OCTAVES = (1.2, 2.3)  # how far a chirp glides
EVENT_SECONDS = {  # (shortest, longest) event, by kind
    "beep": (0.12, 0.25),
    "chirp": (0.25, 0.45),
    "hiss": (0.3, 0.5),
    "burst": (0.06, 0.12),
    "click": (0.004, 0.004),
}
# Timing: a scene of n events splits the clip into n equal slots and each event starts a little
# after its slot does ("three times" at about 0.05, 0.55 and 1.05 s; "twice" and "A then B" at
# about 0.05 and 0.8 s). An event is cut short where it would come within GAP_SECONDS of the next
# one or within TAIL_SECONDS of the clip's end.
ONSET_SECONDS = (0.03, 0.1)  # an event's start after its slot's start
GAP_SECONDS = 0.1  # silence between events, at least
TAIL_SECONDS = 0.05  # silence kept after the last event, at least
RMS_LEVEL = (0.08, 0.2)  # tones' RMS; noises' standard deviation at their loudest
CLICK_PEAK = (0.5, 0.9)
FADE_SECONDS = 0.005  # raised-cosine attack and release of tones, chirps and hisses

SOURCES = ("beep", "chirp", "noise", "click")
SPLITS = ("train", "heldout")


@dataclasses.dataclass(frozen=True)
class Event:
    """One sound event; only the property its source has is set."""

    source: str  # one of SOURCES
    pitch: str | None = None  # beeps: "low" or "high"
    direction: str | None = None  # chirps: "rising" or "falling"
    texture: str | None = None  # noises: "hiss" or "burst"

    def __post_init__(self):
        allowed = {
            "beep": ("pitch", ("low", "high")),
            "chirp": ("direction", ("rising", "falling")),
            "noise": ("texture", ("hiss", "burst")),
            "click": (None, ()),
        }
        if self.source not in allowed:
            raise ValueError(f"unknown source {self.source!r}; expected one of {SOURCES}")
        field, values = allowed[self.source]
        for name in ("pitch", "direction", "texture"):
            value = getattr(self, name)
            if name == field and value not in values:
                raise ValueError(f"a {self.source} needs {name} in {values}, got {value!r}")
            if name != field and value is not None:
                raise ValueError(f"a {self.source} has no {name} (got {value!r})")

    def __str__(self) -> str:
        if self.source == "noise":
            return str(self.texture)
        return " ".join(w for w in (self.pitch, self.direction, self.source) if w)


@dataclasses.dataclass(frozen=True)
class Scene:
    """Events in time order: one kind repeated 1-3 times, or two different kinds in sequence."""

    events: tuple[Event, ...]

    def __post_init__(self):
        n, kinds = len(self.events), len(set(self.events))
        if not 1 <= n <= 3 or (n == 3 and kinds != 1):
            raise ValueError(
                f"a scene is 1-3 repeats of one event or two different events, got "
                f"{[str(e) for e in self.events]}"
            )

    @property
    def count(self) -> int:
        return len(self.events)

    @property
    def is_sequence(self) -> bool:
        return len(set(self.events)) == 2

    def __str__(self) -> str:
        return " | ".join(str(e) for e in self.events)


KINDS = (
    Event("beep", pitch="low"),
    Event("beep", pitch="high"),
    Event("chirp", direction="rising"),
    Event("chirp", direction="falling"),
    Event("noise", texture="hiss"),
    Event("noise", texture="burst"),
    Event("click"),
)
_LOW, _HIGH, _RISE, _FALL, _HISS, _BURST, _CLICK = KINDS

# Scenes training never sees: two repeat counts and three orders, each made of words that do occur
# in training (low beeps, three times, falling chirps, twice, ...), only never together.
HELD_OUT = (
    Scene((_LOW, _LOW, _LOW)),  # "a low beep three times"
    Scene((_FALL, _FALL)),  # "two falling chirps"
    Scene((_HIGH, _FALL)),  # "a high beep then a falling chirp"
    Scene((_BURST, _LOW)),  # "a burst of noise then a low beep"
    Scene((_RISE, _CLICK)),  # "a rising chirp then a click"
)

# --------------------------------------------------------------------------------------------------
# Captions: phrase tables and their inverse.

# kind -> (adjectives, nouns as (singular, plural)); "" means no adjective.
_PHRASES = {
    _LOW: (("low", "low-pitched", "deep"), (("beep", "beeps"), ("tone", "tones"))),
    _HIGH: (("high", "high-pitched", "shrill"), (("beep", "beeps"), ("tone", "tones"))),
    _RISE: (("rising", "upward"), (("chirp", "chirps"), ("sweep", "sweeps"))),
    _FALL: (("falling", "downward"), (("chirp", "chirps"), ("sweep", "sweeps"))),
    _HISS: (("", "steady"), (("hiss", "hisses"),)),
    _BURST: (
        ("", "short"),
        (("burst of noise", "bursts of noise"), ("noise burst", "noise bursts")),
    ),
    _CLICK: (("", "sharp"), (("click", "clicks"),)),
}
_COUNT_TEMPLATES = {
    1: ("{a}", "{a} once", "a single {sg}", "one {sg}"),
    2: ("{a} twice", "two {pl}", "{a} repeated twice", "{a}, two times"),
    3: ("{a} three times", "three {pl}", "{a} repeated three times"),
}
_SEQUENCE_TEMPLATES = (
    "{a} then {b}",
    "{a} followed by {b}",
    "{a}, then {b}",
    "first {a}, then {b}",
    "{a} and then {b}",
)

# The parser's vocabulary: every content word the tables above can produce.
_SOURCE_WORDS = {
    "beep": "beep",
    "tone": "beep",
    "chirp": "chirp",
    "sweep": "chirp",
    "hiss": "noise",
    "burst": "noise",
    "noise": "noise",
    "click": "click",
}
_PLURALS = {
    "beeps": "beep",
    "tones": "tone",
    "chirps": "chirp",
    "sweeps": "sweep",
    "hisses": "hiss",
    "bursts": "burst",
    "clicks": "click",
}
_PROPERTY_WORDS = {
    "low": ("pitch", "low"),
    "low-pitched": ("pitch", "low"),
    "deep": ("pitch", "low"),
    "high": ("pitch", "high"),
    "high-pitched": ("pitch", "high"),
    "shrill": ("pitch", "high"),
    "rising": ("direction", "rising"),
    "upward": ("direction", "rising"),
    "falling": ("direction", "falling"),
    "downward": ("direction", "falling"),
}
_COUNT_WORDS = {"once": 1, "single": 1, "one": 1, "twice": 2, "two": 2, "three": 3}
_FILLER_WORDS = {"a", "an", "of", "times", "repeated", "steady", "short", "sharp", "first", "and"}


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _event_phrase(event: Event, rng: np.random.Generator) -> tuple[str, str]:
    """(singular, plural) noun phrase of an event, without article, in a random phrasing."""
    adjectives, nouns = _PHRASES[event]
    adjective = adjectives[rng.integers(len(adjectives))]
    singular, plural = nouns[rng.integers(len(nouns))]
    return f"{adjective} {singular}".strip(), f"{adjective} {plural}".strip()


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption of `scene` in one of its phrasings, chosen by `rng`."""
    if scene.is_sequence:
        a, b = (_article(_event_phrase(e, rng)[0]) for e in scene.events)
        template = _SEQUENCE_TEMPLATES[rng.integers(len(_SEQUENCE_TEMPLATES))]
        return template.format(a=a, b=b)
    sg, pl = _event_phrase(scene.events[0], rng)
    templates = _COUNT_TEMPLATES[scene.count]
    return templates[rng.integers(len(templates))].format(a=_article(sg), sg=sg, pl=pl)


def _parse_event(words: list[str], text: str) -> tuple[Event, int]:
    source, props, count = None, {}, 1
    for word in words:
        stem = _PLURALS.get(word, word)
        if stem in _SOURCE_WORDS:
            source = _SOURCE_WORDS[stem]
            if source == "noise":  # "hiss" names a hiss; "burst" and "noise" a burst
                props["texture"] = "hiss" if stem == "hiss" else props.get("texture", "burst")
        elif word in _PROPERTY_WORDS:
            name, value = _PROPERTY_WORDS[word]
            props[name] = value
        elif word in _COUNT_WORDS:
            count = _COUNT_WORDS[word]
        elif word not in _FILLER_WORDS:
            raise ValueError(f"cannot read caption {text!r}: unknown word {word!r}")
    if source is None:
        raise ValueError(f"cannot read caption {text!r}: no sound named in {' '.join(words)!r}")
    try:
        return Event(source, **props), count
    except ValueError as e:
        raise ValueError(f"cannot read caption {text!r}: {e}") from None


def parse_caption(text: str) -> Scene:
    """The scene a caption describes, read from its words (the inverse of `caption`).

    Raises:
      ValueError: a word outside the world's vocabulary, or a combination the grammar lacks.
    """
    words = re.findall(r"[a-z]+(?:-[a-z]+)?", text.lower())
    words = " ".join(words).replace("followed by", "then").split()
    parts, current = [], []
    for word in words:
        if word == "then":
            parts.append(current)
            current = []
        else:
            current.append(word)
    parts.append(current)
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"cannot read caption {text!r}: expected one sound or 'A then B'")
    events = [_parse_event(part, text) for part in parts]
    if len(events) == 2:
        if events[0][1] != 1 or events[1][1] != 1 or events[0][0] == events[1][0]:
            raise ValueError(f"cannot read caption {text!r}: a sequence is two different sounds")
        return Scene((events[0][0], events[1][0]))
    event, count = events[0]
    return Scene((event,) * count)


# --------------------------------------------------------------------------------------------------
# Waveforms.


def _fade(n: int, sr: int) -> np.ndarray:
    """Raised-cosine attack and release envelope of n samples."""
    m = min(int(FADE_SECONDS * sr), n // 2)
    env = np.ones(n)
    if m:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(m) / m)
        env[:m], env[n - m :] = ramp, ramp[::-1]
    return env


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _render_event(event: Event, seconds: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    n = max(int(round(seconds * sr)), 1)
    t = np.arange(n) / sr
    if event.source == "beep":
        f0 = _log_uniform(rng, *(LOW_HZ if event.pitch == "low" else HIGH_HZ))
        # Low beeps get two weak overtones for timbre; high ones stay pure (their overtones would
        # pass Nyquist).
        amps = [1.0] + (list(rng.uniform(0.0, 0.25, 2)) if event.pitch == "low" else [])
        x = sum(
            a * np.sin(2 * np.pi * (h + 1) * f0 * t + rng.uniform(0, 2 * np.pi))
            for h, a in enumerate(amps)
        )
        x = x * _fade(n, sr)
    elif event.source == "chirp":
        octaves = rng.uniform(*CHIRP_OCTAVES)
        low = _log_uniform(rng, CHIRP_HZ[0], CHIRP_HZ[1] / 2**octaves)
        f_start, f_end = (low, low * 2**octaves)[:: 1 if event.direction == "rising" else -1]
        # Exponential glide: f(t) = f_start * r**(t / T), phase = 2 pi * integral of f.
        rate = np.log(f_end / f_start) / seconds
        x = np.sin(2 * np.pi * f_start * np.expm1(rate * t) / rate) * _fade(n, sr)
    elif event.source == "noise":
        # Unit-variance noise under its envelope: a flat hiss, or a burst decaying to 5%.
        x = rng.standard_normal(n) * _fade(n, sr)
        if event.texture == "burst":
            x = x * np.exp(-3.0 * t / seconds)
        return (x * rng.uniform(*RMS_LEVEL)).astype(np.float32)
    else:  # click: a decaying noise transient, time constant 0.5 ms
        x = rng.standard_normal(n) * np.exp(-t / 0.0005)
        return (x * rng.uniform(*CLICK_PEAK) / np.abs(x).max()).astype(np.float32)
    return (x * rng.uniform(*RMS_LEVEL) / np.sqrt(np.mean(x**2))).astype(np.float32)


def _timings(scene: Scene, rng: np.random.Generator) -> list[tuple[float, float]]:
    """(start, length) of each event in seconds: one per equal slot of the clip, cut to fit."""
    slot = DURATION / scene.count
    starts = [i * slot + rng.uniform(*ONSET_SECONDS) for i in range(scene.count)]
    ends = [s - GAP_SECONDS for s in starts[1:]] + [DURATION - TAIL_SECONDS]
    names = [e.texture if e.source == "noise" else e.source for e in scene.events]
    lengths = [rng.uniform(*EVENT_SECONDS[name]) for name in names]
    return [(s, min(n, e - s)) for s, n, e in zip(starts, lengths, ends, strict=True)]


def render(scene: Scene, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The waveform of `scene`: float32 [W], W = DURATION * sample_rate, silence around events."""
    wav = np.zeros(int(round(DURATION * sample_rate)), np.float32)
    for event, (start, length) in zip(scene.events, _timings(scene, rng), strict=True):
        x = _render_event(event, length, rng, sample_rate)
        i0 = int(round(start * sample_rate))
        wav[i0 : i0 + len(x)] += x[: len(wav) - i0]
    return np.clip(wav, -1.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Sampling.

ALL_SCENES = tuple(
    [Scene((k,) * n) for k in KINDS for n in (1, 2, 3)]
    + [Scene((a, b)) for a in KINDS for b in KINDS if a != b]
)
TRAIN_SCENES = tuple(s for s in ALL_SCENES if s not in HELD_OUT)
_SINGLES = tuple(s for s in TRAIN_SCENES if not s.is_sequence)
_SEQUENCES = tuple(s for s in TRAIN_SCENES if s.is_sequence)


@dataclasses.dataclass(frozen=True)
class Example:
    """One captioned clip: what the caption says (`scene`) and what it sounds like (`wav`)."""

    caption: str
    scene: Scene
    wav: np.ndarray  # float32 [W] at SAMPLE_RATE


def sample_scene(rng: np.random.Generator, split: str = "train") -> Scene:
    """A scene of `split`: "train" (half single kinds with a count, half sequences) or "heldout"."""
    if split == "heldout":
        return HELD_OUT[rng.integers(len(HELD_OUT))]
    if split != "train":
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pool = _SEQUENCES if rng.random() < 0.5 else _SINGLES
    return pool[rng.integers(len(pool))]


def example(seed: int, index: int, split: str = "train") -> Example:
    """Example `index` of the world with this seed: a pure function of (seed, split, index)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng((seed, SPLITS.index(split), index))
    scene = sample_scene(rng, split)
    return Example(caption(scene, rng), scene, render(scene, rng))


def batch(
    seed: int, start: int, size: int, split: str = "train"
) -> tuple[np.ndarray, list[Example]]:
    """Examples start .. start + size - 1 and their waveforms stacked as float32 [size, W]."""
    examples = [example(seed, i, split) for i in range(start, start + size)]
    return np.stack([e.wav for e in examples]), examples
