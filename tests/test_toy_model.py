"""The toy AudioGen's LM stage and the shipped model: T5 trained through `train.train_step`, the
data pipeline, the one training command end to end (a few updates; interrupted and resumed to the
same bytes; refusing to resume with other settings), and the shipped weights making
the sounds their captions describe, as the checker reads them (thresholds from docs/toy.md)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
from flax import nnx

from audiogen_jax import checkpoint, cli, t5, train
from audiogen_jax.audiogen import AudioGen
from audiogen_jax.config import LMConfig, T5Config
from audiogen_jax.lm import LMModel
from audiogen_jax.toy import WEIGHTS, checker, model, quality, resume, text, world
from audiogen_jax.toy import __main__ as toy_cli

TINY_T5 = T5Config(
    vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
    relative_attention_num_buckets=8, relative_attention_max_distance=16,
)  # fmt: skip
TINY_LM = LMConfig(
    dim=16, num_heads=2, num_layers=1, n_q=4, card=8, delays=(0, 1, 2, 3), condition_dim=16
)


def _tiny_batch(B=4, T=6, L=5, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, L + 1, B)
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(3, 40, (B, L)) * mask
    codes = rng.integers(0, 8, (B, 4, T))
    return train.Batch(
        codes_BKT=jnp.asarray(codes, jnp.int32),
        text_BLC=None,
        text_mask_BL=jnp.asarray(mask),
        text_ids_BL=jnp.asarray(ids, jnp.int32),
    )


def test_a_trained_t5_gets_the_gradients_of_the_loss_computed_through_it():
    lm = LMModel(TINY_LM, rngs=nnx.Rngs(0))
    cond = t5.T5Conditioner(TINY_T5, TINY_LM.dim, rngs=nnx.Rngs(1))
    batch = _tiny_batch()
    cfg = train.TrainConfig(lr=1e-2, schedule="constant", cfg_dropout=0.0, ema_decay=None)
    parts, trainable, frozen = train.split_model(lm, cond)
    assert "t5" in trainable["output_proj"]  # T5 trains, with its projection
    # The step's loss is the LM's loss on the condition the conditioner computes outside it.
    expected, _ = train.lm_loss(lm, batch.codes_BKT, cond(batch.text_ids_BL, batch.text_mask_BL))
    state = train.init_state(cfg, trainable, 0)
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = train.train_step(state, frozen, batch, parts, cfg)
    np.testing.assert_allclose(float(metrics["ce"]), float(expected), rtol=1e-5)
    shared = lambda p: np.asarray(p["output_proj"]["t5"]["shared"]["embedding"])  # noqa: E731
    moved = np.abs(shared(state.params) - shared(before)).max(axis=1)
    used = np.unique(np.asarray(batch.text_ids_BL)[np.asarray(batch.text_mask_BL) == 1])
    assert np.all(moved[used] > 0)  # every token of the batch got a gradient
    # A null-condition batch (dropout) sends no gradient into T5: only weight decay moves it.
    cfg_null = dataclasses.replace(cfg, cfg_dropout=1.0, weight_decay=0.0)
    state = train.init_state(cfg_null, trainable, 0)
    state, metrics = train.train_step(state, frozen, batch, parts, cfg_null)
    assert bool(metrics["dropped"])
    np.testing.assert_array_equal(shared(state.params), shared(before))


def test_a_batch_with_neither_states_nor_ids_is_refused():
    lm = LMModel(TINY_LM, rngs=nnx.Rngs(0))
    cond = t5.T5Conditioner(TINY_T5, TINY_LM.dim, rngs=nnx.Rngs(1))
    parts, trainable, frozen = train.split_model(lm, cond)
    cfg = train.TrainConfig(lr=1e-3)
    bad = dataclasses.replace(_tiny_batch(), text_ids_BL=None)
    with pytest.raises(ValueError, match="batch mismatch"):
        train.train_step(train.init_state(cfg, trainable, 0), frozen, bad, parts, cfg)


def test_batches_are_pure_functions_of_the_step_half_of_one_caption_length():
    lengths = np.random.default_rng(0).integers(3, 9, 400)
    batches = [model.batch_indices(0, n, 8, lengths) for n in range(200)]
    np.testing.assert_array_equal(batches[7], model.batch_indices(0, 7, 8, lengths))
    same = [len(set(lengths[b])) == 1 for b in batches]
    assert 0.35 < np.mean(same) < 0.65  # SAME_LENGTH = 0.5 (mixed batches are rarely uniform)
    ids = np.array([[5, 6, 1, 0, 0, 0, 0], [5, 6, 7, 8, 9, 10, 1], [5, 6, 7, 8, 1, 0, 0]])
    data = model.Dataset(np.zeros((3, 4, 75), np.int16), ids, np.array([3, 7, 5]), ("a", "b", "c"))
    b = model.make_batch(data, np.array([0, 2]))
    assert b.text_ids_BL.shape == (2, 5)  # padded to the longest, as generation pads
    np.testing.assert_array_equal(b.text_mask_BL.sum(axis=1), [3, 5])
    np.testing.assert_array_equal(b.text_ids_BL, ids[[0, 2], :5])


def test_the_toy_configs_fit_the_codec_and_the_size_budget():
    from audiogen_jax.toy import codec as toy_codec

    cfg = model.TOY_LM
    assert (cfg.n_q, cfg.card) == (toy_codec.TOY_CODEC.n_q, toy_codec.TOY_CODEC.bins)
    assert cfg.condition_dim == text.TOY_T5.d_model and model.FRAMES == 75
    total = sum(os.path.getsize(os.path.join(WEIGHTS, f)) for f in os.listdir(WEIGHTS))
    total += os.path.getsize(os.path.join(WEIGHTS, checkpoint.TOKENIZER_DIR, "spiece.model"))
    assert total < 10_000_000


def test_the_training_command_writes_a_converted_directory_that_generates(tmp_path, capsys):
    """The one command, shortened: the tokenizer, the shipped codec reused, 64 clips encoded,
    3 LM updates; the directory loads like any other and generates."""
    out = tmp_path / "toy"
    log = tmp_path / "log.jsonl"
    argv = ["train", "--out", str(out), "--codec", WEIGHTS, "--lm-steps", "3", "--clips", "64"]
    assert toy_cli.main([*argv, "--log", str(log), "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report) >= {"encode", "lm", "total", "lm_loss"}
    assert checkpoint.is_complete(out)
    assert [json.loads(line)["stage"] for line in log.read_text().splitlines()] == ["lm"] * 2
    m = AudioGen.from_pretrained(str(out))
    assert m.sample_rate == world.SAMPLE_RATE and m.duration == world.DURATION
    wav = m.generate(["a click"], seed=0)
    assert wav.shape == (1, 1, int(world.DURATION * world.SAMPLE_RATE))


def _files(directory) -> dict[str, bytes]:
    """Every file's bytes, but the verification stamp's (mtimes and inodes of this copy)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in directory.rglob("*")
        if p.is_file() and p.name != checkpoint.VERIFIED_FILE
    }


