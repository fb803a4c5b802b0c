"""Hardening: outputs whole or not at all, torn directories refused, no silent wrong results, and
one-line errors for bad input.

Converted directories come from `presets.build_tiny_random` and from the real T5 converter run on a
Hugging Face-format directory written here without torch (`hf_t5_dir`), so nothing needs the
reference or the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from audiogen_jax import atomic, checkpoint, cli, hub, presets, sampling, t5
from audiogen_jax import audiogen as api
from audiogen_jax import generate as gen
from audiogen_jax.checkpoint import CheckpointError
from audiogen_jax.config import EncodecConfig, LMConfig, T5Config
from audiogen_jax.io import safetensors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return presets.build_tiny_random(tmp_path_factory.mktemp("tiny") / "model")


def copy_of(directory, tmp_path, name="m"):
    out = tmp_path / name
    shutil.copytree(directory, out)
    return out


def hf_t5_dir(directory, seed: int) -> str:
    """A Hugging Face-format T5 (config.json, model.safetensors, spiece.model) with random weights:
    our parameter specs mapped back to transformers' names and [out, in] layouts."""
    cfg = T5Config.tiny()
    specs = checkpoint.param_specs(lambda: t5.T5EncoderModel(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    tensors = {}
    for key, (shape, _) in specs.items():
        if key.endswith(".kernel"):
            name, shape = key[: -len(".kernel")] + ".weight", shape[::-1]
        elif key.endswith(".embedding"):
            name = key[: -len(".embedding")] + ".weight"
        else:
            name = key
        tensors[name] = rng.standard_normal(shape, dtype=np.float32)
    os.makedirs(directory, exist_ok=True)
    safetensors.save_file(os.path.join(directory, "model.safetensors"), tensors)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"model_type": "t5", **cfg.to_dict()}, f)
    presets.train_tiny_tokenizer(directory)
    return os.fspath(directory)


@pytest.fixture(scope="module")
def t5_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5src")
    a = hf_t5_dir(root / "a", seed=0)
    b = root / "b"
    shutil.copytree(a, b)  # same tokenizer, other weights
    hf_t5_dir_weights_only(b, seed=1)
    return a, os.fspath(b)


def hf_t5_dir_weights_only(directory, seed: int) -> None:
    path = os.path.join(directory, "model.safetensors")
    f = safetensors.SafetensorsFile(path)
    rng = np.random.default_rng(seed)
    tensors = {k: rng.standard_normal(f[k].shape, dtype=np.float32) for k in f}
    safetensors.save_file(path, tensors)


def sha(path) -> str:
    return checkpoint._sha256(os.fspath(path))


def leftovers(parent) -> list[str]:
    return sorted(n for n in os.listdir(parent) if ".partial-" in n)


# --------------------------------------------------------------------------------------------------
# Atomic conversion: built beside --out, swapped in whole, sealed by a manifest.


