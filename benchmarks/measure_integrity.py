"""What the integrity checks cost, and how fast an offline hub request fails (docs/security.md).

    python benchmarks/measure_integrity.py            # about a minute on a 2-core machine

Prints: `check_directory` on the tiny-random directory (sizes only; sizes with a valid stamp; every
sha256), sha256 and finite-check throughput on 256 MiB buffers (with the full-size directory's time
estimated from them and the sizes in docs/hardware.md), and the wall time of
`audiogen-jax generate` against a hub host that cannot resolve, in a fresh process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from audiogen_jax import checkpoint, presets  # noqa: E402

# Converted directory sizes (docs/hardware.md), and how much of each is the bfloat16 LM.
FULL_FP32_GB = 8.93
FULL_BF16_GB = 5.25
BF16_LM_GB = 3.68  # 1.84 B LM parameters x 2 bytes


def best_of(fn, n: int = 5) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = presets.build_tiny_random(os.path.join(tmp, "tiny"))
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
        print(f"tiny-random directory: {size / 1e6:.2f} MB")
        for label, hashes in (("sizes only", False), ("stamp valid", None), ("every sha256", True)):
            dt = best_of(lambda h=hashes: checkpoint.check_directory(d, hashes=h), 20)
            print(f"  check_directory, {label}: {dt * 1e3:.2f} ms")

        path = os.path.join(tmp, "buffer.bin")
        buf = np.random.default_rng(0).standard_normal(1 << 26, dtype=np.float32)  # 256 MiB
        buf.tofile(path)
        sha = buf.nbytes / best_of(lambda: checkpoint._sha256(path), 3) / 1e9
        f32 = buf.nbytes / best_of(lambda: checkpoint._check_finite(buf, "k", "f"), 3) / 1e9
        half = buf.astype(ml_dtypes.bfloat16)
        bf16 = half.nbytes / best_of(lambda: checkpoint._check_finite(half, "k", "f"), 3) / 1e9
        print(
            f"sha256: {sha:.2f} GB/s -> first load of a copied full-size directory: "
            f"{FULL_FP32_GB / sha:.0f} s (float32), {FULL_BF16_GB / sha:.0f} s (bfloat16)"
        )
        fp32_rest = FULL_BF16_GB - BF16_LM_GB
        print(
            f"finite check: {f32:.2f} GB/s float32, {bf16:.2f} GB/s bfloat16 -> every load: "
            f"{FULL_FP32_GB / f32:.1f} s (float32), "
            f"{BF16_LM_GB / bf16 + fp32_rest / f32:.1f} s (bfloat16)"
        )

        env = {
            **os.environ,
            "HF_ENDPOINT": "https://hub.invalid",  # RFC 6761: never resolves
            "HF_HUB_CACHE": os.path.join(tmp, "hf"),
            "PYTHONPATH": REPO,
        }
        cmd = [sys.executable, "-m", "audiogen_jax.cli", "generate", "a", "--cache-dir", tmp]
        t = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        wall = time.perf_counter() - t
        print(
            f"offline `audiogen-jax generate` (fresh process): exit {res.returncode} in "
            f"{wall:.2f} s: {res.stderr.strip()[:90]}..."
        )
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
