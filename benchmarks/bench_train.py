"""One training update: audiogen-jax against the PyTorch reference (audiocraft), side by side.

    python benchmarks/bench_train.py                # AudioGen-medium widths, 4 layers, B 2, 2 s
    python benchmarks/bench_train.py --smoke        # tiny config (seconds)
    python benchmarks/bench_train.py --lora-full    # + full-size LoRA bf16 step (B 1, 1 s)
    python benchmarks/bench_train.py --json out.json

Each side runs in its own child process (so each peak RSS is that side's alone), fp32 on CPU, the
released recipe: loss (teacher-forced cross-entropy over the delay pattern), backward, global-norm
clip, AdamW update, scheduler step, EMA of the weights (as the solver keeps it). The reference is
audiocraft 1.3.0's `LMModel.compute_predictions` + `MusicGenSolver._compute_cross_entropy` +
`torch.nn.utils.clip_grad_norm_` + `torch.optim.AdamW` + `InverseSquareRootLRScheduler` +
`ModuleDictEMA`; ours is `train.train_step`. Both train the conditioner's `output_proj` from
random text states (T5 is frozen and outside the step on both sides). Timing: the median of
`--steps` updates after two warm-up updates (our compile time reported apart). Peak RSS:
`ru_maxrss` of the child at the end, model construction included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _shapes(cfg, batch: int, seconds: float, frame_rate: int = 50, text_len: int = 12):
    T = int(seconds * frame_rate)
    return batch, cfg.n_q, T, text_len


def _config(args):
    from audiogen_jax.config import LMConfig

    if args.smoke:
        return LMConfig.tiny()
    return LMConfig.medium(num_layers=args.layers)


def _data(cfg, batch, seconds, seed=0):
    import numpy as np

    B, K, T, L = _shapes(cfg, batch, seconds)
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, cfg.card, (B, K, T)).astype(np.int64)
    text = rng.standard_normal((B, L, cfg.condition_dim)).astype(np.float32)
    mask = np.ones((B, L), np.int64)
    mask[0, L // 2 :] = 0
    return codes, text, mask


def run_reference(args) -> dict:
    import torch
    from audiocraft.optim.ema import ModuleDictEMA
    from audiocraft.optim.inverse_sqrt_lr_scheduler import InverseSquareRootLRScheduler
    from audiocraft.solvers.musicgen import MusicGenSolver
    from refutil import reference_lm

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = _config(args)
    lm = reference_lm(cfg, weight_init="gaussian", depthwise_init="current").train()
    proj = torch.nn.Linear(cfg.condition_dim, cfg.dim)
    model = torch.nn.ModuleDict({"lm": lm, "proj": proj})
    opt = torch.optim.AdamW(
        model.parameters(), lr=5e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1
    )
    sched = InverseSquareRootLRScheduler(opt, 3000, 0.0)
    ema = ModuleDictEMA(torch.nn.ModuleDict({"model": model}), decay=0.99, device="cpu")
    codes, text, mask = (torch.from_numpy(x) for x in _data(cfg, args.batch, args.seconds))

    def update(n):
        cond = proj(text) * mask[..., None]
        out = lm.compute_predictions(codes, [], {"description": (cond, mask)})
        ce, _ = MusicGenSolver._compute_cross_entropy(None, out.logits, codes, out.mask)
        ce.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if n % 10 == 0:
            ema.step()
        return ce.item()

    times = []
    for n in range(1, args.steps + 3):
        t0 = time.perf_counter()
        update(n)
        if n > 2:
            times.append(time.perf_counter() - t0)
    return {"s_per_step": statistics.median(times), "peak_rss_gib": _peak_rss_gib()}


def run_ours(args, lora_full: bool = False) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from audiogen_jax import lora, train
    from audiogen_jax.config import LMConfig
    from audiogen_jax.lm import LMModel

    if lora_full:
        cfg, batch, seconds = LMConfig.medium(), 1, 1.0
        lm = LMModel(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16)
        lora.add_lora(lm, args.lora_rank, rngs=nnx.Rngs(1))
        tcfg = train.TrainConfig.audiogen(compute_dtype="bfloat16", cfg_dropout=0.0)
    else:
        cfg, batch, seconds = _config(args), args.batch, args.seconds
        lm = LMModel(cfg, rngs=nnx.Rngs(0))
        tcfg = train.TrainConfig.audiogen(cfg_dropout=0.0)
    proj = nnx.Linear(cfg.condition_dim, cfg.dim, rngs=nnx.Rngs(2))
    parts, trainable, frozen = train.split_model(lm, proj, lora=lora_full)
    state = train.init_state(tcfg, trainable, seed=0)
    del lm, trainable
    codes, text, mask = _data(cfg, batch, seconds)
    batch_ = train.Batch(jnp.asarray(codes, jnp.int32), jnp.asarray(text), jnp.asarray(mask))
    t0 = time.perf_counter()
    state, m = train.train_step(state, frozen, batch_, parts, tcfg)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for n in range(args.steps + 1):
        t0 = time.perf_counter()
        state, m = train.train_step(state, frozen, batch_, parts, tcfg)
        jax.block_until_ready(m)
        if n > 0:
            times.append(time.perf_counter() - t0)
    return {
        "s_per_step": statistics.median(times),
        "first_step_s": compile_s,
        "peak_rss_gib": _peak_rss_gib(),
    }


def _child(side: str, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--result", out]
    cmd += ["--layers", str(args.layers), "--batch", str(args.batch)]
    cmd += ["--seconds", str(args.seconds), "--steps", str(args.steps)]
    cmd += ["--threads", str(args.threads), "--lora-rank", str(args.lora_rank)]
    cmd += ["--smoke"] if args.smoke else []
    subprocess.run(cmd, check=True)
    with open(out) as f:
        result = json.load(f)
    os.remove(out)
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny config (a smoke run)")
    p.add_argument("--layers", type=int, default=4, help="LM layers at medium widths (default 4)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seconds", type=float, default=2.0, help="segment length (default 2 s)")
    p.add_argument("--steps", type=int, default=5, help="timed updates per side (median kept)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for the reference")
    p.add_argument("--lora-full", action="store_true", help="also a full-size LoRA bf16 step")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--side", choices=["ref", "ours", "lora_full"], help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.side:  # a child: one side, result to a file
        fn = {
            "ref": run_reference,
            "ours": run_ours,
            "lora_full": lambda a: run_ours(a, lora_full=True),
        }[args.side]
        with open(args.result, "w") as f:
            json.dump(fn(args), f)
        return {}

    cfg = _config(args)
    B, K, T, L = _shapes(cfg, args.batch, args.seconds)
    results = {
        "config": {
            "dim": cfg.dim,
            "layers": cfg.num_layers,
            "heads": cfg.num_heads,
            "card": cfg.card,
            "batch": B,
            "frames": T,
            "text_tokens": L,
            "dtype": "float32",
        },
        "reference": _child("ref", args),
        "ours": _child("ours", args),
    }
    ref, ours = results["reference"], results["ours"]
    results["time_ratio"] = ours["s_per_step"] / ref["s_per_step"]
    results["memory_ratio"] = ours["peak_rss_gib"] / ref["peak_rss_gib"]
    print(f"config: {results['config']}")
    print(f"{'':12s} {'s/update':>10s} {'peak RSS GiB':>13s}")
    for name in ("reference", "ours"):
        r = results[name]
        print(f"{name:12s} {r['s_per_step']:10.3f} {r['peak_rss_gib']:13.2f}")
    print(
        f"ours / reference: time {results['time_ratio']:.2f}x (target <= 0.7), "
        f"memory {results['memory_ratio']:.2f}x (target <= 1.0); "
        f"our first update (compile) {ours['first_step_s']:.1f} s"
    )
    if args.lora_full:
        r = results["lora_full"] = _child("lora_full", args)
        print(
            f"full-size LoRA rank {args.lora_rank}, bf16 base, B 1, 1 s: "
            f"{r['s_per_step']:.2f} s/update, peak RSS {r['peak_rss_gib']:.2f} GiB"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