def test_an_interrupted_training_command_resumes_to_the_same_bytes(tmp_path, capsys, monkeypatch):
    """Ctrl-C after LM update 1 of 3 (a real SIGINT, sent from inside the update): the update is
    finished and checkpointed, status 130, DIR not written; a rerun with other settings is refused
    in one line; --restart discards the work; the same command then resumes, and every file of DIR
    equals an uninterrupted run's byte for byte (the EMA, the dropout coins and the batches
    included). Same clips, seed and steps as the test above, so the compiled steps are shared."""

    def argv(out, steps=3):
        return ["train", "--out", str(out), "--codec", WEIGHTS, "--lm-steps", str(steps),
                "--clips", "64", "--no-progress"]  # fmt: skip

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    work = tmp_path / f"parts{resume.SUFFIX}"
    assert toy_cli.main(argv(whole)) == 0
    capsys.readouterr()

    step = train.train_step

    def interrupt_at(k):
        def train_step(state, *rest):
            new_state, metrics = step(state, *rest)
            if int(new_state.step) == k:  # pressed while update k runs
                os.kill(os.getpid(), signal.SIGINT)
            return new_state, metrics

        return train_step

    # A run of 2 updates, stopped after the first; then the 3-update command finds it.
    monkeypatch.setattr(train, "train_step", interrupt_at(1))
    assert toy_cli.main(argv(parts, steps=2)) == 130
    assert "interrupted: LM update 1 is checkpointed in" in capsys.readouterr().err
    assert toy_cli.main(argv(parts)) == 2
    (line,) = [e for e in capsys.readouterr().err.splitlines() if e.startswith("error:")]
    assert "lm_steps 2 there, 3 now" in line and "--restart" in line, line
    assert not parts.exists() and (work / resume.SETTINGS_FILE).is_file()

    # --restart: a 3-update run, stopped after update 2 and resumed from there.
    monkeypatch.setattr(train, "train_step", interrupt_at(2))
    assert toy_cli.main([*argv(parts), "--restart"]) == 130
    assert "LM update 2 is checkpointed" in capsys.readouterr().err
    monkeypatch.setattr(train, "train_step", step)
    log = tmp_path / "log.jsonl"
    assert toy_cli.main([*argv(parts), "--log", str(log)]) == 0
    captured = capsys.readouterr()
    assert "resuming" in captured.err and "the LM stage at update 2" in captured.err
    assert json.loads(captured.out.splitlines()[-1])["resumed_from"] == "the LM stage at update 2"
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [3]
    assert not work.exists() and checkpoint.is_complete(parts)
    expected, got = _files(whole), _files(parts)
    assert sorted(got) == sorted(expected)
    for name, content in expected.items():
        assert got[name] == content, name


