"""`audiogen-jax train`: fine-tunes, resumes bit-identically, stops on NaN, exports a model that
loads and generates, and answers bad input with one line."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from test_data import make_folder, write_audio

from audiogen_jax import cli, train, trainer
from audiogen_jax.presets import build_tiny_random


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_random(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def sounds(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("sounds") / "d", n=4)


def args_for(data, model, out, *extra):
    return [
        str(data),
        "--model",
        str(model),
        "--out",
        str(out),
        "--segment-seconds",
        "0.2",
        "--batch-size",
        "4",
        "--warmup",
        "2",
        "--lr",
        "3e-3",
        "--no-progress",
        *extra,
    ]


def curve(run_dir) -> list[tuple]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [tuple(v for k, v in sorted(r.items()) if k != "steps_per_s") for r in rows]


def run(argv, on_step=None) -> int:
    try:
        return trainer.run(trainer.parser().parse_args(argv), on_step=on_step)
    except (trainer.TrainError, ValueError) as e:
        print(f"error: {e}")
        return 2


def test_interrupt_resume_is_bit_identical_and_export_generates(tiny_dir, sounds, tmp_path):
    from audiogen_jax.audiogen import AudioGen

    full = tmp_path / "full"
    assert run(args_for(sounds, tiny_dir, full, "--steps", "12", "--save-every", "4")) == 0

    def interrupt(step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: handled after the current update

    part = tmp_path / "part"
    base = args_for(sounds, tiny_dir, part, "--steps", "12", "--save-every", "4")
    assert run(base, on_step=interrupt) == 130
    assert sorted(os.listdir(part / "checkpoints")) == ["4", "5"]
    assert len(curve(part)) == 5
    assert run(base + ["--resume"]) == 0

    a, b = curve(full), curve(part)
    assert len(a) == len(b) == 12 and a == b  # every loss, lr, grad norm and dropout coin
    ce = [json.loads(line)["ce"] for line in open(full / "metrics.jsonl")]
    assert ce[-1] < ce[0]
    assert os.listdir(full / "tb")
    for name in ("lm.safetensors", "conditioner.safetensors"):
        assert (full / "export" / name).read_bytes() == (part / "export" / name).read_bytes()

    model = AudioGen.from_pretrained(full / "export")
    model.set_generation_params(duration=0.2, use_sampling=False)
    wav = np.asarray(model.generate(["sound number 1"], seed=0))
    assert wav.shape == (1, 1, 3200) and np.isfinite(wav).all()
    base_model = AudioGen.from_pretrained(tiny_dir)
    assert not np.array_equal(
        np.asarray(model.lm.linears[0].kernel[...]),
        np.asarray(base_model.lm.linears[0].kernel[...]),
    )


def test_nan_stops_and_keeps_the_last_good_checkpoint(
    tiny_dir, sounds, tmp_path, monkeypatch, capsys
):
    real = train.train_step

    def poisoned(state, frozen, batch, parts, cfg):
        new, m = real(state, frozen, batch, parts, cfg)
        if int(new.step) == 3:
            m = {**m, "ce": m["ce"] * np.nan}
        return new, m

    monkeypatch.setattr(train, "train_step", poisoned)
    out = tmp_path / "nan"
    assert run(args_for(sounds, tiny_dir, out, "--steps", "6", "--save-every", "1")) == 1
    assert "loss became nan at update 3" in capsys.readouterr().err
    assert sorted(os.listdir(out / "checkpoints")) == ["1", "2"]
    assert not os.path.exists(out / "export")


def test_lora_bf16_run_exports(tiny_dir, sounds, tmp_path):
    from audiogen_jax.audiogen import AudioGen

    out = tmp_path / "lora"
    argv = args_for(
        sounds, tiny_dir, out, "--steps", "3", "--lora-rank", "4", "--dtype", "bfloat16"
    )
    assert run(argv) == 0
    model = AudioGen.from_pretrained(out / "export")
    assert str(model.lm.dtype) == "bfloat16"
    model.set_generation_params(duration=0.2, use_sampling=False)
    assert np.isfinite(np.asarray(model.generate(["wind"], seed=0))).all()


def test_bad_input_is_one_line(tiny_dir, sounds, tmp_path, capsys):
    def err(argv):
        assert cli.main(["train", *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        return lines[-1]

    (tmp_path / "empty").mkdir()
    assert "no audio files" in err(args_for(tmp_path / "empty", tiny_dir, tmp_path / "r0"))
    assert "larger than the dataset (14 segments" in err(
        args_for(sounds, tiny_dir, tmp_path / "r1", "--batch-size", "64")
    )
    assert "outside the model's window (0, 10]" in err(
        args_for(sounds, tiny_dir, tmp_path / "r2", "--segment-seconds", "20")
    )
    assert "not divisible by --accumulate 3" in err(
        args_for(sounds, tiny_dir, tmp_path / "r3", "--accumulate", "3")
    )
    assert "holds no run" in err(args_for(sounds, tiny_dir, tmp_path / "r4", "--resume"))

    out = tmp_path / "r5"
    assert run(args_for(sounds, tiny_dir, out, "--steps", "1")) == 0
    assert "already holds a run" in err(args_for(sounds, tiny_dir, out, "--steps", "2"))
    other = build_tiny_random(tmp_path / "other", seed=1)
    assert "trained from another model" in err(
        args_for(sounds, other, out, "--steps", "2", "--resume")
    )
    assert "other settings (batch_size 4 -> 2)" in err(
        args_for(sounds, tiny_dir, out, "--steps", "2", "--resume", "--batch-size", "2")
    )

    # audio without a caption, an unreadable file: reported skips, the run goes on
    mixed = make_folder(tmp_path / "mixed", n=2)
    write_audio(mixed / "nocap.wav", 0.5)
    (mixed / "bad.wav").write_bytes(b"junk")
    (mixed / "bad.txt").write_text("junk")
    assert run(args_for(mixed, tiny_dir, tmp_path / "r6", "--steps", "1", "--batch-size", "2")) == 0
    text = capsys.readouterr().err
    assert "skipped" in text and "nocap.wav" in text and "bad.wav" in text
