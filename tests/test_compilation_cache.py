"""The warm start: a second CLI run traces none of the model's programs and compiles nothing.

Each run is a fresh Python process running `audiogen-jax generate` on tiny-random (progress bar
on, as by default). The evidence is JAX's own: its monitoring events for every trace
(`/jax/core/compile/jaxpr_trace_duration`, with the function's name) and compile request
(`/jax/core/compile/backend_compile_duration`, recorded for a cache hit as for a compilation),
cache hit and cache miss, and `program_cache.py`'s hits and misses, counted in the child and
written to a file at exit; and the entries in the cache directory. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

from audiogen_jax import cli, compilation_cache, program_cache

# The child: count JAX's compile events while the CLI runs, write them out at exit.
_CHILD = """
import atexit, collections, json, sys
import jax
counts = collections.Counter()
def duration(event, seconds, **kw):
    counts.update([event])
    if event == "/jax/core/compile/jaxpr_trace_duration":
        counts.update(["traced:" + kw.get("fun_name", "")])
jax.monitoring.register_event_listener(lambda event, **kw: counts.update([event]))
jax.monitoring.register_event_duration_secs_listener(duration)
atexit.register(lambda: json.dump(counts, open(sys.argv[1], "w")))
from audiogen_jax.cli import main
sys.exit(main(sys.argv[2:]))
"""
COMPILE = "/jax/core/compile/backend_compile_duration"
HIT = "/jax/compilation_cache/cache_hits"
MISS = "/jax/compilation_cache/cache_misses"
# The model's programs, which program_cache.py keeps: the set-up, the decoding piece, the codec.
MODEL_PROGRAMS = ("_start_program", "_decode_program", "_decode_jit")


def _generate(tmp_path, name: str, env_cache: str | None, *extra: str) -> tuple[dict, np.ndarray]:
    """Runs the CLI in a new process; returns JAX's event counts and the audio written."""
    env = dict(os.environ, AUDIOGEN_JAX_CACHE=str(tmp_path / "root"))
    env.pop(compilation_cache.ENV, None)  # conftest turns the cache off for in-process tests
    if env_cache is not None:
        env[compilation_cache.ENV] = env_cache
    out_dir, events = tmp_path / name, tmp_path / f"{name}.json"
    argv = ["generate", "dog barking", "--model", "tiny-random", "--duration", "1.2"]
    argv += ["--seed", "0", "--out-dir", str(out_dir), *extra]
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(events), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wav_file,) = out_dir.iterdir()
    with open(events) as f:
        return json.load(f), soundfile.read(wav_file)[0]


def _entries(directory) -> set[str]:
    return set(os.listdir(directory)) if os.path.isdir(directory) else set()