def test_the_toy_command_refuses_bad_settings(capsys):
    with pytest.raises(SystemExit):
        toy_cli.main(["train", "--out", "x", "--lm-steps", "0"])
    assert "--lm-steps must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        toy_cli.main(["train", "--out", "x", "--clips", "8"])
    assert "--clips must be at least the batch size" in capsys.readouterr().err


def test_the_quality_captions_cover_every_scene_once_held_out_last():
    pairs = quality.captions()
    assert len(pairs) == len(world.ALL_SCENES) >= 50
    assert [s for _, s in pairs[-5:]] == list(world.HELD_OUT)
    assert {s for _, s in pairs} == set(world.ALL_SCENES)
    for caption, scene in pairs:
        assert world.parse_caption(caption) == scene


def test_quality_per_caption_counts_the_events_of_every_clip(capsys):
    rc = toy_cli.main(["quality", "--caption", "two clicks", "--clips", "3", "--cfg", "0", "3"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [line.split("|")[1:-1] for line in out.splitlines() if "two clicks" in line]
    assert [r[1].strip() for r in rows] == ["0", "3"]
    for _, _, exact, heard in rows:
        assert exact.strip().endswith("/3")
        assert sum(int(pair.split(":")[1]) for pair in heard.split(",")) == 3
    with pytest.raises(SystemExit):
        toy_cli.main(["quality", "--caption", "a dog barks"])
    assert "unknown word 'dog'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# The shipped model.


@pytest.fixture(scope="module")
def toy():
    return AudioGen.from_pretrained("toy")


def test_the_shipped_model_loads_by_name(toy):
    assert toy.directory == WEIGHTS and toy.sample_rate == world.SAMPLE_RATE
    assert toy.lm.config == model.TOY_LM and toy.conditioner.config == text.TOY_T5


# Captions of every kind, and clips per caption; the measured rates are in docs/toy.md.
SHIPPED_CAPTIONS = (
    "a high beep repeated three times",
    "a low beep twice",
    "a rising chirp",
    "a falling chirp then a hiss",
    "two clicks",
    "a burst of noise",
)
SHIPPED_CLIPS = 4
# Over all 63 captions at CFG 3 the shipped model measured source 93.3%, count 96.4% and exact
# 88.5% with each caption generated alone, 95.2%, 98.0% and 92.9% in mixed batches as here
# (`python -m audiogen_jax.toy quality [--batching mixed]`, 252 clips, docs/toy.md); these 24 clips
# read 100% on every property. Over 24 clips the binomial standard deviation at the lower rates is
# 5, 4 and 7 points; the thresholds sit 2-2.5 deviations below them (a random-weight model, or
# guidance off, reads 10%, 40% and 1%).
SOURCE_MIN, COUNT_MIN, EXACT_MIN = 0.8, 0.85, 0.7


def test_the_shipped_model_makes_what_its_captions_say(toy):
    """CFG 3, sampling, a fixed seed: the checker reads each clip against its caption's scene.
    The thresholds sit below the rates measured over all 63 captions (docs/toy.md)."""
    captions = [c for c in SHIPPED_CAPTIONS for _ in range(SHIPPED_CLIPS)]
    toy.set_generation_params(cfg_coef=3.0)
    wav = toy.generate(captions, seed=0)
    tally = checker.Tally()
    for w, c in zip(wav[:, 0], captions, strict=True):
        tally.add(checker.score(world.parse_caption(c), checker.read(w)))
    acc = tally.accuracy()
    assert acc["source"] >= SOURCE_MIN, str(tally)
    assert acc["count"] >= COUNT_MIN, str(tally)
    assert acc["exact"] >= EXACT_MIN, str(tally)


def test_generate_command_with_the_toy_model(tmp_path, capsys):
    """The issue's example on the command line, offline: three high beeps (read right in 98 of
    100 clips and 20 of 20 at other seeds, docs/toy.md)."""
    out = tmp_path / "out"
    argv = ["generate", "a high beep repeated three times", "--model", "toy"]
    rc = cli.main([*argv, "--out-dir", str(out), "--seed", "0", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    (path,) = captured.out.split()
    wav, rate = soundfile.read(path, dtype="float32")
    assert rate == world.SAMPLE_RATE and wav.shape == (int(world.DURATION * rate),)
    heard = checker.read(wav)
    assert heard == (world.Event("beep", pitch="high"),) * 3, heard
