"""The toy AudioGen's commands: train it from scratch, measure its quality.

    python -m audiogen_jax.toy train --out DIR        # tokenizer + codec + T5/LM -> DIR (~30 min)
    python -m audiogen_jax.toy train --out DIR --codec audiogen_jax/toy/weights   # LM stage only
    python -m audiogen_jax.toy train --out DIR --restart   # discard DIR.training, start over
    python -m audiogen_jax.toy quality                # the shipped model's quality table
    python -m audiogen_jax.toy quality --model DIR    # another one's

(`audiogen-jax toy ...` runs the same commands.) DIR is an ordinary converted directory:
`AudioGen.from_pretrained(DIR)`, `audiogen-jax generate "..." --model DIR`.

Training is resumable: finished stages and checkpoints go into DIR.training (`resume.py`), and
rerunning the same command continues from there, to the same weights as an uninterrupted run.
Ctrl-C in the codec or LM stage finishes the update, checkpoints it and exits with status 130; a
rerun with other settings is refused (status 2) until --restart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from audiogen_jax import atomic
from audiogen_jax.toy import codec as toy_codec
from audiogen_jax.toy import model, quality, resume, world


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
    t.add_argument(
        "--save-every",
        type=int,
        default=resume.SAVE_EVERY,
        help="updates between checkpoints of the codec and LM stages (in DIR.training)",
    )
    t.add_argument(
        "--restart", action="store_true", help="discard an interrupted run's DIR.training first"
    )
    t.add_argument(
        "--log",
        help="write every logged step's metrics to this JSON-lines file (continued on resume)",
    )
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
    q.add_argument(
        "--caption",
        action="append",
        help="measure this caption instead of the fixed set (repeatable): its clips generated "
        "together, alone, and per caption the clips read exactly right and the events heard",
    )
    q.add_argument("--json", help="also write the results to this file")
    return p


def _check_positive(p: argparse.ArgumentParser, **values: int) -> None:
    for name, value in values.items():
        if value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")


class _Log:
    """The --log file. A resumed run keeps the earlier lines up to where it picked up: the first
    line of a stage drops those of its own steps from there on and those of later stages (lines
    come every 25 or 50 updates, so the first new one follows the resume point directly)."""

    STAGES = ("codec", "lm")

    def __init__(self, path: str, keep: bool):
        self.path, self.started = path, set()
        if not keep or not os.path.isfile(path):
            open(path, "w").close()  # noqa: SIM115

    def _prune(self, stage: str, step: int) -> None:
        rank = self.STAGES.index(stage)
        with open(self.path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        kept = [
            r for r in rows
            if self.STAGES.index(r["stage"]) < rank or (r["stage"] == stage and r["step"] < step)
        ]  # fmt: skip
        with open(self.path + ".partial", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(self.path + ".partial", self.path)

    def __call__(self, stage: str, step: int, metrics: dict) -> None:
        if stage not in self.started:
            self._prune(stage, step)
            self.started.add(stage)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"stage": stage, "step": step, **metrics}) + "\n")


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
            save_every=args.save_every,
        )
        if args.clips < model.BATCH:
            p.error(f"--clips must be at least the batch size {model.BATCH}")
        if model.BATCH % args.devices:
            p.error(f"--devices must divide the batch size {model.BATCH}, got {args.devices}")
        devices = _use_devices(args.devices)
        work = resume.work_directory(args.out)
        resuming = os.path.isdir(work) and not args.restart
        log = None if args.log is None else _Log(args.log, keep=resuming)
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
                save_every=args.save_every,
                restart=args.restart,
            )
        except (resume.ResumeError, atomic.BusyError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except (resume.Interrupted, KeyboardInterrupt) as e:
            what = (
                f"{e} is checkpointed in"
                if isinstance(e, resume.Interrupted)
                else "work is kept in"
            )
            print(
                f"interrupted: {what} {work}; rerun the same command to resume "
                "(add --restart to start over)",
                file=sys.stderr,
            )
            return 130
        print(json.dumps(report))
        return 0
    _check_positive(p, clips=args.clips)
    if args.caption:
        for text in args.caption:  # refuse a caption outside the world before loading anything
            try:
                world.parse_caption(text)
            except ValueError as e:
                p.error(str(e))
        results = quality.per_caption(args.model, args.caption, args.cfg, args.clips, args.seed)
        print(quality.per_caption_table(results))
    else:
        results = quality.measure(args.model, args.cfg, args.clips, args.seed, args.batching)
        print(quality.table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
