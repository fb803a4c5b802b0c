"""The toy AudioGen's commands: train it from scratch, measure its quality.

    python -m audiogen_jax.toy train --out DIR        # tokenizer + codec + T5/LM -> DIR (~30 min)
    python -m audiogen_jax.toy train --out DIR --codec audiogen_jax/toy/weights   # LM stage only
    python -m audiogen_jax.toy quality                # the shipped model's quality table
    python -m audiogen_jax.toy quality --model DIR    # another one's

(`audiogen-jax toy ...` runs the same commands.) DIR is an ordinary converted directory:
`AudioGen.from_pretrained(DIR)`, `audiogen-jax generate "..." --model DIR`.
"""

from __future__ import annotations

import argparse
import json
import sys

from audiogen_jax.toy import codec as toy_codec
from audiogen_jax.toy import model, quality


def parser(prog: str = "python -m audiogen_jax.toy") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the toy AudioGen from scratch into a directory")
    t.add_argument("--out", required=True, help="the converted directory to write")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--codec", help="reuse this directory's codec instead of training one")
    t.add_argument("--codec-steps", type=int, default=toy_codec.STEPS)
    t.add_argument("--lm-steps", type=int, default=model.STEPS)
    t.add_argument("--clips", type=int, default=model.CLIPS, help="training clips for the LM")
    t.add_argument(
        "--devices",
        type=int,
        default=model.DEVICES,
        help="devices the LM's batches are split over (on CPU: that many one-thread devices; "
        "the weights are a function of the seed and this number)",
    )
    t.add_argument("--log", help="write every logged step's metrics to this JSON-lines file")
    t.add_argument("--no-progress", action="store_true")
    q = sub.add_parser("quality", help="generate for the fixed captions and score with the checker")
    q.add_argument("--model", default="toy", help="'toy' (the shipped model) or a directory")
    q.add_argument("--clips", type=int, default=quality.CLIPS_PER_CAPTION)
    q.add_argument("--cfg", type=float, nargs="+", default=list(quality.CFG_COEFS))
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--batching",
        choices=quality.BATCHINGS,
        default="caption",
        help="each caption's clips alone (default), or 128 clips of mixed captions per call",
    )
    q.add_argument("--json", help="also write the results to this file")
    return p


def _check_positive(p: argparse.ArgumentParser, **values: int) -> None:
    for name, value in values.items():
        if value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _use_devices(n: int) -> int:
    """Asks JAX for `n` CPU devices (before its backend starts) and returns how many of the
    default backend's devices the LM stage will use: `n`, or fewer on an accelerator."""
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backend already started in this process: keep its devices
        pass
    used = min(n, len(jax.devices()))
    if used < n:
        print(f"training the LM on {used} device(s), not {n}", file=sys.stderr)
    return used


def main(argv: list[str] | None = None, prog: str = "python -m audiogen_jax.toy") -> int:
    p = parser(prog)
    args = p.parse_args(argv)
    if args.command == "train":
        _check_positive(
            p,
            codec_steps=args.codec_steps,
            lm_steps=args.lm_steps,
            clips=args.clips,
            devices=args.devices,
        )
        if args.clips < model.BATCH:
            p.error(f"--clips must be at least the batch size {model.BATCH}")
        if model.BATCH % args.devices:
            p.error(f"--devices must divide the batch size {model.BATCH}, got {args.devices}")
        devices = _use_devices(args.devices)
        log_file = open(args.log, "w", encoding="utf-8") if args.log else None  # noqa: SIM115

        def log(stage, step, metrics):
            if log_file is not None:
                log_file.write(json.dumps({"stage": stage, "step": step, **metrics}) + "\n")
                log_file.flush()

        try:
            report = model.train_all(
                args.out,
                args.seed,
                codec_steps=args.codec_steps,
                lm_steps=args.lm_steps,
                clips=args.clips,
                codec_dir=args.codec,
                devices=devices,
                progress=not args.no_progress,
                log=log,
            )
        finally:
            if log_file is not None:
                log_file.close()
        print(json.dumps(report))
        return 0
    _check_positive(p, clips=args.clips)
    results = quality.measure(args.model, args.cfg, args.clips, args.seed, args.batching)
    print(quality.table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
