"""Smoke test of benchmarks/bench_startup.py on the tiny configs, so the benchmark cannot rot.

It runs the script as a user does (a subprocess from an empty work directory: random checkpoints in
the release formats, converted, then audiogen-jax's first and second invocation and the reference,
each in its own process) and checks the report. No timing is asserted; what is checked besides the
structure is what JAX's own events say: the first invocation compiles with an empty cache, every
compile request of the second is served by the persistent cache and the model's programs are read
back from `program_cache.py`'s files, and the new prompt (another text length in the same bucket)
compiles nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import soundfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parity
def test_bench_startup_tiny(reference, tmp_path):
    out = tmp_path / "startup.json"
    # 25 frames at 50 Hz; the reference's loudness measure fails on clips shorter than 0.4 s.
    duration = 0.5
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_startup.py", "--tiny", "--dtypes", "float32"]
        + ["--duration", str(duration), "--workdir", str(tmp_path / "work"), "--json", str(out)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    by_name = {r["name"]: r for r in report["results"]}
    assert set(by_name) == {"first-float32", "second-float32", "reference-float32"}

    first, second = by_name["first-float32"], by_name["second-float32"]
    (run1,) = first["runs"]
    run2, new = second["runs"]
    for r in (first, second):
        assert r["import_s"] > 0 and r["load_s"] > 0 and r["peak_rss_gib"] > 0
    for run in (run1, run2, new):
        assert run["finite"] and run["steps_s"] > 0 and run["total_s"] > 0
        assert run["decode_s"] >= 0 and run["write_s"] >= 0
        assert soundfile.info(run["wav"]).frames == int(duration * 16000)
    assert run1["programs"] > 0 and run1["hits"] == 0 and run1["kept"] == 0
    assert run2["programs"] > 0 and run2["hits"] == run2["programs"]
    # The set-up, decoding piece and codec programs read from program_cache.py's files.
    assert run2["kept"] == 3 and run2["programs"] < run1["programs"]
    assert new["programs"] == 0 and new["compile_s"] == 0 and new["kept"] == 0
    assert new["text_len"] != run2["text_len"] and new["text_bucket"] == run2["text_bucket"]

    ref = by_name["reference-float32"]
    assert 0 < ref["import_s"] < ref["startup_s"] < ref["total_s"] and ref["finite"]
    assert ref["steps"] == 28  # 25 frames + 3 delays
    assert soundfile.info(ref["wav"]).frames == int(duration * 16000)

    lines = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 4 and "overhead" in lines[0]
    assert sum(("target" in line) for line in proc.stdout.splitlines()) == 2
