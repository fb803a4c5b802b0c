"""Time `LMModel.from_pretrained` for each stored dtype and each dtype asked for at load time.

    .venv/bin/python benchmarks/lm_load.py [--layers 6] [--repeats 3] [--workdir /tmp/lm_load]

Medium widths (D 1536, F 6144) with a reduced number of layers and random weights, written with
`LMModel.save_pretrained` (kernels [in, out], as the converter writes them). Each load runs in a
fresh child process. A float32 model keeps the stored layout; a 16-bit one lays every kernel out
[out, in] while reading, so "bfloat16 -> bfloat16" against "float32 -> float32" per byte is the
cost of choosing the layout at load time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

DTYPES = ("float32", "bfloat16")


def write(directory: str, layers: int, dtype: str) -> None:
    import jax.numpy as jnp
    from flax import nnx

    from audiogen_jax import lm as lm_lib
    from audiogen_jax.config import LMConfig

    model = lm_lib.LMModel(LMConfig.medium(num_layers=layers), rngs=nnx.Rngs(0))
    model.astype(jnp.dtype(dtype)).save_pretrained(directory)


def load(directory: str, dtype: str) -> None:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from audiogen_jax import lm as lm_lib

    t0 = time.perf_counter()
    model = lm_lib.LMModel.from_pretrained(directory, dtype=jnp.dtype(dtype))
    jax.block_until_ready(nnx.state(model))
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/lm_load")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        load(*args.child)
        return
    print(f"| stored | loaded as | file GB | best of {args.repeats} s | GB/s | 1-min load |")
    print("|---|---|---|---|---|---|")
    for stored in DTYPES:
        directory = os.path.join(args.workdir, f"{stored}-{args.layers}")
        if not os.path.isfile(os.path.join(directory, "lm.safetensors")):
            write(directory, args.layers, stored)
        size = os.path.getsize(os.path.join(directory, "lm.safetensors")) / 1e9
        for wanted in DTYPES:
            times = []
            for _ in range(args.repeats):
                cmd = [sys.executable, __file__, "--child", directory, wanted]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
                times.append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
            best = min(times)
            print(
                f"| {stored} | {wanted} | {size:.2f} | {best:.2f} | {size / best:.2f} | "
                f"{os.getloadavg()[0]:.1f} |"
            )


if __name__ == "__main__":
    main()
