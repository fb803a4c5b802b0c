"""Side-by-side text-to-audio generation benchmark: audiogen-jax vs audiocraft 1.3.0 (PyTorch).

    .venv/bin/python benchmarks/bench_generate.py              # full size, 1 description, 1 s
    .venv/bin/python benchmarks/bench_generate.py --batch 1 3 --json bench.json
    .venv/bin/python benchmarks/bench_generate.py --tiny       # tiny configs, ~1 min (smoke test)
    .venv/bin/python benchmarks/bench_generate.py --preset facebook/musicgen-small

What it does, in order:
  1. Builds AudioGen-medium (or any `--preset` in `presets.CHECKPOINTS`, or the tiny configs) with
     random weights once and caches the files under `--workdir` (default
     ~/.cache/audiogen_jax_bench/<medium|preset|tiny>): the LM as the release
     stores it (fp16 `state_dict.bin`, audiocraft's export format), `compression_state_dict.bin`,
     and a Hugging Face T5 directory (`tests/refmodels.py`). Then `convert_weights.py` converts
     them to a float32 and a bfloat16 directory. Reruns start here in seconds.
  2. Measures this machine's read bandwidth: a numpy `sum` over a 2 GiB float32 array, best of 5.
  3. Runs each implementation and dtype in its own child process (so peak RSS is per
     implementation): the reference `AudioGen` built from those same files
     (`tests/refmodels.reference_audiogen`; its bf16 is `lm.to(torch.bfloat16)`), and
     `audiogen_jax.AudioGen.from_pretrained(converted dir)` (its int8, an opt-in the reference
     does not have, quantizes the bfloat16 directory on loading). Both generate the same duration
     for the same descriptions with sampling, top-k 250 (at most the codebook size), top-p 0,
     temperature 1, CFG 3.0.
  4. Prints a table and optionally writes everything to `--json`.

Timing method:
  - s/step: both implementations report every decoding step through their progress mechanism
    (audiocraft's `set_custom_progress_callback`; audiogen-jax's `jax.debug.callback` in the scan,
    see generate.py). A step's time is the gap between consecutive reports; the table shows the
    median over the steps after the first (the first also holds the text encoder and setup).
    1 s of audio = 50 frames = 53 steps.
  - Warm-up: audiogen-jax runs the whole generation once first; that run minus the timed run is
    the compile time ("compile", jit compilation + tracing of the whole program: T5, the LM scan,
    EnCodec). The reference first runs a short generation (2 frames) to warm torch up.
  - total: wall time of the timed `generate` call (text -> audio, EnCodec decode included).
  - peak RSS: the child's VmHWM over its whole life (weights loading included); run RSS: the
    high-water mark during the timed generation only (reset just before it with `clear_refs` 5,
    the same for both implementations); weights: the bytes of every weight the
    child holds (LM in its dtype, T5 and EnCodec in float32).
  - floor: the weight bytes one step must read divided by the measured bandwidth. The reference
    reads every LM weight but the embedding tables each step (it recomputes the text's
    cross-attention keys/values every step); audiogen-jax computes those once, so its floor
    leaves out the cross-attention k/v projections. "x floor" is s/step divided by that floor.
  The load average is recorded before each child: other work on the machine slows both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

DESCRIPTIONS = [
    "dog barking in the rain",
    "sirens of an emergency vehicle",
    "footsteps on gravel",
    "wind blowing through trees",
    "a crowd applauding",
    "a train passing over a bridge",
]
DTYPES = ("float32", "bfloat16", "int8")  # int8: audiogen-jax only (an opt-in beyond the reference)
GIB = 2**30


DEFAULT_PRESET = "facebook/audiogen-medium"


def default_workdir(tiny: bool, preset: str = DEFAULT_PRESET) -> str:
    name = "tiny" if tiny else ("medium" if preset == DEFAULT_PRESET else preset.split("/")[-1])
    return os.path.join(os.path.expanduser("~"), ".cache", "audiogen_jax_bench", name)


def bundle_for(tiny: bool, preset: str = DEFAULT_PRESET):
    """The configs to build: the tiny ones, or a released checkpoint's (`presets.CHECKPOINTS`)."""
    from refmodels import Bundle

    from audiogen_jax.presets import CHECKPOINTS

    if tiny:
        return Bundle.tiny()
    c = CHECKPOINTS[preset]
    return Bundle(c.codec, c.t5, c.lm, c.t5_name)


# --------------------------------------------------------------------------------------------------
# Process measurements.


_LIFE_PEAK = [0.0]  # VmHWM seen before each reset: the peak over the whole process life


