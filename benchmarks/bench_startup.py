"""Time to sound: process start to a WAV written, split by phase, beside the reference's start-up.

    .venv/bin/python benchmarks/bench_startup.py              # AudioGen-medium size, fp32 and bf16
    .venv/bin/python benchmarks/bench_startup.py --tiny       # tiny configs (the smoke test)
    .venv/bin/python benchmarks/bench_startup.py --dtypes bfloat16 --json startup.json

What it does:
  1. Writes the random-weight checkpoints in the release formats and converts them as
     benchmarks/bench_generate.py does, in the same work directory (its files are reused;
     AudioGen-medium takes about 6 minutes and 19 GB the first time).
  2. For each dtype, runs audiogen-jax in fresh child processes, each doing what `audiogen-jax
     generate` does for one description and `--duration` seconds (`AudioGen.from_pretrained`,
     tokenize, the codes with the progress reports the CLI's bar uses, EnCodec decode, a
     loudness-normalised 16-bit WAV):
       - first:  with an empty persistent compilation cache;
       - second: a new process with the cache the first left;
       - then, inside that second process, a new prompt of another text length (same bucket).
  3. Runs the reference (audiocraft 1.3.0 `AudioGen` built from the same files,
     `tests/refmodels.py`) in a child process: import, build + load, the first decoding step, the
     other steps and decode, the WAV written by audiocraft's `audio_write` (loudness strategy).
  4. Prints the table and the targets, met or not.

Phases (seconds of wall time; a child is timed from just before the parent starts it, so Python's
own start is in "import"):
  - import: Python start + importing JAX and audiogen_jax (torch and audiocraft: the reference).
  - load: `AudioGen.from_pretrained` with every weight on the device (reference: build + load).
  - compile: JAX's compile events in every phase (`jax.monitoring`: tracing, lowering to StableHLO,
    and the XLA compilation or, on a persistent-cache hit, reading the compiled program; and
    `program_cache.py` reading or writing a kept executable); the other phases are given without
    them. "programs" counts compile requests, "hits" those served by the persistent cache, "kept"
    the programs read from `program_cache.py`'s files (no tracing, lowering or compile request).
  - steps: generating the codes, T5 included (`generate_codes` less its compile events).
  - decode: EnCodec decode to the waveform. write: loudness normalisation and the 16-bit WAV.
  - total: process start -> WAV written. overhead: total - steps, what a warm start can remove.
The page cache is warmed before every child (each weight file read once): "load" is not a disk read.
Targets: the second invocation's overhead <= 25% of the first's; a new prompt compiles nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, BENCH)

import bench_generate  # noqa: E402  (the shared checkpoint machinery and process measurements)

PROMPT = "dog barking in the rain"
# The new prompt: the first of these whose tokenized length differs from PROMPT's within its bucket.
NEW_PROMPTS = (
    "rain",
    "a dog barks",
    "dog barking in the rain and wind",
    "sirens",
    "a crowd applauding",
)
DTYPES = ("float32", "bfloat16")
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    # audiogen_jax/program_cache.py: reading a kept executable, or writing one.
    "/audiogen_jax/program_cache/read_duration",
    "/audiogen_jax/program_cache/write_duration",
    "/jax/core/compile/backend_compile_duration",
)
HIT = "/jax/compilation_cache/cache_hits"
KEPT = "/audiogen_jax/program_cache/hits"


# --------------------------------------------------------------------------------------------------
# Children. Everything heavy is imported inside them: the import is what they time.


class _Clock:
    """Phase wall times, each without the compile events that happened inside it."""

    def __init__(self, spawn: float):
        self.spawn = self.last = spawn
        self.compile_s = self.last_compile = 0.0
        self.programs = 0
        self.hits = 0
        self.kept = 0

    def listen(self, jax) -> None:
        def duration(event, seconds, **kwargs):
            if event in COMPILE_EVENTS:
                self.compile_s += seconds
                self.programs += event == COMPILE_EVENTS[-1]

        def event(name, **kwargs):
            self.hits += name == HIT
            self.kept += name == KEPT

        jax.monitoring.register_event_duration_secs_listener(duration)
        jax.monitoring.register_event_listener(event)

    def lap(self) -> float:
        """Seconds since the last lap, less the compile events in them."""
        now = time.time()
        seconds = now - self.last - (self.compile_s - self.last_compile)
        self.last, self.last_compile = now, self.compile_s
        return seconds


def jax_child(args) -> dict:
    clock = _Clock(args.spawn)
    import jax  # noqa: I001  (the listener must be in place before audiogen_jax compiles anything)

    clock.listen(jax)
    import dataclasses

    import jax.numpy as jnp
    import numpy as np

    from audiogen_jax import cli, t5
    from audiogen_jax import generate as gen
    from audiogen_jax.audiogen import AudioGen

    out: dict = {"runs": [], "import_s": clock.lap()}
    model = AudioGen.from_pretrained(args.directory, compilation_cache=args.xla)
    jax.block_until_ready(jax.tree.leaves(model._splits))
    out["load_compile_s"] = clock.compile_s
    out["load_s"] = clock.lap()
    top_k = min(250, model.lm.config.card)
    model.set_generation_params(
        duration=args.duration, use_sampling=True, top_k=top_k, temperature=1.0, cfg_coef=3.0
    )
    settings = dataclasses.replace(model.settings, max_duration=model.max_duration)
    prompts = [PROMPT]
    if args.new_prompt:
        L = t5.tokenize(model.tokenizer, [PROMPT, None])[0].shape[1]
        lengths = {p: t5.tokenize(model.tokenizer, [p, None])[0].shape[1] for p in NEW_PROMPTS}
        same_bucket = [
            p for p, n in lengths.items() if n != L and gen.bucket_text(n) == gen.bucket_text(L)
        ]
        prompts.append(same_bucket[0])
    for i, prompt in enumerate(prompts):
        start, c0, p0, h0 = clock.last, clock.compile_s, clock.programs, clock.hits
        k0 = clock.kept
        run: dict = {"prompt": prompt}
        # What `audiogen-jax generate` runs (AudioGen.generate -> generate.generate), by phase.
        ids, mask = t5.tokenize(model.tokenizer, [prompt, None])
        codes = gen.generate_codes(
            model.lm,
            model.conditioner,
            ids,
            mask,
            settings,
            key=jax.random.key(i),
            progress=lambda step: None,  # the CLI's bar runs the same pieces
            splits=model._splits,
        )
        run["steps_s"] = clock.lap()
        wav = np.asarray(jax.device_get(model.compression_model.decode(jnp.asarray(codes))))
        run["decode_s"] = clock.lap()
        out_dir = os.path.join(args.out, f"run{i}")
        shutil.rmtree(out_dir, ignore_errors=True)
        write_args = argparse.Namespace(
            out_dir=out_dir, format="wav", strategy="loudness", overwrite=True
        )
        wav_path = os.path.join(out_dir, f"prompt{i}.wav")
        (path,) = cli._write_all(wav, model.sample_rate, [wav_path], write_args)
        run["write_s"] = clock.lap()
        run.update(
            text_len=int(ids.shape[1]),
            text_bucket=gen.bucket_text(int(ids.shape[1])),
            steps=int(codes.shape[-1]) + max(model.lm.config.delays),
            compile_s=clock.compile_s - c0,
            programs=clock.programs - p0,
            hits=clock.hits - h0,
            kept=clock.kept - k0,
            # The first run: from process start; a new prompt: from its own start.
            total_s=clock.last - (clock.spawn if i == 0 else start),
            wav=path,
            finite=bool(np.isfinite(wav).all()),
        )
        out["runs"].append(run)
    out["peak_rss_gib"] = bench_generate.life_peak_rss_gib()
    return out


def reference_child(args) -> dict:
    spawn = args.spawn
    import torch
    from audiocraft.data.audio import audio_write

    t_import = time.time()
    import refmodels  # the benchmark's helper (it imports JAX): left out of the reference's times

    helper_s = time.time() - t_import
    torch.set_num_threads(1 if args.tiny else os.cpu_count() or 1)
    torch.manual_seed(0)
    bundle = bench_generate.bundle_for(args.tiny)
    files = refmodels.write_checkpoints(os.path.join(args.workdir, "src"), bundle)
    model = refmodels.reference_audiogen(files, bundle, lm_dtype=args.dtype)
    t_load = time.time()
    model.set_generation_params(
        duration=args.duration,
        use_sampling=True,
        top_k=min(250, bundle.lm.card),
        top_p=0.0,
        temperature=1.0,
        cfg_coef=3.0,
    )
    stamps: list[float] = []
    model.set_custom_progress_callback(lambda done, total: stamps.append(time.time()))
    with torch.no_grad():
        wav = model.generate([PROMPT], progress=True)
    t_gen = time.time()
    os.makedirs(args.out, exist_ok=True)
    path = audio_write(
        os.path.join(args.out, "reference"),
        wav[0].cpu(),
        model.sample_rate,
        strategy="loudness",
        loudness_compressor=True,
    )
    t_write = time.time()
    return dict(
        import_s=t_import - spawn,
        load_s=t_load - t_import - helper_s,
        first_step_s=stamps[0] - t_load,
        steps_s=stamps[-1] - t_load,
        decode_s=t_gen - stamps[-1],
        write_s=t_write - t_gen,
        total_s=t_write - spawn - helper_s,
        # import + build + load + first step
        startup_s=stamps[0] - spawn - helper_s,
        steps=len(stamps),
        wav=str(path),
        finite=bool(torch.isfinite(wav).all()),
        peak_rss_gib=bench_generate.life_peak_rss_gib(),
    )


# --------------------------------------------------------------------------------------------------
# Parent.


def warm_page_cache(path: str) -> None:
    """Reads every file under `path` once, so a child's load does not wait for the disk."""
    for root, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 24):
                    pass


