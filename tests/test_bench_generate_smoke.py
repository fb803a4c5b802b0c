"""Smoke test of benchmarks/bench_generate.py on the tiny configs, so the benchmark cannot rot.

It runs the script as a user does (a subprocess, from an empty work directory: random checkpoints
written in the release formats, converted by convert_weights.py, reference and audiogen-jax each in
a child process) and checks the report's structure and contents. No timing is asserted: only that
every measurement exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parity
def test_bench_generate_tiny(reference, tmp_path):
    out = tmp_path / "bench.json"
    duration = 0.2  # 10 frames at 50 Hz -> 13 decoding steps with delays [0, 1, 2, 3]
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_generate.py",
            "--tiny",
            "--duration",
            str(duration),
            "--batch",
            "1",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["bandwidth_gbs"] > 0
    got = {(r["impl"], r["dtype"]) for r in report["results"]}
    want = {(impl, dtype) for impl in ("reference", "jax") for dtype in ("float32", "bfloat16")}
    assert got == want | {("jax", "int8")}
    for r in report["results"]:
        assert r["peak_rss_gib"] > 0 and r["ru_maxrss_gib"] > 0 and r["weight_bytes_per_step"] > 0
        (run,) = r["runs"]
        assert run["batch"] == 1 and run["finite"]
        assert run["wav_shape"] == [1, 1, int(duration * 16000)]
        assert run["steps"] == 13, run
        assert run["s_per_step"] > 0 and run["total_s"] > 0 and run["floor_s"] > 0
        if r["impl"] == "jax":
            assert r["lm_dtype"] == r["dtype"]
            assert run["first_call_s"] > 0 and "compile_s" in run
    # the reference reads the cross-attention k/v weights every step; audiogen-jax does not
    by = {(r["impl"], r["dtype"]): r["weight_bytes_per_step"] for r in report["results"]}
    assert by["jax", "float32"] < by["reference", "float32"] == 2 * by["reference", "bfloat16"]
    assert by["jax", "float32"] == 2 * by["jax", "bfloat16"] == 4 * by["jax", "int8"]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 5 and "s/step" in lines[0]