def peak_rss_gib() -> float:
    """VmHWM: the peak resident set since the process started or since the last `reset_peak_rss`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024 / GIB
                _LIFE_PEAK[0] = max(_LIFE_PEAK[0], peak)
                return peak
    return float("nan")


def life_peak_rss_gib() -> float:
    return max(_LIFE_PEAK[0], peak_rss_gib())


def reset_peak_rss() -> None:
    """Resets VmHWM to the current RSS (Linux: /proc/self/clear_refs, value 5).

    The life peak is kept.

    This also resets the child's `ru_maxrss`, so the parent cannot use that for the life peak.
    """
    peak_rss_gib()
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def load_average() -> float:
    return os.getloadavg()[0]


def read_bandwidth_gbs(nbytes: int, repeats: int = 5) -> float:
    """Best-of-`repeats` numpy sum over a float32 array of `nbytes` (one thread, a pure read)."""
    import numpy as np

    a = np.ones(nbytes // 4, np.float32)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    del a
    return nbytes / best / 1e9


def device_bandwidth_gbs(nbytes: int, repeats: int = 5) -> float:
    """Best-of-`repeats` jitted sum over a float32 array on JAX's default device.

    On a GPU this is the device memory bandwidth.
    """
    import jax
    import jax.numpy as jnp

    a = jnp.ones(nbytes // 4, jnp.float32)
    total = jax.jit(jnp.sum)
    total(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        total(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    del a
    return nbytes / best / 1e9


def weight_bytes_per_step(cfg, itemsize: int, cross_kv_cached: bool) -> int:
    """Bytes of LM weights one decoding step reads (embedding rows are gathered, not streamed)."""
    D, F, V, K = cfg.dim, cfg.ffn_dim, cfg.card, cfg.n_q
    per_layer = 4 * D * D + 4 * D * D + 2 * D * F + 6 * D  # self-attn, cross-attn, FFN, 3 norms
    if cross_kv_cached:
        per_layer -= 2 * D * D  # the condition's keys/values are computed once per generation
    params = cfg.num_layers * per_layer + 2 * D + K * V * D
    return params * itemsize


# --------------------------------------------------------------------------------------------------
# Children: one implementation, one dtype, every batch size.


def step_stats(start: float, stamps: list[float]) -> dict:
    deltas = [b - a for a, b in itertools.pairwise([start, *stamps])]
    steady = deltas[1:] or deltas
    return {
        "steps": len(stamps),
        "first_step_s": deltas[0] if deltas else None,
        "s_per_step": statistics.median(steady) if steady else None,
        "s_per_step_mean": statistics.fmean(steady) if steady else None,
        "s_per_step_min": min(steady) if steady else None,
        "s_per_step_max": max(steady) if steady else None,
    }


def run_reference(args, files, bundle) -> dict:
    import torch
    from refmodels import reference_audiogen

    # Tiny models: one thread (thread hand-offs cost more than the work, worst on a busy machine).
    torch.set_num_threads(1 if args.tiny else os.cpu_count() or 1)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = reference_audiogen(files, bundle, lm_dtype=args.dtype, device=args.reference_device)
    tensors = [
        *model.lm.parameters(),
        *model.lm.buffers(),
        *model.compression_model.state_dict().values(),
        *model.lm.condition_provider.conditioners["description"].t5.state_dict().values(),
    ]
    out = {
        "load_s": time.perf_counter() - t0,
        "rss_after_load_gib": peak_rss_gib(),
        "runs": [],
        "weights_gib": sum(t.numel() * t.element_size() for t in tensors) / GIB,
    }
    top_k = min(250, bundle.lm.card)
    frame_rate = model.frame_rate
    for batch in args.batch:
        descriptions = DESCRIPTIONS[:batch]
        with torch.no_grad():
            model.set_generation_params(
                duration=2 / frame_rate,
                use_sampling=True,
                top_k=top_k,
                top_p=0.0,
                temperature=1.0,
                cfg_coef=3.0,
            )
            model.generate(descriptions)  # warm-up
            model.set_generation_params(
                duration=args.duration,
                use_sampling=True,
                top_k=top_k,
                top_p=0.0,
                temperature=1.0,
                cfg_coef=3.0,
            )
            stamps: list[float] = []
            model.set_custom_progress_callback(
                lambda done, total, s=stamps: s.append(time.perf_counter())
            )
            reset_peak_rss()
            load = load_average()
            t0 = time.perf_counter()
            wav = model.generate(descriptions, progress=True)
            total = time.perf_counter() - t0
        out["runs"].append(
            dict(
                batch=batch,
                total_s=total,
                run_peak_rss_gib=peak_rss_gib(),
                load_avg=load,
                wav_shape=list(wav.shape),
                finite=bool(torch.isfinite(wav).all()),
                **step_stats(t0, stamps),
            )
        )
    return out


def run_jax(args, directory, bundle) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from audiogen_jax.audiogen import AudioGen

    t0 = time.perf_counter()
    # int8 is quantized on loading, from the bfloat16 directory (see lm.Linear)
    model = AudioGen.from_pretrained(directory, dtype=jnp.int8 if args.dtype == "int8" else None)
    jax.block_until_ready(jax.tree.leaves(model._splits))
    out = {
        "load_s": time.perf_counter() - t0,
        "rss_after_load_gib": peak_rss_gib(),
        "runs": [],
        "lm_dtype": str(model.lm.dtype),
        "weights_gib": sum(
            x.nbytes
            for part in (model.lm, model.conditioner, model.compression_model)
            for x in jax.tree.leaves(nnx.state(part))
        )
        / GIB,
    }
    top_k = min(250, bundle.lm.card)
    model.set_generation_params(
        duration=args.duration,
        use_sampling=True,
        top_k=top_k,
        top_p=0.0,
        temperature=1.0,
        cfg_coef=3.0,
    )
    for batch in args.batch:
        descriptions = DESCRIPTIONS[:batch]
        warm: list[float] = []
        t0 = time.perf_counter()
        model.generate(
            descriptions, progress=lambda i, s=warm: s.append(time.perf_counter()), seed=0
        )
        first = time.perf_counter() - t0
        stamps: list[float] = []
        reset_peak_rss()
        load = load_average()
        t0 = time.perf_counter()
        wav = model.generate(
            descriptions, progress=lambda i, s=stamps: s.append(time.perf_counter()), seed=1
        )
        total = time.perf_counter() - t0
        out["runs"].append(
            dict(
                batch=batch,
                total_s=total,
                first_call_s=first,
                compile_s=first - total,
                run_peak_rss_gib=peak_rss_gib(),
                load_avg=load,
                wav_shape=list(wav.shape),
                finite=bool(np.isfinite(wav).all()),
                **step_stats(t0, stamps),
            )
        )
    return out


def child_main(args) -> None:
    from refmodels import write_checkpoints

    bundle = bundle_for(args.tiny, args.preset)
    if args.child == "prepare":
        write_checkpoints(os.path.join(args.workdir, "src"), bundle)
        return
    files = write_checkpoints(os.path.join(args.workdir, "src"), bundle)
    if args.child == "reference":
        result = run_reference(args, files, bundle)
    else:
        directory = os.path.join(args.workdir, "bfloat16" if args.dtype == "int8" else args.dtype)
        result = run_jax(args, directory, bundle)
    result["peak_rss_gib"] = life_peak_rss_gib()
    with open(args.result, "w") as f:
        json.dump(result, f)


# --------------------------------------------------------------------------------------------------
# Parent: prepare, measure bandwidth, run the children, print the table.


def run_child(args, impl: str, dtype: str | None, result_path: str) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        impl,
        "--workdir",
        args.workdir,
        "--duration",
        str(args.duration),
        "--result",
        result_path,
        "--batch",
        *map(str, args.batch),
        "--reference-device",
        args.reference_device,
        "--preset",
        args.preset,
    ]
    if dtype:
        cmd += ["--dtype", dtype]
    if args.tiny:
        cmd.append("--tiny")
    load = load_average()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark child failed: {' '.join(cmd)}")
    with open(result_path) as f:
        result = json.load(f)
    result.update(
        impl=impl,
        dtype=dtype,
        wall_s=time.perf_counter() - t0,
        load_avg_before=load,
        ru_maxrss_gib=usage.ru_maxrss * 1024 / GIB,
    )
    return result


def weights_gib(directory: str) -> float:
    from audiogen_jax import checkpoint

    return (
        sum(
            os.path.getsize(os.path.join(directory, name))
            for name in list(checkpoint.WEIGHT_FILES.values()) + ["conditioner.safetensors"]
            if os.path.isfile(os.path.join(directory, name))
        )
        / GIB
    )


def table(report: dict) -> str:
    """The side-by-side markdown table.

    Ratios: s/step over the reference's (same dtype and fp32), over the floor, over batch 1's.
    """
    rows = report["results"]
    step = {
        (r["impl"], r["dtype"], run["batch"]): run["s_per_step"] for r in rows for run in r["runs"]
    }

    def fmt(x, p=3):
        return "-" if x is None else f"{x:.{p}g}"

    def ratio(a, b):
        return fmt(a / b) if a and b else "-"

    head = [
        "impl",
        "dtype",
        "B",
        "s/step",
        "vs-ref",
        "vs-ref-fp32",
        "vs-B=1",
        "floor-s",
        "x-floor",
        "total-s",
        "compile-s",
    ]
    head += ["peak RSS GiB", "run RSS GiB", "weights GiB", "load avg"]
    lines = [head]
    for r in rows:
        for run in r["runs"]:
            s, b = run["s_per_step"], run["batch"]
            ref = step.get(("reference", r["dtype"], b))
            ref_fp32 = step.get(("reference", "float32", b))
            b1 = step.get((r["impl"], r["dtype"], 1))
            lines.append([
                "reference" if r["impl"] == "reference" else "audiogen-jax", r["dtype"], str(b),
                fmt(s), ratio(s, ref), ratio(s, ref_fp32), ratio(s, b1),
                fmt(run["floor_s"]), ratio(s, run["floor_s"]), fmt(run["total_s"]),
                fmt(run.get("compile_s")), f"{r['peak_rss_gib']:.2f}",
                f"{run['run_peak_rss_gib']:.2f}", f"{r['weights_gib']:.2f}",
                f"{run['load_avg']:.1f}",
            ])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    ]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--batch", type=int, nargs="+", default=[1], help="numbers of descriptions (each one run)"
    )
    ap.add_argument("--duration", type=float, default=1.0, help="seconds of audio per generation")
    ap.add_argument(
        "--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES, help="LM weight dtypes"
    )
    ap.add_argument("--no-reference", action="store_true", help="audiogen-jax only")
    ap.add_argument("--no-jax", action="store_true", help="the reference only")
    ap.add_argument(
        "--tiny", action="store_true", help="tiny configs (seconds; for the smoke test)"
    )
    from audiogen_jax.presets import CHECKPOINTS

    ap.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        choices=sorted(CHECKPOINTS),
        help=f"the released checkpoint whose configs to build (default {DEFAULT_PRESET})",
    )
    ap.add_argument("--workdir", help="where the random checkpoints and conversions are cached")
    ap.add_argument(
        "--bandwidth-gib", type=float, default=None, help="size of the bandwidth probe array"
    )
    ap.add_argument("--json", help="write the full results here")
    ap.add_argument(
        "--reference-device",
        default="cpu",
        help="torch device of the reference (e.g. cuda on a GPU machine)",
    )
    ap.add_argument("--child", choices=["prepare", "reference", "jax"], help=argparse.SUPPRESS)
    ap.add_argument("--dtype", choices=DTYPES, default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.batch and min(args.batch) < 1 or max(args.batch) > len(DESCRIPTIONS):
        ap.error(f"--batch values must be in [1, {len(DESCRIPTIONS)}]")
    if args.duration <= 0:
        ap.error("--duration must be > 0")
    args.workdir = os.path.abspath(
        os.path.expanduser(args.workdir or default_workdir(args.tiny, args.preset))
    )
    if args.child:
        child_main(args)
        return 0

    from refmodels import convert, write_checkpoints

    bundle = bundle_for(args.tiny, args.preset)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", "prepare", "--workdir", args.workdir]
        + ["--preset", args.preset]
        + (["--tiny"] if args.tiny else []),
        check=True,
        cwd=REPO,
    )
    files = write_checkpoints(
        os.path.join(args.workdir, "src"), bundle
    )  # cached: returns the paths
    for dtype in {"bfloat16" if d == "int8" else d for d in args.dtypes}:
        if not args.no_jax:
            convert(files, os.path.join(args.workdir, dtype), dtype)
    prepare_s = time.perf_counter() - t0
    probe = int((args.bandwidth_gib or (0.25 if args.tiny else 2.0)) * GIB)
    import jax

    on_cpu = jax.default_backend() == "cpu"
    bandwidth = read_bandwidth_gbs(probe) if on_cpu else device_bandwidth_gbs(probe)
    print(
        f"read bandwidth ({'numpy' if on_cpu else jax.default_backend()} sum, {probe / GIB:g} GiB, "
        f"best of 5): {bandwidth:.1f} GB/s",
        flush=True,
    )
    report = {
        "duration_s": args.duration,
        "batches": args.batch,
        "bandwidth_gbs": bandwidth,
        "prepare_s": prepare_s,
        "tiny": args.tiny,
        "preset": None if args.tiny else args.preset,
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "results": [],
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    jobs = [] if args.no_reference else [("reference", d) for d in args.dtypes if d != "int8"]
    jobs += [] if args.no_jax else [("jax", d) for d in args.dtypes]
    for impl, dtype in jobs:
        print(f"running {impl} {dtype} (load average {load_average():.1f}) ...", flush=True)
        result = run_child(
            args, impl, dtype, os.path.join(args.workdir, f"result_{impl}_{dtype}.json")
        )
        itemsize = {"float32": 4, "bfloat16": 2, "int8": 1}[dtype]
        step_bytes = weight_bytes_per_step(bundle.lm, itemsize, cross_kv_cached=impl == "jax")
        result["weight_bytes_per_step"] = step_bytes
        if impl == "jax":
            result["weights_on_disk_gib"] = weights_gib(os.path.join(args.workdir, dtype))
        for run in result["runs"]:
            run["floor_s"] = step_bytes / (bandwidth * 1e9)
        report["results"].append(result)
    print()
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
