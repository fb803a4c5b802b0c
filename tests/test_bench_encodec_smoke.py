"""Smoke test of benchmarks/bench_encodec.py on the tiny config, so the benchmark cannot rot.

Runs the script as a user does (a subprocess) and checks its JSON report: every measurement present
and positive, and the codes of both sides identical. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parity
def test_bench_encodec_tiny(reference, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_encodec.py",
            "--tiny",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["codes_identical_fraction"] == 1.0  # integer outputs match exactly
    assert results["frames"] == 1000  # 1 s at the tiny codec's 8000 / 8 Hz
    for side in ("jax", "ref"):
        for op in ("encode", "decode"):
            assert results[f"{side}_{op}_s"] > 0 and results[f"{side}_{op}_cpu_s"] >= 0
    assert results["encode_ratio_jax_over_ref"] > 0 and results["decode_ratio_jax_over_ref"] > 0
    assert "encode" in proc.stdout and "decode" in proc.stdout
