"""Time one LM decode step (S=1 against a preallocated cache) per weight dtype and kernel layout.

    python benchmarks/lm_decode_step.py [--layers 8] [--batch 2] [--cache 300] [--repeats 10]

Medium widths (D 1536, F 6144, 24 heads, V 2048, K 4) with a reduced number of layers and random
weights. Reports the median seconds per step and the weight bytes streamed per second (all weights
but the embeddings).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from audiogen_jax import lm as lm_lib
from audiogen_jax.config import LMConfig


def streamed_bytes(model: lm_lib.LMModel) -> int:
    total = 0
    for path, var in nnx.to_flat_state(nnx.state(model)):
        if path[0] != "emb":
            total += var.get_value().nbytes
    return total


def time_step(model, batch: int, cache_len: int, repeats: int) -> tuple[float, float]:
    cfg = model.config
    cond = jnp.asarray(np.random.default_rng(0).standard_normal((batch, 12, cfg.dim)), jnp.float32)
    cache = lm_lib.init_cache(model, cond, cache_len)
    seq = jnp.full((batch, cfg.n_q, 1), cfg.card, jnp.int32)
    t0 = time.perf_counter()
    logits, cache = lm_lib.step(model, seq, cache, jnp.int32(0))
    jax.block_until_ready(logits)
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        logits, cache = lm_lib.step(model, seq, cache, jnp.int32(100 + i))
        jax.block_until_ready(logits)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), compile_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--cache", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    cfg = LMConfig.medium(num_layers=args.layers)
    print(
        f"jax {jax.__version__}, {args.layers} layers, batch {args.batch}, cache {args.cache}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    for dtype, layout in [
        ("float32", "in_out"),
        ("float32", "out_in"),
        ("bfloat16", "out_in"),
        ("bfloat16", "in_out"),
    ]:
        model = lm_lib.LMModel(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.dtype(dtype), layout=layout)
        s, compile_s = time_step(model, args.batch, args.cache, args.repeats)
        gb = streamed_bytes(model) / 1e9
        print(
            f"{dtype:9s} {layout:7s}: {s * 1e3:7.1f} ms/step  {gb / s:5.1f} GB/s of weights  "
            f"(first call {compile_s:.1f} s)"
        )
        del model


if __name__ == "__main__":
    main()