def test_a_second_cli_run_compiles_nothing(tmp_path):
    xla = tmp_path / "root" / compilation_cache.SUBDIR  # the default: <cache root>/xla
    kept = xla / program_cache.SUBDIR
    first, wav1 = _generate(tmp_path, "first", None)
    written, kept_written = _entries(xla), _entries(kept)
    assert first.get(MISS, 0) > 0 and first.get(HIT, 0) == 0
    # Every program compiled was written (no Python callback in any of them, progress included);
    # the model's were compiled with JAX's cache off (program_cache.py says why).
    assert len(written) >= first[MISS] and first[COMPILE] == first[MISS] + len(MODEL_PROGRAMS)
    # The model's programs were traced, compiled and kept, one file each.
    assert all(first.get(f"traced:{name}", 0) == 1 for name in MODEL_PROGRAMS), first
    assert first[program_cache.MISS] == len(kept_written) == len(MODEL_PROGRAMS)
    assert first.get(program_cache.HIT, 0) == 0

    second, wav2 = _generate(tmp_path, "second", None)
    assert second.get(MISS, 0) == 0, second
    assert second[HIT] == second[COMPILE] > 0  # every compile request was a cache hit
    # ... and none was the model's: its programs were read back, not traced.
    assert not any(second.get(f"traced:{name}") for name in MODEL_PROGRAMS), second
    assert second[program_cache.HIT] == len(MODEL_PROGRAMS)
    assert second.get(program_cache.MISS, 0) == 0
    assert _entries(xla) == written and _entries(kept) == kept_written  # nothing new to write
    np.testing.assert_array_equal(wav1, wav2)

    # Turned off, nothing is read or written; moved, it goes where the variable says. The plain
    # jit programs give the same audio as the kept executables.
    off, wav_off = _generate(tmp_path, "off", str(tmp_path / "moved"), "--no-compilation-cache")
    assert off.get(HIT, 0) == off.get(MISS, 0) == 0 and off[COMPILE] > 0
    assert off.get(program_cache.HIT, 0) == off.get(program_cache.MISS, 0) == 0
    assert all(off.get(f"traced:{name}", 0) == 1 for name in MODEL_PROGRAMS), off
    assert not (tmp_path / "moved").exists() and _entries(xla) == written
    np.testing.assert_array_equal(wav1, wav_off)

    # The kept programs gone while JAX's cache holds the same programs (as after an edit of the
    # package): compiled afresh and kept again, and the files run when read back. (Copies of the
    # executables JAX's cache hands back failed when run: "Function wrapped_iota not found".)
    shutil.rmtree(kept)
    again, wav_again = _generate(tmp_path, "again", None)
    assert again[program_cache.MISS] == len(MODEL_PROGRAMS) and _entries(kept) == kept_written
    reread, wav_reread = _generate(tmp_path, "reread", None)
    assert reread[program_cache.HIT] == len(MODEL_PROGRAMS)
    np.testing.assert_array_equal(wav1, wav_again)
    np.testing.assert_array_equal(wav1, wav_reread)


def _kept_decode(monkeypatch, directory) -> tuple[np.ndarray, list[str]]:
    """A tiny codec's decode through program_cache as in a new process, kept under `directory`
    (None: the compilation cache off); JAX's own persistent cache stays off in this process.
    Returns the samples and program_cache's events ("hits" read back, "misses" compiled)."""
    import jax
    from flax import nnx

    from audiogen_jax.config import EncodecConfig
    from audiogen_jax.encodec import EncodecModel

    where = None if directory is None else str(directory)
    monkeypatch.setattr(program_cache.compilation_cache, "directory", lambda: where)
    monkeypatch.setattr(program_cache, "_loaded", {})
    events = []

    def listen(event, **kwargs):
        if event in (program_cache.HIT, program_cache.MISS):
            events.append(event.rsplit("/", 1)[-1])

    jax.monitoring.register_event_listener(listen)
    try:
        model = EncodecModel(EncodecConfig.tiny(), rngs=nnx.Rngs(0))
        codes = np.arange(2 * model.n_q * 7).reshape(2, model.n_q, 7) % model.cardinality
        wav = np.asarray(model.decode(codes))
    finally:
        jax.monitoring.unregister_event_listener(listen)
    return wav, events


