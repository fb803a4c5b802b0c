"""Sharding: the mesh, the logical-axis tables, and sharded runs equal to one device.

The sharded runs need several devices, and the number of CPU devices is fixed when JAX starts, so
they run in subprocesses (`sharding_worker.py`): one process with 8 CPU devices for the meshes
data x fsdp x tensor = 8x1x1, 2x1x4, 1x8x1, 2x2x2, and two processes with 4 devices each, joined by
`jax.distributed` on localhost, for 2x2x2. This process (one device) computes the reference with
the same functions and no placement. Greedy tokens must be identical; audio, losses and parameters
after TRAIN_STEPS updates within the tolerances below (measured: docs/parity.md, "Sharding").
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sharding_worker as worker
import soundfile
from flax import nnx

from audiogen_jax import lm as lm_lib
from audiogen_jax import lora, presets, sharding, t5
from audiogen_jax.config import LMConfig, T5Config
from audiogen_jax.encodec import EncodecModel

MESHES = ("8x1x1", "2x1x4", "1x8x1", "2x2x2")
# Measured worst values (docs/parity.md, "Sharding"): audio 7.4e-8, loss 1.2e-7 (relative),
# parameters after 3 updates 9.4e-6 (max |diff| / max |ref| per tensor, worst tensor).
TOL_AUDIO = 1e-5
TOL_LOSS = 1e-5
TOL_PARAMS = 1e-5
WORKER = os.path.join(os.path.dirname(__file__), "sharding_worker.py")


def _env() -> dict[str, str]:
    """The subprocess environment: this checkout importable, no inherited device-count flag."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "device_count" not in f)
    return env


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, WORKER, *args], env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return presets.build_tiny_random(str(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def single(model_dir):
    """The single-device reference (this process sees one device)."""
    assert jax.device_count() == 1
    codes, wav, _ = worker.generation(model_dir)
    losses, state, *_ = worker.training(model_dir)
    return {"codes": codes, "wav": wav, "losses": np.asarray(losses)}, worker.flat_params(state)


@pytest.fixture(scope="module")
def eight(model_dir, tmp_path_factory):
    """One process, 8 CPU devices, every mesh (and the restore and bad-input runs)."""
    out = str(tmp_path_factory.mktemp("eight"))
    _check(
        _run([model_dir, out, "--devices", "8", "--meshes", ",".join(MESHES), "--bad-input"], 1500)
    )
    return out


def _load(out: str, mesh: str):
    arrays = dict(np.load(os.path.join(out, f"{mesh}.npz")))
    params = {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("param:")}
    with open(os.path.join(out, f"{mesh}.json")) as f:
        facts = json.load(f)
    return arrays, params, facts


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _compare(single, arrays, params, label: str) -> None:
    ref, ref_params = single
    np.testing.assert_array_equal(arrays["codes"], ref["codes"])  # greedy: token for token
    audio = float(np.abs(arrays["wav"] - ref["wav"]).max())
    loss = _rel(arrays["losses"], ref["losses"])
    assert sorted(params) == sorted(ref_params)
    errs = {k: _rel(params[k], ref_params[k]) for k in ref_params}
    worst = max(errs, key=errs.get)
    print(
        f"{label}: tokens identical, audio max|diff| {audio:.1e}, loss rel {loss:.1e}, "
        f"params rel {errs[worst]:.1e} ({worst})"
    )
    assert audio <= TOL_AUDIO and loss <= TOL_LOSS and errs[worst] <= TOL_PARAMS


def _split(mesh: dict, spec_axes) -> tuple[int, ...]:
    return tuple(mesh[a] if a else 1 for a in spec_axes)


def _assert_sharded(fact: dict, mesh: dict, axes) -> None:
    """The array is cut as `axes` (mesh axis names per dimension) says, over all 8 devices."""
    want = [n // s for n, s in zip(fact["shape"], _split(mesh, axes), strict=True)]
    assert fact["devices"] == 8 and fact["shard"] == want, (fact, axes)


# --------------------------------------------------------------------------------------------------
# One device: the mesh arguments and the tables.


def test_parse_and_make_mesh():
    assert sharding.parse_mesh("data=2,tensor=4") == {"data": 2, "tensor": 4}
    assert sharding.parse_mesh(" fsdp = -1 ") == {"fsdp": -1}
    for text, match in [
        ("data=2,model=4", "AXIS in data, fsdp, tensor"),
        ("data=two", "data=two is not an int"),
        ("data=2,data=4", "data is given twice"),
        ("", "at least one"),
    ]:
        with pytest.raises(sharding.ShardingError, match=match):
            sharding.parse_mesh(text)
    mesh = sharding.make_mesh(data=-1)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(sharding.ShardingError, match="needs 2 devices, but 1 cpu devices exist"):
        sharding.make_mesh(data=2)
    with pytest.raises(sharding.ShardingError, match="only one mesh axis may be -1"):
        sharding.make_mesh(data=-1, tensor=-1)
    with pytest.raises(sharding.ShardingError, match="positive int or -1"):
        sharding.make_mesh(tensor=0)


def _names(axes_by_path) -> set:
    return {a for axes in axes_by_path.values() for a in axes if a is not None}


def test_every_parameter_has_logical_axes():
    """Every parameter of every model variant is named (ranks match) and every name is a rule."""
    cfg = LMConfig.tiny()
    fp32 = lm_lib.LMModel(cfg, rngs=nnx.Rngs(0))
    variants = {
        "lm fp32": fp32,
        "lm bf16": fp32.astype(jnp.bfloat16),
        "lm int8": fp32.astype(jnp.int8),
        "t5 relu": nnx.eval_shape(lambda: t5.T5Conditioner(T5Config.tiny(), 32, rngs=nnx.Rngs(0))),
        "t5 gated": nnx.eval_shape(
            lambda: t5.T5Conditioner(
                T5Config(**{**T5Config.tiny().to_dict(), "feed_forward_proj": "gated-gelu"}),
                32,
                rngs=nnx.Rngs(0),
            )
        ),
        "encodec": nnx.eval_shape(
            lambda: EncodecModel(presets.tiny_random_configs()[0], rngs=nnx.Rngs(0))
        ),
    }
    with_lora = lm_lib.LMModel(cfg, rngs=nnx.Rngs(0))
    lora.add_lora(with_lora, 4, rngs=nnx.Rngs(1))
    variants["lm lora"] = with_lora
    rules = {name for name, _ in sharding.RULES}
    for what, module in variants.items():
        axes = sharding.logical_axes(module)
        shapes = {p: v.get_value().shape for p, v in nnx.to_flat_state(nnx.state(module))}
        assert sorted(axes) == sorted(shapes), what
        for path, a in axes.items():
            assert len(a) == len(shapes[path]), (what, path, a, shapes[path])
        assert _names(axes) <= rules, (what, _names(axes) - rules)
    # A 16-bit kernel is held [out, in]: its axes follow it.
    q = ("transformer", "layers", 0, "self_attn", "q_proj", "kernel")
    assert sharding.logical_axes(variants["lm fp32"])[q] == ("embed", "heads")
    assert sharding.logical_axes(variants["lm bf16"])[q] == ("heads", "embed")
    lora_axes = sharding.logical_axes(with_lora)
    assert lora_axes[q[:-1] + ("lora_b",)] == ("lora_rank", "heads")
    assert lora_axes[q[:-1] + ("base_module", "kernel")] == ("embed", "heads")
    with pytest.raises(sharding.ShardingError, match="no sharding table for Linear"):
        sharding.logical_axes(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


# --------------------------------------------------------------------------------------------------
# Several devices: equal to one device, and really sharded.


@pytest.mark.parametrize("mesh_name", MESHES)
def test_sharded_runs_equal_one_device(single, eight, mesh_name):
    arrays, params, facts = _load(eight, mesh_name)
    _compare(single, arrays, params, f"mesh {mesh_name}")
    mesh = facts["mesh"]
    # Weights: q/k/v and feed-forward [D, F] as (fsdp, tensor); output heads' V over tensor.
    _assert_sharded(facts["lm_q_kernel"], mesh, ("fsdp", "tensor"))
    _assert_sharded(facts["lm_linear1_kernel"], mesh, ("fsdp", "tensor"))
    _assert_sharded(facts["lm_head_kernel"], mesh, ("fsdp", "tensor"))
    _assert_sharded(facts["t5_q_kernel"], mesh, ("fsdp", "tensor"))
    # The KV cache inside the compiled window: only per-device pieces exist.
    program = facts["program"]
    local = program["cache_local"]
    assert local[0] * mesh["data"] * mesh["fsdp"] == program["cache_full"][0]
    assert local[1] * mesh["tensor"] == program["cache_full"][1]
    assert program["hlo_has_local_cache"] and not program["hlo_has_full_cache"], program
    # Training state: parameters, both Adam moments and the EMA cut like the parameter.
    for name in ("param", "adam_mu", "adam_nu", "ema"):
        _assert_sharded(facts["train"][name], mesh, ("fsdp", "tensor"))
    # What one device holds is what sharding.planned_bytes (docs/tpu.md's tables) computes:
    # weights exactly; the train state is four float32 copies plus its replicated counters.
    assert facts["weights_bytes_per_device"] == facts["weights_bytes_planned"]
    extra = facts["train"]["state_bytes_per_device"] - facts["train"]["state_bytes_planned"]
    assert 0 <= extra <= 64, facts["train"]
    print(
        f"mesh {mesh_name}: per device: weights {facts['weights_bytes_per_device']:,} B, train "
        f"state {facts['train']['state_bytes_per_device']:,} B; generation program arguments "
        f"{program['argument_bytes']:,} B, temporaries {program['temp_bytes']:,} B"
    )


def test_fsdp_divides_the_train_state(eight):
    """Under fsdp=8 a device holds about 1/8 of what a replicated (data=8) device holds."""
    replicated = _load(eight, "8x1x1")[2]["train"]["state_bytes_per_device"]
    fsdp = _load(eight, "1x8x1")[2]["train"]["state_bytes_per_device"]
    print(f"train state per device: data=8 {replicated:,} B, fsdp=8 {fsdp:,} B")
    assert fsdp < replicated / 6


def test_checkpoint_restores_onto_another_mesh(eight):
    """Saved from 8 devices (fsdp=8) by the trainer's orbax manager, restored onto 2 (fsdp=2)."""
    with open(os.path.join(eight, "restore.json")) as f:
        r = json.load(f)
    assert r["step"] == worker.TRAIN_STEPS and r["same_keys"] and r["max_abs_diff"] == 0.0
    assert r["param"]["devices"] == 2 and r["param"]["shard"] == [16, 128], r["param"]
    assert r["three_devices_error"] == (
        "lm.emb.0.embedding: its embed dimension (32) does not divide over the mesh axis fsdp=3 "
        "(3 pieces)"
    )


def test_bad_meshes_and_batches(eight):
    with open(os.path.join(eight, "errors.json")) as f:
        errors = json.load(f)
    want = {
        "too_many_devices": "the mesh data=16 x fsdp=1 x tensor=1 needs 16 devices, but 8 cpu "
        "devices exist",
        "rest_does_not_divide": "8 cpu devices do not split into data=3 x fsdp=1 x tensor=-1: 8 "
        "is not a multiple of 3",
        "heads": "the mesh axis tensor=8 does not divide the LM's attention heads (num_heads): 4; "
        "choose tensor from [1, 2, 4]",
        "batch": "3 descriptions make 6 rows with the null condition, which do not divide over the "
        "mesh's 8 batch devices (data x fsdp): give a multiple of 4 descriptions",
        "vocab": "linears.0.kernel: its vocab dimension (30) does not divide over the mesh axis "
        "tensor=4 (4 pieces)",
        "train_batch": "the batch (6, 4, 12): its batch dimension (6) does not divide over the "
        "mesh axis data=8 (8 pieces)",
    }
    assert errors == want


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(single, model_dir, tmp_path):
    """2 processes x 4 CPU devices (jax.distributed on 127.0.0.1), mesh 2x2x2: the multi-host
    code path, equal to one device."""
    out = str(tmp_path)
    common = [model_dir, out, "--devices", "4", "--meshes", "2x2x2", "--num-processes", "2"]
    common += ["--coordinator", f"127.0.0.1:{_free_port()}"]
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, *common, "--process-id", str(i)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-4000:]
    arrays, params, facts = _load(out, "2x2x2")
    assert math.prod(facts["mesh"].values()) == 8
    _compare(single, arrays, params, "2 processes x 4 devices, mesh 2x2x2")


# --------------------------------------------------------------------------------------------------
# The command line: --mesh on generate and train, --prompts-file.


def _cli(args: list[str], devices: int) -> subprocess.CompletedProcess:
    env = _env()
    env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [sys.executable, "-m", "audiogen_jax.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _cli_distributed(args: list[str], devices: int) -> list[subprocess.CompletedProcess]:
    """`args` run by 2 processes of `devices` CPU devices each, joined by --distributed."""
    env = _env()
    env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "audiogen_jax.cli", *args, "--distributed", f"{address},2,{i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [
        subprocess.CompletedProcess(p.args, p.returncode, out, err)
        for p, (out, err) in zip(procs, results, strict=True)
    ]


def test_cli_mesh_equals_one_device(model_dir, tmp_path):
    """`generate --prompts-file --mesh data=2,tensor=4` writes the files one device writes, to
    the last bit of 16-bit audio (one progress bar over the clips; a rerun keeps them); so does
    the same command run by 2 processes x 2 devices with --distributed (process 0 writes, one
    progress bar); and `train --mesh fsdp=4,tensor=2` follows the one-device loss curve and
    exports a model, and its run is refused, in one line, on a mesh the model cannot fit."""
    from test_data import make_folder

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("dog barking\n\nrain on a roof\nsirens\n")
    sounds = make_folder(tmp_path / "sounds", n=4)
    gen = ["generate", "--prompts-file", str(prompts), "--model", model_dir, "--greedy"]
    gen += ["--duration", "0.3", "--seed", "0", "--batch-size", "2"]
    fit = ["train", str(sounds), "--model", model_dir, "--steps", "2", "--batch-size", "4"]
    fit += ["--segment-seconds", "0.2", "--warmup", "2", "--no-progress"]
    results = {}
    for name, devices, mesh in (("one", 1, []), ("mesh", 8, ["--mesh", "data=2,tensor=4"])):
        out = tmp_path / name
        proc = _cli([*gen, *mesh, "--out-dir", str(out / "wav")], devices)
        assert proc.returncode == 0, proc.stderr[-3000:]
        files = proc.stdout.split()
        assert [os.path.basename(f) for f in files] == [
            "00_dog_barking.wav",
            "01_rain_on_a_roof.wav",
            "02_sirens.wav",
        ]
        # One progress bar over the 3 clips (it starts once; every update is out of 3).
        assert proc.stderr.count(" 0/3 [") == 1 and "clip/s" in proc.stderr, proc.stderr
        assert {total for _, total in re.findall(r"(\d+)/(\d+) \[", proc.stderr)} == {"3"}
        waves = [soundfile.read(f, dtype="int16")[0] for f in files]
        train_mesh = ["--mesh", "fsdp=4,tensor=2"] if mesh else []
        proc = _cli([*fit, *train_mesh, "--out", str(out / "run")], devices)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("mesh data=1 x fsdp=4 x tensor=2" in proc.stderr) == bool(mesh), proc.stderr
        assert os.path.isfile(out / "run" / "export" / "lm.safetensors")
        with open(out / "run" / "metrics.jsonl") as f:
            ces = [json.loads(line)["ce"] for line in f]
        results[name] = waves, ces
    # The 8-device run's checkpoint, resumed onto a mesh that cannot hold the model: one line
    # naming the dimension, before anything is restored.
    refit = _cli(
        [*fit, "--mesh", "tensor=8", "--resume", "--out", str(tmp_path / "mesh" / "run")], 8
    )
    lines = refit.stderr.strip().splitlines()
    assert refit.returncode == 2 and lines[-1].startswith("error: --mesh tensor=8: "), lines
    assert "attention heads (num_heads): 4; choose tensor from [1, 2, 4]" in lines[-1], lines
    again = _cli([*gen, "--out-dir", str(tmp_path / "one" / "wav")], 1)
    assert again.returncode == 0 and "3 clips already" in again.stderr, again.stderr[-2000:]
    first, second = _cli_distributed(
        [*gen, "--mesh", "data=2,tensor=2", "--out-dir", str(tmp_path / "two" / "wav")], 2
    )
    assert first.returncode == 0 and second.returncode == 0, (first.stderr[-3000:], second.stderr)
    # Gloo (the CPU collectives) prints its connections on stdout from C++, where the two
    # processes' lines can interleave and split ("[Gloo] Rank " and "0 is connected ..." apart);
    # the CLI prints one path per line, so the paths are the lines naming a .wav file.
    outs = [[w for w in p.stdout.split("\n") if w.endswith(".wav")] for p in (first, second)]
    files = outs[0]
    assert [os.path.basename(f) for f in files] == [
        "00_dog_barking.wav",
        "01_rain_on_a_roof.wav",
        "02_sirens.wav",
    ]
    assert outs[1] == [] and " 0/3 [" in first.stderr and " 0/3 [" not in second.stderr
    assert sorted(os.listdir(tmp_path / "two" / "wav")) == sorted(map(os.path.basename, files))
    two_wav = [soundfile.read(f, dtype="int16")[0] for f in files]
    (one_wav, one_ce), (mesh_wav, mesh_ce) = results["one"], results["mesh"]
    # Same tokens; the float audio differs by ~1e-7, which the loudness gain and 16-bit rounding
    # turn into at most one step of 1/32768 on a few samples.
    lsb = max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(one_wav, mesh_wav, strict=True))
    lsb_two = max(
        int(np.abs(a.astype(int) - b).max()) for a, b in zip(one_wav, two_wav, strict=True)
    )
    loss = _rel(mesh_ce, one_ce)
    print(
        f"CLI: 16-bit files differ by at most {lsb} LSB (mesh), {lsb_two} LSB (2 processes); "
        f"train loss curve rel {loss:.1e}"
    )
    assert lsb <= 1 and lsb_two <= 1 and len(one_ce) == 2 and loss <= TOL_LOSS


@pytest.mark.parametrize(
    "args, match",
    [
        (["x", "--mesh", "data=two"], "data=two is not an int"),
        (["x", "--mesh", "data=2"], "needs 2 devices, but 1 cpu devices exist"),
        (["x", "--prompts-file", "PROMPTS"], "takes no other descriptions"),
        (["--prompts-file", "BLANK"], "every line is blank"),
        (["--prompts-file", "MISSING"], "cannot be read"),
        (["x", "--batch-size", "2"], "--batch-size applies to --prompts-file"),
        (["x", "--distributed"], "--distributed needs --seed"),
        (["x", "--seed", "0", "--distributed", "127.0.0.1:5,2"], "expected HOST:PORT,NUM_PR"),
        (["x", "--seed", "0", "--distributed", "127.0.0.1,2,0"], "is not HOST:PORT"),
        (["x", "--seed", "0", "--distributed", "127.0.0.1:5,2,2"], "process id 2 is not in [0, 2)"),
    ],
)
def test_cli_bad_mesh_and_prompts(tmp_path, capsys, args, match):
    """One line on stderr, a failing status, no files, before any model is loaded."""
    from audiogen_jax import cli

    (tmp_path / "PROMPTS").write_text("rain\n")
    (tmp_path / "BLANK").write_text("\n  \n")
    args = [str(tmp_path / a) if a in ("PROMPTS", "BLANK", "MISSING") else a for a in args]
    out = tmp_path / "out"
    rc = cli.main(["generate", *args, "--model", "no-such-model", "--out-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and match in err[0], err
    assert not out.exists()


def test_cli_mesh_the_model_or_batch_does_not_fit(model_dir, tmp_path):
    """On 8 devices: a tensor axis that does not divide the heads, and descriptions whose rows do
    not divide over data x fsdp, are one line naming the sizes, status 2, no files."""
    out = tmp_path / "out"
    for args, match in [
        (["x", "--mesh", "tensor=8"], "does not divide the LM's attention heads (num_heads): 4"),
        (["a", "b", "c", "--mesh", "data=8"], "3 descriptions make 6 rows with the null condition"),
    ]:
        argv = ["generate", *args, "--model", model_dir, "--duration", "0.1", "--out-dir", str(out)]
        proc = _cli(argv, 8)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and match in err[-1] and err[-1].startswith("error: --mesh"), (
            err
        )
        assert not any(line.startswith("error") for line in err[:-1]), err
    assert not out.exists()


def test_train_cli_bad_mesh(tmp_path, capsys):
    from audiogen_jax import cli

    for mesh, match in [("tensor=x", "tensor=x is not an int"), ("data=4", "needs 4 devices")]:
        argv = ["train", str(tmp_path), "--model", "x", "--out", str(tmp_path / "r")]
        rc = cli.main([*argv, "--mesh", mesh])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and match in err[0], err


def test_mesh_memory_script(capsys):
    """docs/tpu.md's tables: the full fine-tuning row on one device is 20 bytes (five float32
    copies) for each of the 1,839,131,136 parameters of the LM and output_proj (docs/hardware.md's
    count), and the LM holds 1,837,556,736."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts"))
    import mesh_memory

    assert mesh_memory.main() == 0
    out = capsys.readouterr().out
    assert "LM parameters: 1,837,556,736" in out
    assert f"| 1 x 1 x 1 | 1 | {20 * 1_839_131_136 / 2**30:.2f} |" in out
