"""`audiogen-jax train`: fine-tune AudioGen on a folder of captioned sounds.

    audiogen-jax train sounds/ --model tiny-random --out runs/a --steps 200 --batch-size 4
    audiogen-jax train sounds/ --model DIR --out runs/b --lora-rank 16 --dtype bfloat16
    audiogen-jax train sounds/ --model DIR --out runs/b --resume --steps 400   # continue
    audiogen-jax train sounds/ --model DIR --out runs/c --mesh fsdp=-1       # over all devices

What a run does, in order: check every flag; resolve the model (a converted directory,
`tiny-random`, or a hub id); find the captioned audio (`data.py`; skipped files are listed); encode
it once into the code cache (RUN_DIR/cache unless --cache); then train with `train.train_step`
under a progress bar showing the loss. RUN_DIR receives:

    run.json            the settings and the model's fingerprint (--resume checks both)
    metrics.jsonl       one line per update: ce, ppl, ce per codebook, lr, grad_norm, steps/s
    tb/                 the same metrics as TensorBoard event files (tensorboardX)
    checkpoints/        orbax checkpoints every --save-every updates and at the end
    export/             a converted directory (`AudioGen.from_pretrained(RUN_DIR/export)`)

Resuming restores the last checkpoint and replays nothing: batches are a pure function of
(seed, step) and the step is deterministic, so the resumed loss curve is bit-identical to an
uninterrupted run's. `--mesh` spreads the batch, the weights, gradients, optimizer state and EMA
over devices (`sharding.py`); a run may resume on another mesh (checkpoints are restored straight
into the new shardings). Ctrl-C finishes the current update, writes a checkpoint and exits (status
130). A non-finite loss stops the run (status 1) without checkpointing the bad state, so the last
checkpoint on disk is the last good one.

TensorBoard files are written with tensorboardX: a small pure-Python writer (protobuf only). The
alternatives pull in TensorFlow (`flax.metrics.tensorboard`, clu) or PyTorch
(`torch.utils.tensorboard`), neither of which the runtime package may depend on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time

from audiogen_jax import atomic

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
# Settings a resumed run must share with the run it continues (the rest may change, e.g. --steps).
_FIXED = ("batch_size", "seed", "lora_rank", "accumulate", "segment_seconds", "lr", "warmup")


class TrainError(Exception):
    """A run that cannot start or continue; the message is the one line shown to the user."""


EXAMPLES = """\
examples:
  # a quick run on the offline tiny model
  audiogen-jax train sounds/ --model tiny-random --out runs/a --steps 200 --batch-size 4
  # LoRA adapters on a converted model, bfloat16 compute
  audiogen-jax train sounds/ --model DIR --out runs/b --lora-rank 16 --dtype bfloat16
  # continue run b up to 400 updates
  audiogen-jax train sounds/ --model DIR --out runs/b --resume --steps 400