def run_child(args, kind: str, dtype: str, name: str, extra: list[str]) -> dict:
    result = os.path.join(args.workdir, "startup", f"{name}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--dtype", dtype]
    cmd += ["--workdir", args.workdir, "--duration", str(args.duration), "--result", result]
    cmd += ["--out", os.path.join(args.workdir, "startup", name), *extra]
    cmd += ["--tiny"] if args.tiny else []
    load = bench_generate.load_average()
    cmd += ["--spawn", repr(time.time())]
    # audiocraft's audio_write shells out to `ffmpeg`, which scripts/test.sh links beside Python.
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(cmd, cwd=REPO, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed: {' '.join(cmd)}")
    with open(result) as f:
        out = json.load(f)
    out.update(kind=kind, dtype=dtype, name=name, load_avg_before=load)
    return out


def rows(report: dict) -> list[dict]:
    """One row per measured start: invocation, phases, total and overhead (total - steps)."""
    out = []
    for r in report["results"]:
        if r["kind"] == "reference":
            out.append(
                dict(
                    impl="reference", dtype=r["dtype"], invocation="any", import_s=r["import_s"],
                    load_s=r["load_s"], compile_s=None, steps_s=r["steps_s"],
                    decode_s=r["decode_s"], write_s=r["write_s"], total_s=r["total_s"],
                    overhead_s=r["total_s"] - r["steps_s"], programs=None, hits=None,
                    startup_s=r["startup_s"], peak_rss_gib=r["peak_rss_gib"],
                    first_step_s=r["first_step_s"],
                )
            )  # fmt: skip
            continue
        for i, run in enumerate(r["runs"]):
            fresh = i == 0
            out.append(
                dict(
                    impl="audiogen-jax", dtype=r["dtype"],
                    invocation=r["name"].split("-")[0] if fresh else "new prompt",
                    import_s=r["import_s"] if fresh else 0.0, load_s=r["load_s"] if fresh else 0.0,
                    compile_s=run["compile_s"] + (r["load_compile_s"] if fresh else 0.0),
                    steps_s=run["steps_s"], decode_s=run["decode_s"], write_s=run["write_s"],
                    total_s=run["total_s"], overhead_s=run["total_s"] - run["steps_s"],
                    programs=run["programs"], hits=run["hits"], kept=run.get("kept", 0),
                    startup_s=None,
                    peak_rss_gib=r["peak_rss_gib"], text=f"{run['text_len']}/{run['text_bucket']}",
                )
            )  # fmt: skip
    return out


def table(report: dict) -> str:
    head = ["impl", "dtype", "invocation", "import", "load", "compile", "steps", "decode", "write"]
    head += ["total", "overhead", "programs (hits) + kept", "text L/bucket", "peak RSS GiB"]
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [head]
    for r in rows(report):
        progs = "-" if r["programs"] is None else f"{r['programs']} ({r['hits']}) + {r['kept']}"
        lines.append([
            r["impl"], r["dtype"], r["invocation"], fmt(r["import_s"]), fmt(r["load_s"]),
            fmt(r["compile_s"]), fmt(r["steps_s"]), fmt(r["decode_s"]), fmt(r["write_s"]),
            fmt(r["total_s"]), fmt(r["overhead_s"]), progs, r.get("text", "-"),
            fmt(r["peak_rss_gib"]),
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    ]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def targets(report: dict) -> list[str]:
    """Each target, measured, met or not."""
    by = {(r["impl"], r["dtype"], r["invocation"]): r for r in rows(report)}
    lines = []
    for dtype in report["dtypes"]:
        first, second = (
            by.get(("audiogen-jax", dtype, "first")),
            by.get(("audiogen-jax", dtype, "second")),
        )
        new = by.get(("audiogen-jax", dtype, "new prompt"))
        if first and second:
            ratio = second["overhead_s"] / first["overhead_s"]
            lines.append(
                f"{dtype}: second invocation overhead {second['overhead_s']:.2f} s = {ratio:.2f}x "
                f"the first's {first['overhead_s']:.2f} s (target <= 0.25): "
                f"{'met' if ratio <= 0.25 else 'NOT met'}"
            )
        if new:
            lines.append(
                f"{dtype}: new prompt in the running process: {new['programs']} compile requests, "
                f"{new['compile_s']:.3f} s of compile events (target 0): "
                f"{'met' if new['programs'] == 0 else 'NOT met'}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--tiny", action="store_true", help="tiny configs (a few minutes; the smoke test)"
    )
    ap.add_argument(
        "--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES, help="LM weight dtypes"
    )
    ap.add_argument("--duration", type=float, default=1.0, help="seconds of audio (default 1)")
    ap.add_argument("--no-reference", action="store_true", help="audiogen-jax only")
    ap.add_argument("--workdir", help="checkpoints and conversions (shared with bench_generate.py)")
    ap.add_argument("--json", help="write the full results here")
    ap.add_argument("--child", choices=["jax", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--spawn", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--directory", help=argparse.SUPPRESS)
    ap.add_argument("--xla", help=argparse.SUPPRESS)
    ap.add_argument("--new-prompt", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.duration <= 0:
        ap.error("--duration must be > 0")
    args.workdir = os.path.abspath(
        os.path.expanduser(args.workdir or bench_generate.default_workdir(args.tiny))
    )
    if args.child:
        result = (jax_child if args.child == "jax" else reference_child)(args)
        with open(args.result, "w") as f:
            json.dump(result, f)
        return 0

    from refmodels import convert, write_checkpoints

    bundle = bench_generate.bundle_for(args.tiny)
    # In a child, as bench_generate does: writing the checkpoints imports torch; this process must
    # not.
    subprocess.run(
        [sys.executable, os.path.join(BENCH, "bench_generate.py"), "--child", "prepare"]
        + ["--workdir", args.workdir] + (["--tiny"] if args.tiny else []),
        check=True,
        cwd=REPO,
    )  # fmt: skip
    files = write_checkpoints(os.path.join(args.workdir, "src"), bundle)  # cached: the paths
    os.makedirs(os.path.join(args.workdir, "startup"), exist_ok=True)
    report: dict = {
        "duration_s": args.duration, "tiny": args.tiny, "dtypes": args.dtypes, "results": [],
        "cpu_count": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }  # fmt: skip
    for dtype in args.dtypes:
        directory = convert(files, os.path.join(args.workdir, dtype), dtype)
        xla = os.path.join(args.workdir, "startup", f"xla-{dtype}")
        shutil.rmtree(xla, ignore_errors=True)  # the first invocation starts with an empty cache
        for name, extra in ((f"first-{dtype}", []), (f"second-{dtype}", ["--new-prompt"])):
            warm_page_cache(directory)
            print(f"audiogen-jax {name} (load average {bench_generate.load_average():.1f}) ...")
            result = run_child(
                args, "jax", dtype, name, ["--directory", directory, "--xla", xla, *extra]
            )
            report["results"].append(result)
        if not args.no_reference:
            warm_page_cache(os.path.dirname(files["lm"]))
            print(f"reference {dtype} (load average {bench_generate.load_average():.1f}) ...")
            report["results"].append(run_child(args, "reference", dtype, f"reference-{dtype}", []))
    print()
    print(table(report))
    print()
    for line in targets(report):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
