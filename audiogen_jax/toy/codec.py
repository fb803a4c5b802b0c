"""The toy world's codec: a small EnCodec at 8 kHz, trained from scratch in minutes on a CPU.

    python -m audiogen_jax.toy.codec --out DIR            # trains, evaluates, writes DIR
    python -m audiogen_jax.toy.codec --eval DIR           # evaluates a trained DIR

DIR is an ordinary converted directory (`config.json` + `compression.safetensors`), so
`EncodecModel.from_pretrained(DIR)` loads it like the real codec.

The config, and why:
- 8 kHz: the world's tones and chirps stay at or below 3 kHz, so a 4 kHz band holds them (see
  world.py); halving AudioGen's 16 kHz halves every convolution's work.
- ratios (8, 5, 4): hop 160 samples, 50 frames per second, AudioGen's frame rate; a 1.5 s clip is
  75 frames for the LM. The shortest thing the world makes, a 4 ms click, is well under a frame,
  so the latent must say "a click, here" rather than copy samples.
- 8 filters (doubling to 64 at the bottleneck), one LSTM layer, 32-wide latents: about 187k
  parameters, 0.75 MB in float32.
- 4 codebooks of 64 codewords: 24 bits per frame for sounds that are a handful of tones, noises and
  clicks; small codebooks keep the LM's vocabulary (and softmax) small too.

Training crops 0.5 s from freshly drawn clips every step (the world is a pure function of the
seed, so data never repeats), with the losses of encodec_train.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from audiogen_jax import checkpoint
from audiogen_jax import encodec_train as et
from audiogen_jax.config import EncodecConfig
from audiogen_jax.encodec import EncodecModel
from audiogen_jax.quantization_train import VQTrainConfig
from audiogen_jax.toy import checker, resume, world

TOY_CODEC = EncodecConfig(
    sample_rate=world.SAMPLE_RATE,
    dimension=32,
    n_filters=8,
    ratios=(8, 5, 4),
    lstm=1,
    n_q=4,
    bins=64,
)
STEPS = 3000
BATCH = 16
SEGMENT = world.SAMPLE_RATE // 2  # samples per training crop
TRAIN = et.CodecTrainConfig(
    learning_rate=3e-3,
    b1=0.9,
    b2=0.999,
    warmup_steps=50,
    total_steps=STEPS,
    # audiocraft's ratio of waveform L1 to multi-scale mel (0.1 : 1 here, 0.1 : 2 there): more L1
    # pulls tones whose phase the codec cannot yet follow towards silence.
    l1_weight=0.1,
    msspec_weight=1.0,
    # floor_level 1e-4 (audiocraft: 1e-5): the world's silences are digital zeros, and a lower floor
    # spends the run pushing faint hum in them down by decades instead of learning the sounds; a
    # higher one leaves smear in the gaps between events (docs/toy.md).
    mel=et.MelLossConfig(range_start=6, range_end=11, n_mels=32, normalized=True, floor_level=1e-4),
    vq=VQTrainConfig(decay=0.99, threshold_ema_dead_code=2.0, kmeans_iters=50),
)


def training_batch(seed: int, step: int, size: int = BATCH, segment: int = SEGMENT) -> np.ndarray:
    """Step `step`'s batch: random `segment`-sample crops of `size` fresh clips [B, 1, segment]."""
    wav_BW, _ = world.batch(seed, step * size, size, "train")
    rng = np.random.default_rng((seed, step))
    starts = rng.integers(0, wav_BW.shape[1] - segment + 1, size)
    return np.stack([w[s : s + segment] for w, s in zip(wav_BW, starts, strict=True)])[:, None]


@jax.jit
def _round_trip(model: EncodecModel, wav_BCW: jax.Array) -> jax.Array:
    return model.decode_traced(model.encode_traced(wav_BCW))[..., : wav_BCW.shape[-1]]


def round_trip(model: EncodecModel, wav_BW: np.ndarray, chunk: int = 32) -> np.ndarray:
    """encode -> decode of clips [B, W], trimmed to W, in chunks of `chunk` clips."""
    out = [
        np.asarray(_round_trip(model, jnp.asarray(wav_BW[i : i + chunk, None])))[:, 0]
        for i in range(0, len(wav_BW), chunk)
    ]
    return np.concatenate(out)