sounds/ holds audio files with same-named .txt captions (or give a data.jsonl). The run directory
receives run.json, metrics.jsonl, tb/, checkpoints/ and export/ (a converted directory).
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="audiogen-jax train",
        description="Fine-tune AudioGen on captioned audio.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", help="folder of audio + same-named .txt captions, or a data.jsonl")
    p.add_argument("--model", required=True, help="converted directory, hub id, or 'tiny-random'")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics, export)")
    p.add_argument("--steps", type=int, default=1000, help="total updates (default 1000)")
    p.add_argument("--batch-size", type=int, default=8, help="segments per update (default 8)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (released: 5e-4)")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="linear warm-up updates (released: 3000; default min(3000, steps // 10))",
    )
    p.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="matmul compute dtype; weights stay float32 (LoRA: the frozen base is stored in it)",
    )
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per update")
    p.add_argument("--remat", action="store_true", help="recompute each layer in the backward pass")
    p.add_argument("--seed", type=int, default=0, help="batch order and condition dropout")
    p.add_argument(
        "--cfg-dropout", type=float, default=0.1, help="null-condition probability (0.1)"
    )
    p.add_argument(
        "--segment-seconds",
        type=float,
        default=None,
        help="training segment length (default: the model's window, 10 s for AudioGen)",
    )
    p.add_argument("--save-every", type=int, default=500, help="checkpoint period in updates")
    p.add_argument("--cache", default=None, help="code cache folder (default RUN_DIR/cache)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--export-weights",
        default="ema",
        choices=["ema", "raw"],
        help="export the EMA weights (as the reference releases) or the last ones",
    )
    p.add_argument(
        "--mesh",
        default=None,
        metavar="AXIS=N,...",
        help="device mesh, e.g. data=2,fsdp=4 (axes data, fsdp, tensor; -1: the rest)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _check_args(args) -> None:
    checks = [
        (args.steps >= 1, f"--steps must be >= 1, got {args.steps}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.accumulate >= 1, f"--accumulate must be >= 1, got {args.accumulate}"),
        (
            args.batch_size % args.accumulate == 0,
            f"--batch-size {args.batch_size} is not divisible by --accumulate {args.accumulate}",
        ),
        (math.isfinite(args.lr) and args.lr > 0, f"--lr must be > 0, got {args.lr}"),
        (args.lora_rank >= 0, f"--lora-rank must be >= 0, got {args.lora_rank}"),
        (args.save_every >= 1, f"--save-every must be >= 1, got {args.save_every}"),
        (0 <= args.cfg_dropout <= 1, f"--cfg-dropout must be in [0, 1], got {args.cfg_dropout}"),
        (args.warmup is None or args.warmup >= 1, f"--warmup must be >= 1, got {args.warmup}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise TrainError(msg)
    if args.mesh is not None:
        from audiogen_jax import sharding

        try:
            args.mesh_sizes = sharding.parse_mesh(args.mesh)
        except sharding.ShardingError as e:
            raise TrainError(str(e)) from e
    if args.warmup is None:
        args.warmup = max(1, min(3000, args.steps // 10))


def _settings(args, model_dir: str, max_duration: float) -> dict:
    from audiogen_jax import data

    segment = args.segment_seconds if args.segment_seconds is not None else max_duration
    if not 0 < segment <= max_duration:
        raise TrainError(
            f"--segment-seconds {segment:g} is outside the model's window (0, {max_duration:g}] s"
        )
    lm_digest = data._file_digest(os.path.join(model_dir, "lm.safetensors"))
    return {
        "model": args.model,
        "model_fingerprint": data.model_fingerprint(model_dir) + lm_digest,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "lora_rank": args.lora_rank,
        "accumulate": args.accumulate,
        "segment_seconds": segment,
        "lr": args.lr,
        "warmup": args.warmup,
        "dtype": args.dtype,
        "cfg_dropout": args.cfg_dropout,
        "mesh": args.mesh,
    }


def _open_run(args, settings: dict) -> None:
    """Creates RUN_DIR, or checks that --resume continues a run of the same model and settings."""
    run_file = os.path.join(args.out, RUN_FILE)
    if not args.resume:
        if os.path.isfile(run_file):
            raise TrainError(
                f"{args.out} already holds a run: pass --resume, or choose another --out"
            )
        os.makedirs(args.out, exist_ok=True)
        atomic.write_json(run_file, settings, indent=1)
        return
    if not os.path.isfile(run_file):
        raise TrainError(f"--resume: {args.out} holds no run ({RUN_FILE} is missing)")
    with open(run_file) as f:
        old = json.load(f)
    if old.get("model_fingerprint") != settings["model_fingerprint"]:
        raise TrainError(
            f"--resume: {args.out} was trained from another model ({old.get('model')!r}, "
            f"not these weights of {args.model!r})"
        )
    changed = [k for k in _FIXED if old.get(k) != settings[k]]
    if changed:
        diffs = ", ".join(f"{k} {old.get(k)!r} -> {settings[k]!r}" for k in changed)
        raise TrainError(f"--resume: the run was started with other settings ({diffs})")


# --------------------------------------------------------------------------------------------------
# Checkpoints (orbax) and metrics.


def checkpoint_manager(directory: str):
    """An orbax manager of the checkpoints in `directory` (created), keeping the last two.

    Shared with the toy model's training command (`toy/resume.py`)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _checkpoint_manager(run_dir: str):
    return checkpoint_manager(os.path.join(run_dir, "checkpoints"))


def _flat(state) -> dict:
    """The state as {index: array}: a plain dict orbax stores without knowing our pytree types."""
    import jax

    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(state))}


def save_state(manager, state) -> None:
    """Checkpoints a training state (any pytree with an int `step`) unless its step is saved."""
    import orbax.checkpoint as ocp

    step = int(state.step)
    if manager.latest_step() != step:
        manager.save(step, args=ocp.args.StandardSave(_flat(state)))
        manager.wait_until_finished()


def restore_state(manager, state):
    """The latest checkpoint read into the structure and shardings of `state` (returned as is
    when there is none). Raises `TrainError` when the checkpoint does not fit `state`."""
    import jax
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        return state
    leaves, treedef = jax.tree.flatten(state)
    # Each array is read straight into the sharding `state` has now, whatever mesh wrote it.
    target = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
        for k, v in _flat(state).items()
    }
    try:
        restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    except (ValueError, KeyError) as e:
        raise TrainError(f"the checkpoint of step {step} does not fit this model ({e})") from e
    return jax.tree.unflatten(treedef, [restored[k] for k in sorted(restored)])


_save = save_state


def _restore(manager, state):
    try:
        return restore_state(manager, state)
    except TrainError as e:
        raise TrainError(f"--resume: {e}") from e.__cause__


class _Metrics:
    """metrics.jsonl + TensorBoard. On resume, lines past the restored step are dropped first."""

    def __init__(self, run_dir: str, start: int):
        from tensorboardX import SummaryWriter

        self.path = os.path.join(run_dir, METRICS_FILE)
        kept = []
        if os.path.isfile(self.path):
            with open(self.path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] <= start]
        with open(self.path + ".partial", "w") as f:
            f.writelines(kept)
        os.replace(self.path + ".partial", self.path)
        self.file = open(self.path, "a")  # noqa: SIM115 - open for the whole run
        self.tb = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=start + 1)

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for k, v in row.items():
            if k != "step":
                self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        self.file.close()
        self.tb.close()


def _row(step: int, m: dict, steps_per_s: float) -> dict:
    ce = float(m["ce"])
    row = {"step": step, "ce": ce, "ppl": math.exp(min(ce, 700.0))}
    for k, v in enumerate(m["ce_K"].tolist()):
        row[f"ce_q{k + 1}"] = v
    row.update(
        lr=float(m["lr"]),
        grad_norm=float(m["grad_norm"]),
        dropped=int(m["dropped"]),
        steps_per_s=steps_per_s,
    )
    return row


# --------------------------------------------------------------------------------------------------
# Export.


def export(run_dir: str, model_dir: str, lm, output_proj, out_dir: str | None = None) -> str:
    """Writes a converted directory with the trained LM and projection (LoRA merged).

    Everything else (codec, T5, tokenizer, config) is copied from the base model directory. The
    directory appears whole or not at all (written beside it, then renamed).
    """
    from audiogen_jax import checkpoint, lora, t5

    out_dir = out_dir or os.path.join(run_dir, "export")
    with checkpoint.writing(out_dir) as tmp:  # swapped in whole, with a new manifest
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        lm = lora.merge_lora(lm)
        lm.save_pretrained(tmp)  # the on-disk kernel layout, whatever the runtime one
        checkpoint.save_module(output_proj, os.path.join(tmp, t5.CONDITIONER_FILE))
    return out_dir


# --------------------------------------------------------------------------------------------------
# The run.


def run(args, on_step=None) -> int:
    """Trains as the parsed `args` say (see `parser`). Returns the exit status.

    `on_step(step)` is called after each update (tests use it to interrupt a run).
    """
    for module in ("optax", "orbax.checkpoint", "tensorboardX"):
        try:
            __import__(module)
        except ImportError as e:
            raise TrainError(f"training needs {module}: pip install 'audiogen-jax[train]'") from e
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from tqdm import tqdm

    from audiogen_jax import audiogen, checkpoint, data, lora, presets, sharding, t5, train
    from audiogen_jax.encodec import EncodecModel
    from audiogen_jax.lm import LMModel

    _check_args(args)
    if args.model == presets.TINY_RANDOM:
        print(presets.NOISE_WARNING, file=sys.stderr)
    try:
        mesh = None if args.mesh is None else sharding.make_mesh(**args.mesh_sizes)
    except sharding.ShardingError as e:
        raise TrainError(f"--mesh {args.mesh}: {e}") from e
    placement = None if mesh is None else sharding.Placement(mesh)
    if placement is not None and args.batch_size % placement.batch_devices:
        raise TrainError(
            f"--batch-size {args.batch_size} does not divide over the mesh's "
            f"{placement.batch_devices} batch devices (data x fsdp)"
        )
    try:
        model_dir = audiogen.resolve(args.model)
        shardings = sharding.loader(placement)
        conditioner = t5.T5Conditioner.from_pretrained(model_dir, shardings=shardings)
        codec = EncodecModel.from_pretrained(model_dir)
        base_dtype = jnp.bfloat16 if (args.lora_rank and args.dtype == "bfloat16") else jnp.float32
        lm = LMModel.from_pretrained(model_dir, dtype=base_dtype, shardings=shardings)
    except sharding.ShardingError as e:
        raise TrainError(f"--mesh {args.mesh}: {e}") from e
    except (checkpoint.CheckpointError, ValueError, OSError) as e:
        raise TrainError(f"--model {args.model}: {e}") from e
    if lm.config.interleave_stereo:  # the data cache encodes mono audio
        raise TrainError(f"--model {args.model}: fine-tuning a stereo model is not supported")
    settings = _settings(args, model_dir, lm.config.max_duration)
    examples, skipped = data.find_examples(args.data)
    _open_run(args, settings)
    cache = args.cache or os.path.join(args.out, "cache")
    keys, skipped_audio = data.prepare_cache(
        examples,
        cache,
        codec=codec,
        conditioner=conditioner,
        model_dir=model_dir,
        segment_seconds=settings["segment_seconds"],
        progress=not args.no_progress,
    )
    for path, reason in skipped + skipped_audio:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not keys:
        raise TrainError(f"{args.data}: no usable audio (every file was skipped)")
    dataset = data.CodeDataset(cache, keys)
    if args.batch_size > len(dataset):
        raise TrainError(
            f"--batch-size {args.batch_size} is larger than the dataset "
            f"({len(dataset)} segments of {settings['segment_seconds']:g} s)"
        )
    del codec

    cfg = train.TrainConfig.audiogen(
        lr=args.lr,
        warmup_steps=args.warmup,
        cfg_dropout=args.cfg_dropout,
        accumulate=args.accumulate,
        compute_dtype=args.dtype,
        remat=args.remat,
    )
    if args.lora_rank:
        lora.add_lora(lm, args.lora_rank, rngs=nnx.Rngs(args.seed))
    parts, trainable, frozen = train.split_model(
        lm, conditioner.output_proj, lora=args.lora_rank > 0
    )
    state = train.init_state(cfg, trainable, seed=args.seed)
    if placement is not None:
        proj = conditioner.output_proj
        state = jax.device_put(state, sharding.train_shardings(state, placement, lm, proj))
        frozen = jax.device_put(frozen, sharding.train_shardings(frozen, placement, lm, proj))
        del proj
    del lm, trainable, conditioner
    manager = _checkpoint_manager(args.out)
    if args.resume:
        state = _restore(manager, state)
    start = int(state.step)
    what = f"LoRA rank {args.lora_rank}" if args.lora_rank else "all LM weights + output_proj"
    print(
        f"training {what} on {len(dataset)} segments of {settings['segment_seconds']:g} s from "
        f"{len(keys)} files: batch {args.batch_size}, updates {start}..{args.steps}, "
        f"lr {args.lr:g} (warm-up {args.warmup}), {args.dtype} compute"
        + ("" if mesh is None else f", mesh {sharding.describe(mesh)}"),
        file=sys.stderr,
    )

    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    metrics = _Metrics(args.out, start)
    try:
        bar = tqdm(
            total=args.steps, initial=start, desc="train", disable=args.no_progress, file=sys.stderr
        )
        last = time.perf_counter()
        for step in range(start, args.steps):
            batch = dataset.batch(step, args.batch_size, args.seed)
            if placement is None:
                batch = jax.tree.map(jnp.asarray, batch)
            else:
                batch = jax.device_put(batch, sharding.batch_shardings(batch, placement))
            state, m = train.train_step(state, frozen, batch, parts, cfg)
            m = jax.device_get(m)
            now = time.perf_counter()
            row = _row(step + 1, m, 1.0 / max(now - last, 1e-9))
            last = now
            if not np.isfinite(row["ce"]):
                print(
                    f"error: the loss became {row['ce']} at update {step + 1}; stopping. The last "
                    f"checkpoint (update {manager.latest_step()}) is kept: resume from it with a "
                    "lower --lr",
                    file=sys.stderr,
                )
                return 1
            metrics.write(row)
            bar.set_postfix(ce=f"{row['ce']:.3f}")
            bar.update()
            if (step + 1) % args.save_every == 0:
                _save(manager, state)
            if on_step is not None:
                on_step(step + 1)
            if interrupted:
                _save(manager, state)
                print(
                    f"interrupted: checkpoint of update {step + 1} written to {args.out}; "
                    "continue with --resume",
                    file=sys.stderr,
                )
                return 130
        bar.close()
        _save(manager, state)
        lm, proj = train.merge_model(parts, state.params, frozen)
        ema_ready = state.ema_state is not None and int(state.ema_state.count) > 0
        if args.export_weights == "ema" and ema_ready:
            ema = train.ema_params(cfg, state.ema_state)
            lm, proj = train.merge_model(parts, ema, frozen)
        elif args.export_weights == "ema":
            print("note: no EMA step yet: exporting the last weights", file=sys.stderr)
        print(export(args.out, model_dir, lm, proj))
    finally:
        signal.signal(signal.SIGINT, previous)
        metrics.close()
        manager.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    from audiogen_jax.data import DataError

    args = parser().parse_args(argv)
    try:
        return run(args)
    except (TrainError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
