"""Smoke test of benchmarks/bench_train.py on the tiny config, so the benchmark cannot rot.

Runs the script as a user does (a subprocess, each side in its own child) and checks its JSON
report: every measurement present and positive. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parity
def test_bench_train_smoke(reference, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "benchmarks/bench_train.py", "--smoke", "--steps", "1"]
    proc = subprocess.run(
        [*cmd, "--json", str(out)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["config"]["frames"] == 100 and results["config"]["batch"] == 2
    for side in ("reference", "ours"):
        assert results[side]["s_per_step"] > 0 and results[side]["peak_rss_gib"] > 0
    assert results["time_ratio"] > 0 and results["memory_ratio"] > 0
    assert "ours / reference" in proc.stdout