def evaluate(model: EncodecModel, seed: int, count: int, split: str) -> dict:
    """Reconstruction and checker numbers on `count` clips of `split` drawn with `seed`.

    Returns:
      mel_distance and si_snr (means over clips), and the checker's per-property accuracy on the
      clean clips ("clean") and on their encode -> decode reconstructions ("codec").
    """
    wav_BW, examples = world.batch(seed, 0, count, split)
    rec_BW = round_trip(model, wav_BW)
    clean, codec = checker.Tally(), checker.Tally()
    for x, y, ex in zip(wav_BW, rec_BW, examples, strict=True):
        clean.add(checker.score(ex.scene, checker.read(x)))
        codec.add(checker.score(ex.scene, checker.read(y)))
    sr = model.sample_rate
    return {
        "split": split,
        "clips": count,
        "mel_distance": float(
            jnp.mean(et.mel_distance(jnp.asarray(wav_BW), jnp.asarray(rec_BW), sr))
        ),
        "si_snr": float(jnp.mean(et.si_snr(jnp.asarray(wav_BW), jnp.asarray(rec_BW)))),
        "clean": clean.accuracy(),
        "codec": codec.accuracy(),
    }


def save(model: EncodecModel, directory: str) -> None:
    """Writes the codec into a converted directory (weights first, then its config section)."""
    os.makedirs(directory, exist_ok=True)
    checkpoint.save_module(model, os.path.join(directory, checkpoint.WEIGHT_FILES["compression"]))
    checkpoint.update_config(directory, "compression", model.config.to_dict())


def train(
    seed: int = 0,
    steps: int = STEPS,
    cfg: EncodecConfig = TOY_CODEC,
    train_cfg: et.CodecTrainConfig = TRAIN,
    *,
    progress: bool = True,
    log=None,
    checkpoints: resume.Checkpoints | None = None,
) -> EncodecModel:
    """Trains the toy codec from scratch; a pure function of `seed` (and the configs).

    With `checkpoints` (entered), the run starts from their last state and saves into them: every
    step's batch and codebook-restart key derive from (seed, step), so a resumed run ends with the
    same codec as an uninterrupted one.
    """
    model = et.unit_scale_init(EncodecModel(cfg, rngs=nnx.Rngs(seed)), seed)
    # A run shorter than twice the warm-up (tests, the notebook's shortened run) warms up for half
    # of it: the cosine schedule needs steps left after its warm-up.
    warmup = min(train_cfg.warmup_steps, steps // 2)
    train_cfg = dataclasses.replace(train_cfg, total_steps=steps, warmup_steps=warmup)
    trainer = et.CodecTrainer(model, train_cfg)
    key = jax.random.key(seed)
    # The k-means start clusters the first four steps' batches: more latents per codeword.
    first = np.concatenate([training_batch(seed, i) for i in range(4)])
    state = trainer.init(jax.random.fold_in(key, 0), jnp.asarray(first))
    if checkpoints is not None:
        state, _ = checkpoints.restore(state)
    state = et.fit(
        trainer,
        state,
        lambda i: training_batch(seed, i),
        steps,
        jax.random.fold_in(key, 1),
        progress=progress,
        log=log,
        on_step=None if checkpoints is None else checkpoints.after_update,
    )
    return trainer.export(state)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="train from scratch and write the codec to this directory")
    p.add_argument("--eval", help="evaluate the codec in this directory")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-clips", type=int, default=300)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if bool(args.out) == bool(args.eval):
        p.error("give exactly one of --out DIR and --eval DIR")
    if args.out:
        start = time.time()

        def log(step, metrics):
            print(json.dumps({"step": step, **{k: round(v, 5) for k, v in metrics.items()}}))
            sys.stdout.flush()

        model = train(args.seed, args.steps, progress=not args.no_progress, log=log)
        save(model, args.out)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        seconds = {"wall": time.time() - start, "cpu": usage.ru_utime + usage.ru_stime}
        print(json.dumps({"train_seconds": {k: round(v, 1) for k, v in seconds.items()}}))
        directory = args.out
    else:
        directory = args.eval
    model = EncodecModel.from_pretrained(directory)
    # Held-out sounds: a seed training never draws, on both the training scenes and HELD_OUT.
    for split in world.SPLITS:
        print(json.dumps(evaluate(model, 10_000 + args.seed, args.eval_clips, split)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
