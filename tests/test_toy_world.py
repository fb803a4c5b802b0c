"""The toy sound world: determinism, captions that parse back to their scenes, held-out scenes that
training never draws, and the physical promises of the grammar measured on the waveforms with plain
FFTs (not with the checker)."""

from __future__ import annotations

import numpy as np
import pytest

from audiogen_jax.toy import world
from audiogen_jax.toy.world import HELD_OUT, KINDS, Event, Scene

LOW, HIGH, RISE, FALL, HISS, BURST, CLICK = KINDS
SR = world.SAMPLE_RATE


def test_examples_are_a_pure_function_of_seed_split_and_index():
    a, b = world.example(3, 17), world.example(3, 17)
    assert a.caption == b.caption and a.scene == b.scene
    np.testing.assert_array_equal(a.wav, b.wav)
    # A batch is the examples themselves, whatever its start and size.
    wav_BW, examples = world.batch(3, 15, 4)
    assert wav_BW.shape == (4, int(world.DURATION * SR)) and wav_BW.dtype == np.float32
    assert examples[2].caption == a.caption
    np.testing.assert_array_equal(wav_BW[2], a.wav)
    # Another seed, index or split is another clip.
    for other in (world.example(4, 17), world.example(3, 18), world.example(3, 17, "heldout")):
        assert not np.array_equal(other.wav, a.wav)


def test_every_caption_parses_back_to_its_scene():
    for split, n in (("train", 400), ("heldout", 100)):
        for i in range(n):
            ex = world.example(0, i, split)
            assert world.parse_caption(ex.caption) == ex.scene, ex.caption


def test_training_draws_every_training_scene_and_never_a_held_out_one():
    assert len(world.ALL_SCENES) == 63 and len(set(world.ALL_SCENES)) == 63
    assert set(world.TRAIN_SCENES) == set(world.ALL_SCENES) - set(HELD_OUT)
    rng = np.random.default_rng(0)
    drawn = {world.sample_scene(rng, "train") for _ in range(3000)}
    assert drawn == set(world.TRAIN_SCENES)
    assert {world.sample_scene(rng, "heldout") for _ in range(200)} == set(HELD_OUT)


def test_held_out_scenes_combine_words_that_training_uses_apart():
    train_events = {e for s in world.TRAIN_SCENES for e in s.events}
    train_counts = {(s.count, s.is_sequence) for s in world.TRAIN_SCENES}
    for scene in HELD_OUT:
        assert set(scene.events) <= train_events
        assert (scene.count, scene.is_sequence) in train_counts


@pytest.mark.parametrize(
    "text, events",
    [
        ("a low beep then a rising chirp", (LOW, RISE)),
        ("A shrill tone, three times.", (HIGH, HIGH, HIGH)),
        ("two noise bursts", (BURST, BURST)),
        ("first a steady hiss, then a sharp click", (HISS, CLICK)),
        ("a downward sweep followed by a deep beep", (FALL, LOW)),
        ("one click", (CLICK,)),
    ],
)
def test_parse_caption_reads_hand_written_captions(text, events):
    assert world.parse_caption(text) == Scene(events)


@pytest.mark.parametrize(
    "text, message",
    [
        ("a dog barking", "unknown word 'dog'"),
        ("a high", "no sound named"),
        ("a beep", "needs pitch"),
        ("a low chirp", "a chirp has no pitch"),
        ("a click then a click", "two different sounds"),
        ("two clicks then a hiss", "two different sounds"),
        ("a click then a hiss then a beep", "one sound or 'A then B'"),
    ],
)
def test_parse_caption_rejects_what_the_grammar_lacks(text, message):
    with pytest.raises(ValueError, match=message):
        world.parse_caption(text)


def test_scene_and_event_validation():
    with pytest.raises(ValueError, match="no pitch"):
        Event("click", pitch="low")
    with pytest.raises(ValueError, match="unknown source"):
        Event("bark")
    with pytest.raises(ValueError, match="1-3 repeats"):
        Scene((LOW, HIGH, LOW))
    with pytest.raises(ValueError, match="split"):
        world.example(0, 0, "test")


def _single(event: Event, seed: int) -> np.ndarray:
    return world.render(Scene((event,)), np.random.default_rng(seed))


def _active(wav: np.ndarray) -> np.ndarray:
    return wav[np.flatnonzero(np.abs(wav) > 0)[0] : np.flatnonzero(np.abs(wav) > 0)[-1] + 1]


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=1 << 15))
    return float(np.argmax(spectrum) * SR / (1 << 15))


@pytest.mark.parametrize("seed", range(8))
def test_waveforms_keep_the_grammars_promises(seed):
    # Beeps: the strongest frequency is the fundamental, below 500 Hz or above 1.5 kHz.
    assert _peak_hz(_active(_single(LOW, seed))) < 500
    assert _peak_hz(_active(_single(HIGH, seed))) > 1500
    # Chirps move more than an octave, in the direction their word says (measured between their
    # first and last tenths, whose centres are 90% of the glide apart).
    for event, sign in ((RISE, 1), (FALL, -1)):
        x = _active(_single(event, seed))
        tenth = len(x) // 10
        f0, f1 = _peak_hz(x[:tenth]), _peak_hz(x[-tenth:])
        assert sign * np.log2(f1 / f0) > 1.0, (event, f0, f1)
    # Noises are broadband: at least a third of their power above 1.5 kHz.
    for event in (HISS, BURST):
        power = np.abs(np.fft.rfft(_active(_single(event, seed)))) ** 2
        freqs = np.fft.rfftfreq(len(_active(_single(event, seed))), 1 / SR)
        assert power[freqs > 1500].sum() > power.sum() / 3
    # A click is over within 5 ms; every clip stays in [-1, 1].
    assert len(_active(_single(CLICK, seed))) <= 0.005 * SR
    wav_BW, _ = world.batch(seed, 0, 20)
    assert np.abs(wav_BW).max() <= 1.0


def test_events_are_separated_by_silence_and_fit_the_clip():
    for i in range(200):
        ex = world.example(5, i)
        loud = np.flatnonzero(np.abs(ex.wav) > 0)
        runs = np.split(loud, np.flatnonzero(np.diff(loud) > 1) + 1)
        assert len(runs) == ex.scene.count, ex.caption
        gaps = [(b[0] - a[-1]) / SR for a, b in zip(runs, runs[1:], strict=False)]
        assert all(g >= world.GAP_SECONDS - 1e-3 for g in gaps)
        assert loud[-1] <= len(ex.wav) - world.TAIL_SECONDS * SR
        # Event i of n starts ONSET_SECONDS into slot i of the n equal slots of the clip.
        slot = world.DURATION / ex.scene.count
        for i, run in enumerate(runs):
            late = run[0] / SR - i * slot
            assert world.ONSET_SECONDS[0] - 1e-3 <= late <= world.ONSET_SECONDS[1] + 1e-3
