"""The checker: its accuracy on the world's own clean sounds (the bar is 98%, docs/toy.md has the
measured numbers), its readings of sounds synthesised here without the world's code, and the
semantics of `score`."""

from __future__ import annotations

import numpy as np
import pytest

from audiogen_jax.toy import checker, world
from audiogen_jax.toy.world import KINDS, Scene

LOW, HIGH, RISE, FALL, HISS, BURST, CLICK = KINDS
SR = world.SAMPLE_RATE


@pytest.mark.parametrize("split, clips", [("train", 300), ("heldout", 100)])
def test_accuracy_on_clean_world_sounds_is_at_least_98_percent(split, clips):
    tally = checker.Tally()
    for i in range(clips):
        ex = world.example(123, i, split)
        tally.add(checker.score(ex.scene, checker.read(ex.wav)))
    accuracy = tally.accuracy()
    assert set(accuracy) == set(checker.PROPERTIES)
    assert min(accuracy.values()) >= 0.98, str(tally)


def _tone(hz_start: float, hz_end: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    hz = np.geomspace(hz_start, hz_end, len(t))
    return 0.3 * np.sin(2 * np.pi * np.cumsum(hz) / SR)


def _clip(*events: np.ndarray, gap: float = 0.15) -> np.ndarray:
    silence = np.zeros(int(gap * SR))
    return np.concatenate([silence] + [x for e in events for x in (e, silence)]).astype(np.float32)


def test_reads_sounds_made_without_the_world():
    rng = np.random.default_rng(0)
    click = np.zeros(40)
    click[0], click[1] = 0.8, -0.5
    cases = [
        (_clip(_tone(250, 250, 0.2)), (LOW,)),
        (_clip(_tone(2200, 2200, 0.15), _tone(2200, 2200, 0.15)), (HIGH, HIGH)),
        (_clip(_tone(300, 1500, 0.3)), (RISE,)),
        (_clip(_tone(2500, 600, 0.3), _tone(200, 200, 0.2)), (FALL, LOW)),
        (_clip(0.1 * rng.standard_normal(int(0.4 * SR))), (HISS,)),
        (_clip(0.1 * rng.standard_normal(int(0.08 * SR)), click), (BURST, CLICK)),
        (_clip(click, click, click), (CLICK, CLICK, CLICK)),
    ]
    for wav, events in cases:
        assert checker.read(wav) == events
    assert checker.read(np.zeros(SR, np.float32)) == ()


def test_score_separates_the_properties():
    three_high = Scene((HIGH, HIGH, HIGH))
    result = checker.score(three_high, (HIGH, HIGH))
    assert result == {
        "source": True,
        "pitch": True,
        "direction": None,
        "count": False,
        "order": None,
        "exact": False,
    }
    swapped = checker.score(Scene((LOW, RISE)), (RISE, LOW))
    assert swapped["source"] and swapped["pitch"] and swapped["direction"] and swapped["count"]
    assert swapped["order"] is False and swapped["exact"] is False
    wrong_pitch = checker.score(Scene((LOW, RISE)), (HIGH, RISE))
    assert wrong_pitch["pitch"] is False and wrong_pitch["order"] is False
    assert checker.score(Scene((HISS,)), (BURST,))["source"] is True
    assert checker.score(Scene((HISS,)), ())["count"] is False


def test_tally_counts_only_applicable_properties():
    tally = checker.Tally()
    tally.add(checker.score(Scene((CLICK,)), (CLICK,)))
    tally.add(checker.score(Scene((LOW, CLICK)), (LOW, LOW)))
    assert tally.totals["pitch"] == 1 and tally.totals["order"] == 1
    assert tally.accuracy()["count"] == 1.0 and tally.accuracy()["source"] == 0.5
