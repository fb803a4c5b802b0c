"""EnCodec encode/decode speed: audiogen-jax vs the PyTorch reference (audiocraft), same weights.

    python benchmarks/bench_encodec.py                 # AudioGen's 16 kHz codec, 10 s of audio
    python benchmarks/bench_encodec.py --tiny          # tiny config, a smoke run (seconds)
    python benchmarks/bench_encodec.py --json out.json

Builds the reference with random weights, writes it in the real checkpoint format, converts it
with `convert_weights`, loads it with `EncodecModel.from_pretrained`, checks that both give the
same codes, then times both sides in one process: JAX after its jit warm-up (compile time reported
apart), the reference after one warm-up call; each timing is the best of `--repeats` runs, fp32,
batch 1. Wall time and process CPU time (all threads) are both reported: on a shared machine the
CPU time is the steadier measure of work. For a single-threaded comparison run with
`--threads 1` and `XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from audiogen_jax.cli import convert_main
from audiogen_jax.config import EncodecConfig
from audiogen_jax.encodec import EncodecModel


def _best(fn, repeats: int) -> tuple[float, float]:
    """Best wall time and best process CPU time (all threads) over `repeats` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tiny", action="store_true", help="tiny config (smoke test)")
    p.add_argument(
        "--seconds", type=float, default=None, help="audio length (default 10; 1 with --tiny)"
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="timed runs per measurement (best is kept)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads for the reference")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    import torch
    from encodec_reference import build_reference, save_reference

    torch.set_num_threads(args.threads)
    cfg = EncodecConfig.tiny() if args.tiny else EncodecConfig.medium()
    seconds = args.seconds if args.seconds is not None else (1.0 if args.tiny else 10.0)
    ref = build_reference(cfg, probe_seconds=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "compression_state_dict.bin")
        save_reference(ref, cfg, src)
        if convert_main(["--compression", src, "--out", os.path.join(tmp, "out")]) != 0:
            raise SystemExit("conversion failed")
        model = EncodecModel.from_pretrained(os.path.join(tmp, "out"))

    W = int(seconds * cfg.sample_rate)
    wav = (0.1 * np.random.default_rng(0).standard_normal((1, cfg.channels, W))).astype(np.float32)
    wav_t = torch.from_numpy(wav)

    t0 = time.perf_counter()
    codes = jax.block_until_ready(model.encode(wav))
    enc_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(model.decode(codes))
    dec_first = time.perf_counter() - t0
    jax_enc, jax_enc_cpu = _best(lambda: jax.block_until_ready(model.encode(wav)), args.repeats)
    jax_dec, jax_dec_cpu = _best(lambda: jax.block_until_ready(model.decode(codes)), args.repeats)

    with torch.no_grad():
        ref_codes = ref.encode(wav_t)[0]
        ref.decode(ref_codes)
        ref_enc, ref_enc_cpu = _best(lambda: ref.encode(wav_t), args.repeats)
        ref_dec, ref_dec_cpu = _best(lambda: ref.decode(ref_codes), args.repeats)
    same = float((np.asarray(codes) == ref_codes.numpy()).mean())

    results = {
        "config": "tiny" if args.tiny else "medium (16 kHz, hop 320, 4 x 2048)",
        "seconds": seconds,
        "frames": int(codes.shape[-1]),
        "codes_identical_fraction": same,
        "jax_encode_s": jax_enc,
        "jax_decode_s": jax_dec,
        "jax_encode_compile_s": enc_first - jax_enc,
        "jax_decode_compile_s": dec_first - jax_dec,
        "ref_encode_s": ref_enc,
        "ref_decode_s": ref_dec,
        "encode_ratio_jax_over_ref": jax_enc / ref_enc,
        "decode_ratio_jax_over_ref": jax_dec / ref_dec,
        "jax_encode_cpu_s": jax_enc_cpu,
        "jax_decode_cpu_s": jax_dec_cpu,
        "ref_encode_cpu_s": ref_enc_cpu,
        "ref_decode_cpu_s": ref_dec_cpu,
        "encode_rtf_jax": jax_enc / seconds,
        "decode_rtf_jax": jax_dec / seconds,
        "encode_rtf_ref": ref_enc / seconds,
        "decode_rtf_ref": ref_dec / seconds,
        "repeats": args.repeats,
        "torch_threads": args.threads,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
    }
    print(
        f"EnCodec {results['config']}: {seconds:g} s of audio, {results['frames']} frames, "
        "batch 1, fp32"
    )
    print(f"codes identical to the reference: {same:.4f}")
    head = [
        "jax (s)",
        "ref (s)",
        "jax/ref",
        "jax RTF",
        "compile (s)",
        "jax cpu",
        "ref cpu",
        "cpu ratio",
    ]
    print(f"{'':8}" + "".join(f"{h:>12}" for h in head))
    for name in ("encode", "decode"):
        j, r = results[f"jax_{name}_s"], results[f"ref_{name}_s"]
        jc, rc = results[f"jax_{name}_cpu_s"], results[f"ref_{name}_cpu_s"]
        row = [j, r, j / r, j / seconds, results[f"jax_{name}_compile_s"], jc, rc, jc / rc]
        print(f"{name:8}" + "".join(f"{v:12.3f}" for v in row))
    print(f"(best of {args.repeats}; 1-min load average {results['load_avg_1min']:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