def test_convert_swaps_in_whole_and_keeps_the_previous_until_done(
    t5_sources, tmp_path, monkeypatch, capsys
):
    src_a, src_b = t5_sources
    out = tmp_path / "out"
    assert cli.main(["convert", "--t5", src_a, "--out", str(out)]) == 0
    checkpoint.check_directory(out, hashes=True)
    before = {n: sha(out / n) for n in ("t5.safetensors", "config.json", "manifest.json")}
    assert os.stat(out).st_mode & 0o777 == 0o777 & ~_umask()  # a plain mkdir's permissions

    # A conversion that fails half-way: --out is untouched while it runs and after, no temp left.
    from audiogen_jax import t5_params

    real = t5_params.convert_t5

    def fails_midway(src, tmp):
        real(src, tmp)
        assert {n: sha(out / n) for n in before} == before  # the previous one is still in place
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(t5_params, "convert_t5", fails_midway)
    assert cli.main(["convert", "--t5", src_b, "--out", str(out)]) == 1
    assert "disk full (simulated)" in capsys.readouterr().err
    assert {n: sha(out / n) for n in before} == before
    assert leftovers(tmp_path) == []
    # A temporary directory left by a killed converter is removed by the next one.
    (tmp_path / ".out.partial-deadbeef").mkdir()
    monkeypatch.setattr(t5_params, "convert_t5", real)
    assert cli.main(["convert", "--t5", src_b, "--out", str(out)]) == 0
    assert leftovers(tmp_path) == [] and sha(out / "t5.safetensors") != before["t5.safetensors"]
    checkpoint.check_directory(out, hashes=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_convert_refuses_a_busy_or_foreign_out(t5_sources, tmp_path, capsys):
    src_a, _ = t5_sources
    out = tmp_path / "out"
    out.mkdir()
    with atomic.locked(out, wait=False):
        assert cli.main(["convert", "--t5", src_a, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "being written by another process" in err and len(err.splitlines()) == 1
    (out / "notes.txt").write_text("mine")
    assert cli.main(["convert", "--t5", src_a, "--out", str(out)]) == 1
    assert "not a converted audiogen-jax directory" in capsys.readouterr().err
    assert os.listdir(out) == ["notes.txt"]


def test_two_converters_on_one_out_never_mix(t5_sources, tmp_path):
    src_a, src_b = t5_sources
    # What each conversion gives alone.
    alone = {}
    for name, src in (("a", src_a), ("b", src_b)):
        assert cli.main(["convert", "--t5", src, "--out", str(tmp_path / name)]) == 0
        alone[name] = sha(tmp_path / name / "t5.safetensors")
    out = tmp_path / "raced"
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for _ in range(2):
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "audiogen_jax.cli",
                    "convert",
                    "--t5",
                    src,
                    "--out",
                    str(out),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for src in (src_a, src_b)
        ]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        for rc, err in results:
            # Either it ran, or it was refused while the other held --out: never both half-way.
            assert rc == 0 or (rc == 1 and "being written by another process" in err), err
        assert any(rc == 0 for rc, _ in results)
        checkpoint.check_directory(out, hashes=True)
        assert sha(out / "t5.safetensors") in alone.values()
        assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# Torn directories: refused with how to convert again.


def _seal_again(directory) -> None:
    os.remove(os.path.join(directory, checkpoint.VERIFIED_FILE))
    checkpoint.write_manifest(directory)


@pytest.mark.parametrize(
    "tear, match",
    [
        (lambda d: os.remove(d / "manifest.json"), "no readable manifest.json"),
        (lambda d: (d / "manifest.json").write_text("[1, 2]"), "not an audiogen-jax manifest"),
        (lambda d: os.remove(d / "t5.safetensors"), "t5.safetensors is missing"),
        (lambda d: os.truncate(d / "lm.safetensors", 100), "lm.safetensors has 100 bytes"),
        (
            lambda d: shutil.copy(d / "t5.safetensors", d / "extra.safetensors"),
            "files not in manifest.json: extra.safetensors",
        ),
        (
            lambda d: (d / "tokenizer" / "added.json").write_text("{}"),
            "files not in manifest.json: tokenizer/added.json",
        ),
    ],
)
def test_torn_directories_are_refused(tiny_dir, tmp_path, tear, match):
    d = copy_of(tiny_dir, tmp_path)
    checkpoint.check_directory(d)  # whole
    tear(d)
    with pytest.raises(CheckpointError, match=match) as e:
        api.AudioGen.from_pretrained(str(d))
    assert "convert it again" in str(e.value)


def test_a_new_lm_beside_the_old_conditioner_is_refused(tiny_dir, tmp_path, monkeypatch):
    # The kill-after-one-file case: same sizes, other bytes. The copy has new inodes, so
    # its first load hashes every file (then records that it did: later loads only stat).
    other = presets.build_tiny_random(tmp_path / "other", seed=1)
    d = copy_of(tiny_dir, tmp_path)
    hashed = []
    real = checkpoint._sha256
    monkeypatch.setattr(checkpoint, "_sha256", lambda p: (hashed.append(p), real(p))[1])
    checkpoint.check_directory(d)
    assert len(hashed) == len(json.loads((d / "manifest.json").read_text())["files"])
    hashed.clear()
    checkpoint.check_directory(d)
    assert hashed == []  # verified before, unchanged since
    shutil.copy(os.path.join(other, "lm.safetensors"), d / "lm.safetensors")
    assert os.path.getsize(d / "lm.safetensors") == os.path.getsize(tiny_dir + "/lm.safetensors")
    with pytest.raises(CheckpointError, match="lm.safetensors does not match its sha256"):
        checkpoint.check_directory(d)
    assert [os.path.basename(p) for p in hashed] == ["lm.safetensors"]  # only the changed file
    # Sizes only (hashes=False) cannot see it; hashes=True always can.
    checkpoint.check_directory(d, hashes=False)
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        checkpoint.check_directory(d, hashes=True)


def test_non_finite_weights_are_refused_at_load(tiny_dir, tmp_path):
    d = copy_of(tiny_dir, tmp_path)
    path = os.fspath(d / "lm.safetensors")
    f = safetensors.SafetensorsFile(path)
    tensors = {k: f.read(k) for k in f}
    key = sorted(k for k in tensors if tensors[k].ndim == 2)[0]
    tensors[key] = tensors[key].copy()
    tensors[key][0, 0] = np.nan
    tensors[key][1, 0] = np.inf
    safetensors.save_file(path, tensors, f.metadata)
    _seal_again(d)  # a well-formed directory whose weights are not finite
    with pytest.raises(CheckpointError, match=f"{key} holds 2 NaN or infinite values"):
        api.AudioGen.from_pretrained(str(d))


def test_config_fields_of_the_wrong_type_are_named(tiny_dir, tmp_path, capsys, monkeypatch):
    good = LMConfig.tiny().to_dict()
    for field, value, kind in [
        ("dim", "32", "an integer"),
        ("dim", [32], "an integer"),
        ("dim", True, "an integer"),
        ("delays", [0, 1.5, 2, 3], "a list of integers"),
        ("max_duration", None, "a number"),
        ("bias_ff", 1, "true or false"),
    ]:
        with pytest.raises(ValueError, match=f"LMConfig.{field} must be {kind}"):
            LMConfig.from_dict({**good, field: value})
    with pytest.raises(ValueError, match="num_heads"):
        LMConfig.from_dict({**good, "num_heads": 0})  # was a ZeroDivisionError
    with pytest.raises(ValueError, match="EncodecConfig.ratios must be a list of integers"):
        EncodecConfig.from_dict({**EncodecConfig.tiny().to_dict(), "ratios": "842"})
    # On the command line: one line, before the model is loaded.
    d = copy_of(tiny_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["lm"]["dim"] = [32]
    (d / "config.json").write_text(json.dumps(cfg))
    _seal_again(d)
    monkeypatch.setattr(api.AudioGen, "from_pretrained", _no_loading)
    rc = cli.main(["generate", "a", "--model", str(d), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "LMConfig.dim must be an integer, got [32]" in err
    assert len(err.splitlines()) == 1


def test_encodec_shape_errors_name_the_keys():
    # A weight-norm pair whose magnitude does not fit its direction: numpy's broadcast error alone
    # ("operands could not be broadcast together") named nothing.
    from audiogen_jax.encodec import EncodecModel
    from audiogen_jax.encodec_params import ENCODEC_IGNORE, ENCODEC_RULES
    from audiogen_jax.io.errors import ConversionError
    from audiogen_jax.io.rules import plan_conversion

    cfg = EncodecConfig.tiny()
    specs = checkpoint.param_specs(lambda: EncodecModel(cfg, rngs=nnx.Rngs(0)))
    expected = {k: shape for k, (shape, _) in specs.items()}
    state = {
        "encoder.model.0.conv.conv.weight_g": np.zeros((3, 1, 1), np.float32),
        "encoder.model.0.conv.conv.weight_v": np.zeros((4, 1, 7), np.float32),
    }
    with pytest.raises(ConversionError) as e:
        plan_conversion(state, ENCODEC_RULES, expected, ENCODEC_IGNORE)
    assert re.search(r"encoder\.model\.0\.conv\.conv\.weight_g\b.*\(3,\s?1,\s?1\)", str(e.value))


def _no_loading(*args, **kwargs):
    raise AssertionError("the model was loaded")


# --------------------------------------------------------------------------------------------------
# No silent wrong results.


def test_tiny_temperatures_sample_the_argmax_and_smaller_ones_are_refused():
    logits = jax.random.normal(jax.random.key(0), (2, 4, 64)) * 30
    # Under jit, as generation runs it (dividing before the shift gave NaN from about 1e-9).
    for t in (1e-9, 1e-30, sampling.MIN_TEMPERATURE):
        params = sampling.SamplingParams(temperature=t, top_k=8)

        @jax.jit
        def pick(key, x, p=params):
            return sampling.filtered_probs(x, p), sampling.sample_next(key, x, p)

        probs, ids = pick(jax.random.key(1), logits)
        assert bool(jnp.isfinite(probs).all()), t
        np.testing.assert_array_equal(np.asarray(ids), np.asarray(jnp.argmax(logits, -1)))
    for t in (1e-39, 1e-300):
        with pytest.raises(ValueError, match="use use_sampling=False"):
            sampling.SamplingParams(temperature=t)
    sampling.SamplingParams(use_sampling=False, temperature=1e-300)  # greedy ignores it


def test_seeds_use_all_64_bits():
    data = {
        s: tuple(np.asarray(jax.random.key_data(api.seed_key(s))))
        for s in (0, 1, 2**32, 2**32 + 1, 2**63 + 1, -(2**63), 2**64 - 1)
    }
    assert len(set(data.values())) == len(data)
    assert data[0] == tuple(np.asarray(jax.random.key_data(jax.random.key(0))))  # kept
    assert data[1] == tuple(np.asarray(jax.random.key_data(jax.random.key(1))))
    # Negative seeds count modulo 2**64, as torch.manual_seed takes them.
    assert tuple(np.asarray(jax.random.key_data(api.seed_key(-1)))) == data[2**64 - 1]
    assert tuple(np.asarray(jax.random.key_data(api.seed_key(2**63)))) == data[-(2**63)]
    for bad in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[-2\*\*63, 2\*\*64\)"):
            api.seed_key(bad)


def test_absurd_amplitudes_are_refused(tiny_dir):
    from audiogen_jax.encodec import EncodecModel

    codec = EncodecModel.from_pretrained(tiny_dir)
    for peak in (1e3, 1e10, 32767.0):
        with pytest.raises(ValueError, match="float audio lies in"):
            codec.encode(np.full((1, 1, 640), peak, np.float32))


# --------------------------------------------------------------------------------------------------
# The command line: every bad argument one line, before loading; outputs never clobbered.


@pytest.mark.parametrize(
    "args, match",
    [
        (["\udcff\udcfe"], "argument 2 is not valid UTF-8"),
        (["a", "--out-dir", ""], "--out-dir is empty"),
        (["a", "--seed", str(2**64)], r"--seed must be an integer in \[-2\*\*63, 2\*\*64\)"),
        (["a", "--seed", str(-(2**63) - 1)], "--seed must be an integer"),
        (["a", "--duration", "1e9"], "give --allow-long"),
        (["a", "--extend-stride", "nan"], "--extend-stride must be a positive"),
        (["a", "--extend-stride", "0"], "--extend-stride must be a positive"),
        (["a", "--temperature", "1e-39"], "use use_sampling=False"),
        (["a", "--duration", "700", "--allow-long", "--extend-stride", "10"], "--extend-stride"),
    ],
)
def test_bad_arguments_are_one_line_before_loading(tmp_path, capsys, monkeypatch, args, match):
    monkeypatch.setattr(api.AudioGen, "from_pretrained", _no_loading)
    rc = cli.main(
        ["generate", *args, "--model", "tiny-random", "--cache-dir", str(tmp_path / "c")]
        + ([] if "--out-dir" in args else ["--out-dir", str(tmp_path / "out")])
    )
    err = capsys.readouterr().err
    assert rc == 2 and re.search(match, err), err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_existing_outputs_are_refused_before_loading(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "01_cat.wav").write_bytes(b"mine")
    monkeypatch.setattr(api.AudioGen, "from_pretrained", _no_loading)
    base = ["generate", "dog", "cat", "--model", "tiny-random", "--out-dir", str(out)]
    assert cli.main(base) == 2
    assert "01_cat.wav already exists: give --overwrite" in capsys.readouterr().err
    (out / "00_dog.wav").mkdir()
    assert cli.main([*base, "--overwrite"]) == 2  # a directory is never replaced
    assert "00_dog.wav exists and is a directory" in capsys.readouterr().err
    assert (out / "01_cat.wav").read_bytes() == b"mine"
    # --out-dir defaults to the current directory.
    monkeypatch.chdir(out)
    (out / "00_cat.wav").write_bytes(b"x")
    assert cli.main(["generate", "cat", "--model", "tiny-random"]) == 2
    assert "00_cat.wav already exists" in capsys.readouterr().err


def test_commit_files_is_all_or_none(tmp_path):
    staged = tmp_path / "staged"
    staged.mkdir()
    moves = []
    for name in ("a", "b", "c"):
        (staged / name).write_text(name)
        moves.append((str(staged / name), str(tmp_path / f"{name}.wav")))
    (tmp_path / "c.wav").write_text("another run's")  # appeared after the checks
    with pytest.raises(FileExistsError, match="c.wav already exists"):
        atomic.commit_files(moves, overwrite=False)
    assert sorted(os.listdir(tmp_path)) == ["c.wav", "staged"]  # a and b taken back
    assert (tmp_path / "c.wav").read_text() == "another run's"
    atomic.commit_files(moves, overwrite=True)
    assert [(tmp_path / f"{n}.wav").read_text() for n in "abc"] == ["a", "b", "c"]


def test_a_replaced_file_is_old_or_new_never_torn(tmp_path):
    path = tmp_path / "settings.json"
    atomic.write_json(path, {"seed": 0}, indent=1)
    with pytest.raises(RuntimeError, match="killed"):
        with atomic.replacing_file(path) as tmp, open(tmp, "w") as f:
            f.write('{"seed": ')
            raise RuntimeError("killed halfway")
    assert json.loads(path.read_text()) == {"seed": 0} and os.listdir(tmp_path) == [path.name]
    with atomic.replacing_file(path) as a, atomic.replacing_file(path) as b:
        assert a != b and os.path.dirname(a) == str(tmp_path)  # two writers, two temporaries
        for name, seed in ((a, 1), (b, 2)):
            with open(name, "w") as f:
                json.dump({"seed": seed}, f)
    assert json.loads(path.read_text()) == {"seed": 1} and os.listdir(tmp_path) == [path.name]


def test_unexpected_errors_are_one_line_and_debug_shows_them(
    tiny_dir, tmp_path, capsys, monkeypatch
):
    def broken(*args, **kwargs):
        raise KeyError("storages/0")  # e.g. a reader bug on a crafted file

    monkeypatch.setattr(api.AudioGen, "from_pretrained", broken)
    args = ["generate", "a", "--model", tiny_dir, "--out-dir", str(tmp_path / "o")]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: KeyError: 'storages/0'") and "--debug" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(KeyError):
        cli.main([*args, "--debug"])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api.AudioGen, "from_pretrained", interrupted)
    assert cli.main(args) == 130


def test_progress_bar_shows_compiling_apart_from_the_step_rate():
    with gen._progress_bar(10, "generating") as (bar, report):
        assert bar.desc == "generating (compiling)"
        time.sleep(0.3)  # compiling
        report(0)
        report(1)
        assert bar.desc == "generating" and bar.n == 2
        assert bar.format_dict["elapsed"] < 0.3  # the clock restarted at the first step


def test_offline_hub_fails_fast_with_what_to_do(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    # A host that cannot resolve (RFC 6761 .invalid) and an empty Hugging Face cache.
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for var in hub._PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    hub._probe_cache.clear()
    start = time.monotonic()
    with pytest.raises(CheckpointError) as e:
        api.AudioGen.from_pretrained(api.DEFAULT_MODEL, cache_dir=str(tmp_path / "cache"))
    elapsed = time.monotonic() - start
    message = str(e.value)
    assert elapsed < 2.0, elapsed
    assert "hub.invalid" in message and "6.86 GB" in message
    assert "--model toy" in message and "audiogen-jax convert" in message
    # The command line asks before loading anything (in a fresh process, before importing JAX).
    start = time.monotonic()
    rc = cli.main(["generate", "a", "--cache-dir", str(tmp_path / "cache"), "--out-dir", "o"])
    assert rc == 1 and time.monotonic() - start < 2.0
    err = capsys.readouterr().err
    assert err.startswith("error: could not download 'facebook/audiogen-medium'")
    assert "6.86 GB" in err and "--model toy" in err and len(err.splitlines()) == 1
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.HubUnreachable, match="HF_HUB_OFFLINE"):
        hub.download(api.DEFAULT_MODEL, api.LM_FILE)


def test_no_torch_warning_from_transformers(tiny_dir):
    code = (
        "import sys; sys.modules['torch'] = None\n"  # as on a machine without torch
        "from audiogen_jax import t5\n"
        f"print(len(t5.load_tokenizer({tiny_dir!r})))\n"
    )
    env = {**os.environ, "PYTHONPATH": REPO}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "PyTorch" not in res.stderr, res.stderr
