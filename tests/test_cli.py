"""`audiogen-jax generate` / `convert`: files of the right length and rate from the offline
tiny-random model, options, and bad input (a clear error, exit status != 0, and no output files)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from audiogen_jax import cli


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def run(cache, out_dir, *args):
    return cli.main(
        [
            "generate",
            *args,
            "--model",
            "tiny-random",
            "--out-dir",
            str(out_dir),
            "--cache-dir",
            cache,
            "--no-progress",
        ]
    )


def test_generate_writes_playable_files(cache, tmp_path, capsys):
    out = tmp_path / "out"
    rc = run(
        cache,
        out,
        "dog barking",
        "sirens of an emergency vehicle",
        "--duration",
        "1",
        "--seed",
        "0",
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "RANDOM weights" in captured.err  # tiny-random says it makes noise
    paths = captured.out.split()
    assert [os.path.basename(p) for p in paths] == [
        "00_dog_barking.wav",
        "01_sirens_of_an_emergency_vehicle.wav",
    ]
    assert sorted(os.listdir(out)) == sorted(
        os.path.basename(p) for p in paths
    )  # nothing else left
    for p in paths:
        info = soundfile.info(p)
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (
            16000,
            16000,
            1,
            "PCM_16",
        )
        wav, _ = soundfile.read(p)
        assert np.abs(wav).max() > 0
    # Same seed, same greedy-or-sampled output.
    again = tmp_path / "again"
    assert (
        run(
            cache,
            again,
            "dog barking",
            "sirens of an emergency vehicle",
            "--duration",
            "1",
            "--seed",
            "0",
        )
        == 0
    )
    first, _ = soundfile.read(paths[0])
    second, _ = soundfile.read(again / "00_dog_barking.wav")
    np.testing.assert_array_equal(first, second)


def test_continue_flac_greedy_and_progress(cache, tmp_path, capsys):
    prompt = tmp_path / "prompt.wav"
    rng = np.random.default_rng(0)
    soundfile.write(
        prompt, 0.1 * rng.standard_normal((11025, 2)), 22050
    )  # 0.5 s stereo at 22.05 kHz
    out = tmp_path / "out"
    rc = cli.main(
        [
            "generate",
            "footsteps",
            "--continue",
            str(prompt),
            "--duration",
            "1",
            "--greedy",
            "--cfg-coef",
            "2",
            "--format",
            "flac",
            "--strategy",
            "peak",
            "--model",
            "tiny-random",
            "--out-dir",
            str(out),
            "--cache-dir",
            cache,
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    # The tqdm bar: compilation shown apart from the steps, whose clock starts at the first one.
    assert "generating (compiling)" in captured.err and "generating:" in captured.err
    (path,) = captured.out.split()
    info = soundfile.info(path)
    assert path.endswith("00_footsteps.flac")
    assert (info.samplerate, info.frames, info.subtype) == (16000, 16000, "PCM_24")


@pytest.mark.parametrize(
    "args, match",
    [
        ([], "at least one description"),
        (["a", "--duration", "0"], "--duration must be a positive"),
        (["a", "--duration", "-2"], "--duration must be a positive"),
        (["a", "--duration", "nan"], "--duration must be a positive"),
        (["a", "--duration", "inf"], "--duration must be a positive"),
        (["a", "--top-k", "-1"], "top_k must be >= 0"),
        (["a", "--top-p", "1.5"], r"top_p must be in \[0, 1\]"),
        (["a", "--top-p", "-0.5"], r"top_p must be in \[0, 1\]"),
        (["a", "--temperature", "0"], "temperature must be > 0"),
        (["a", "--cfg-coef", "nan"], "cfg_coef must be finite"),
        (["  "], "description 1 is empty"),
        (["a", "--continue", "/nonexistent.wav"], "no such file"),
    ],
)
def test_bad_arguments_fail_before_loading(cache, tmp_path, capsys, args, match):
    out = tmp_path / "out"
    assert run(cache, out, *args) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, match",
    [
        (["a", "--top-k", "33", "--duration", "1"], "top_k=33 exceeds the codebook size 32"),
        (["a", "--duration", "0.2", "--continue", "PROMPT"], "shorter than the duration"),
        (["a", "--duration", "1", "--continue", "PROMPT3"], "3 channels"),
        (["a", "--duration", "1", "--continue", "NOTAUDIO"], "not a readable audio file"),
        (["a", "--extend-stride", "10", "--duration", "12"], "--extend-stride must be in"),
    ],
)
def test_model_dependent_arguments_fail_before_loading(
    cache, tmp_path, capsys, monkeypatch, args, match
):
    # The model's config is read without loading it (tiny codebooks hold 32 codes; 10 s window).
    from audiogen_jax.audiogen import AudioGen

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(AudioGen, "from_pretrained", no_loading)
    rng = np.random.default_rng(0)
    soundfile.write(tmp_path / "p.wav", 0.1 * rng.standard_normal(8000), 16000)
    soundfile.write(tmp_path / "p3.wav", 0.1 * rng.standard_normal((4000, 3)), 16000)
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    subs = {"PROMPT": "p.wav", "PROMPT3": "p3.wav", "NOTAUDIO": "bad.wav"}
    args = [str(tmp_path / subs[a]) if a in subs else a for a in args]
    out = tmp_path / "out"
    assert run(cache, out, *args) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_unwritable_output_directory(cache, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert run(cache, blocker, "a") == 2
    assert "not a directory" in capsys.readouterr().err
    assert run(cache, blocker / "sub", "a") == 2
    assert "cannot be created" in capsys.readouterr().err


def test_missing_and_corrupt_checkpoints(tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["generate", "a", "--model", str(tmp_path / "missing"), "--out-dir", str(out)])
    assert rc == 1 and "neither a converted directory" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    rc = cli.main(["generate", "a", "--model", str(tmp_path / "bad"), "--out-dir", str(out)])
    assert rc == 1 and "error:" in capsys.readouterr().err
    assert not out.exists()


def test_console_script_help_and_version(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "audiogen-jax")
    res = subprocess.run([exe, "generate", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--continue" in res.stdout and "tiny-random" in res.stdout
    # Examples laid out as examples: one command per line, under "examples:".
    examples = res.stdout.split("examples:\n", 1)[1].splitlines()
    assert examples[1].startswith("  audiogen-jax generate ")
    res = subprocess.run([exe], capture_output=True, text=True)
    assert res.returncode == 2 and "usage" in res.stderr
    for flag in ("--help", "-h"):
        res = subprocess.run([exe, flag], capture_output=True, text=True)
        assert res.returncode == 0 and res.stderr == ""
        for command in ("generate", "convert", "train"):  # each with an example
            assert re.search(rf"(?m)^  {command} .*\n.*e\.g\. audiogen-jax {command} ", res.stdout)
    res = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and re.fullmatch(r"audiogen-jax \d+\.\d+\.\d+\n", res.stdout)


@pytest.mark.parametrize("command", ["convert", "train"])
def test_command_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    lines = out.split("examples:\n", 1)[1].splitlines()
    assert sum(line.startswith(f"  audiogen-jax {command} ") for line in lines) >= 2


def test_convert_usage(tmp_path, capsys):
    assert cli.main(["convert", "--out", str(tmp_path / "x")]) == 2
    assert "nothing to convert" in capsys.readouterr().err
    assert (
        cli.main(["convert", "--lm", str(tmp_path / "none.bin"), "--out", str(tmp_path / "x")]) == 2
    )
    assert "none.bin: no such file" in capsys.readouterr().err
    assert cli.main(["convert", "--lm", str(tmp_path / "none.bin"), "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