def test_kept_programs_are_keyed_on_the_source_and_survive_torn_files(monkeypatch, tmp_path):
    kept = tmp_path / program_cache.SUBDIR
    wav, events = _kept_decode(monkeypatch, tmp_path)
    assert events == ["misses"] and len(_entries(kept)) == 1
    (name,) = _entries(kept)
    wav_again, events = _kept_decode(monkeypatch, tmp_path)
    assert events == ["hits"] and _entries(kept) == {name}  # read back, nothing new written
    np.testing.assert_array_equal(wav, wav_again)

    # The compilation cache off: the plain jit program, the same samples, nothing written.
    wav_off, events = _kept_decode(monkeypatch, None)
    assert events == [] and program_cache._loaded == {} and _entries(kept) == {name}
    np.testing.assert_array_equal(wav, wav_off)

    # Another source (an edited package) never meets the old entry, and its write removes it
    # (an entry of another install is never read again); so does the way back.
    real_tag = program_cache.install_tag()
    monkeypatch.setattr(program_cache, "install_tag", lambda: "0123456789ab")
    monkeypatch.setattr(program_cache, "source_hash", lambda: "edited")
    wav_edited, events = _kept_decode(monkeypatch, tmp_path)
    (edited,) = _entries(kept)
    assert events == ["misses"] and edited != name and "-0123456789ab-" in edited
    np.testing.assert_array_equal(wav, wav_edited)
    monkeypatch.undo()  # the real sources again (and _kept_decode patches the rest anew)
    assert program_cache.install_tag() == real_tag
    assert _kept_decode(monkeypatch, tmp_path)[1] == ["misses"] and _entries(kept) == {name}

    # A killed writer's temporary is removed by the next write once it is an hour old.
    old, fresh = kept / f".{name}.partial-old", kept / f".{name}.partial-fresh"
    old.write_bytes(b"torn")
    fresh.write_bytes(b"being written")
    os.utime(old, (0, time.time() - program_cache.STALE_SECONDS - 60))

    # A torn file is compiled again and replaced, atomically (no partial file left behind).
    path = kept / name
    path.write_bytes(path.read_bytes()[:100])
    wav_torn, events = _kept_decode(monkeypatch, tmp_path)
    assert events == ["misses"] and path.stat().st_size > 100
    np.testing.assert_array_equal(wav, wav_torn)
    assert [n for n in _entries(kept) if n.startswith(".")] == [fresh.name]
    fresh.unlink()
    assert _kept_decode(monkeypatch, tmp_path)[1] == ["hits"]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--compilation-cache", "c", "--no-compilation-cache"], "not both"),
        (["--compilation-cache", __file__], "is not a directory"),
    ],
)
def test_bad_cache_options(tmp_path, capsys, extra, match):
    argv = ["dog", "--model", "tiny-random", "--out-dir", str(tmp_path / "o"), *extra]
    assert cli.generate_main(argv) == 2
    assert match in capsys.readouterr().err


def _file_mappings(path) -> list[tuple[int, int]]:
    """The address ranges at which this process maps `path` (/proc/self/maps)."""
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == str(path):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((lo, hi))
    return ranges


@pytest.mark.parametrize(
    "dtype, load", [("float32", None), ("bfloat16", None), ("float32", "int8")]
)
def test_loading_maps_or_reads_each_tensor_once_and_compiles_nothing(tmp_path, dtype, load):
    # Tensors held as stored are the file's own pages (mapped, used in place); the others (bf16
    # kernels, held transposed; int8 kernels and their scales) are read once into aligned buffers
    # the CPU device adopts as they are, then laid out (or quantized) once. Loading compiles
    # nothing but those layout programs.
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from audiogen_jax.config import LMConfig
    from audiogen_jax.io import safetensors
    from audiogen_jax.lm import LMModel

    LMModel(LMConfig.tiny(), rngs=nnx.Rngs(0), param_dtype=jnp.dtype(dtype)).save_pretrained(
        tmp_path
    )
    path = (tmp_path / "lm.safetensors").resolve()
    f = safetensors.SafetensorsFile(path)
    for name in f:
        arr = f.read(name)
        assert arr.ctypes.data % 64 == 0
        assert jax.device_put(arr).unsafe_buffer_pointer() == arr.ctypes.data, name
    compiled = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(kwargs.get("fun_name"))

    jax.clear_caches()  # an earlier test in this process may have laid out these shapes already
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        lm = LMModel.from_pretrained(tmp_path, dtype=load)
        jax.block_until_ready(jax.tree.leaves(nnx.state(lm)))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    layout = {"float32": set(), "bfloat16": {"jit(_relayout)"}}[dtype]
    assert set(compiled) == ({"jit(_quantize)"} if load else layout)
    mapped = _file_mappings(path)
    in_file = {
        ".".join(map(str, p)): any(
            lo <= v.get_value().unsafe_buffer_pointer() < hi for lo, hi in mapped
        )
        for p, v in nnx.to_flat_state(nnx.state(lm))
    }
    made = {k for k in in_file if k.endswith(".kernel") and (dtype == "bfloat16" or load)}
    made |= {k for k in in_file if k.endswith(".kernel_scale")}
    assert {k for k, inside in in_file.items() if not inside} == made
