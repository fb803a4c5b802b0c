"""The toy AudioGen's LM stage, and the whole model trained from scratch into a converted directory.

    codec (codec.py) --encode the training clips once--> codes [N, K, T] + their captions
    T5 (text.TOY_T5, trained) -> output_proj -> LMModel (TOY_LM, delay pattern)
        trained together with `train.train_step`: the same objective, condition dropout, AdamW
        and EMA as AudioGen's training, with T5 in the optimizer (the reference's
        `conditioners.t5.finetune`)

    train_all(DIR): tokenizer + codec + LM -> DIR, an ordinary converted directory (config.json,
        compression/t5/conditioner/lm.safetensors, tokenizer/spiece.model, manifest.json)

The LM and why:
- 4 layers, width 128, 4 heads of 32 (feed-forward 512): 1.1 M parameters. A clip is 75
  frames (1.5 s at 50 fps), so a training sequence is 76 delayed steps of 4 codes from 64.
- T5 trains with it (text.py says why a frozen random T5 cannot tell "a click then a hiss" from
  "a hiss then a click"); its output_proj maps width 64 to 128.
- AdamW as AudioGen's recipe (betas 0.9/0.95, weight decay 0.1, clip 1.0, condition dropout 0.1),
  but a short run's schedule: peak 2e-3 after 200 warm-up updates, then 1/sqrt decay, and an EMA
  taken at every update with decay 0.995 (AudioGen's 0.99 every 10 updates averages over the last
  ~1,000 updates, most of this whole run).
- Captions are padded to the batch's longest, and half the batches hold captions of one length
  (no padding at all). The LM's cross-attention has no key mask, so padded zero keys take part in
  its softmax, as they do when a batch of mixed captions is generated; a caption generated alone
  has none. A model trained only on mixed batches (always some padding) read 75% of clips
  exactly right when generated in mixed batches but 37% when each caption was generated alone
  (docs/toy.md).

Everything is a pure function of the seed: the clips, the batch order, the initial weights, the
dropout coins.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import trange

from audiogen_jax import checkpoint, sharding, t5, train
from audiogen_jax.config import LMConfig
from audiogen_jax.encodec import EncodecModel
from audiogen_jax.lm import LMModel
from audiogen_jax.toy import codec as toy_codec
from audiogen_jax.toy import text, world

FRAMES = int(world.DURATION * toy_codec.TOY_CODEC.frame_rate)  # 75 codec frames per clip
TOY_LM = LMConfig(
    dim=128,
    num_heads=4,
    num_layers=4,
    n_q=toy_codec.TOY_CODEC.n_q,
    card=toy_codec.TOY_CODEC.bins,
    delays=(0, 1, 2, 3),
    condition_dim=text.TOY_T5.d_model,
    max_duration=world.DURATION,  # the training clip: one generation window
    duration=world.DURATION,
    extend_stride=1.0,
    # Sampling defaults chosen on the quality captions (docs/toy.md): top-k 16 at temperature 1
    # read 56% of clips exactly right at CFG 3, top-k 4 at 0.8 read 78%.
    top_k=4,
    temperature=0.8,
)
CLIPS = 8000  # training clips encoded once
STEPS = 3000
BATCH = 32
DEVICES = 2  # the LM's batches split over 2 devices (one thread each on CPU): docs/toy.md
TRAIN = train.TrainConfig(
    lr=2e-3,
    warmup_steps=200,
    ema_decay=0.995,
    ema_every=1,
    cfg_dropout=0.1,
)
CONDITIONER_NAME = "toy"  # config['conditioner']['name']: the T5 the LM was trained with
SAME_LENGTH = 0.5  # share of batches whose captions all have one length (no padding)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The LM's training data: every clip's codes and its caption's tokens."""

    codes_NKT: np.ndarray  # int16 codes [N, K, T]
    ids_NL: np.ndarray  # int32 token ids, right-padded with 0 to the longest caption
    lengths_N: np.ndarray  # tokens per caption, EOS included
    captions: tuple[str, ...]


def encode_clips(
    codec: EncodecModel,
    tokenizer,
    seed: int,
    count: int,
    chunk: int = 64,
    progress: bool = True,
) -> Dataset:
    """Renders `count` training clips (world.example(seed, i)), encodes them and their captions."""
    codes, captions = [], []
    encode = jax.jit(lambda model, wav: model.encode_traced(wav))
    for start in trange(0, count, chunk, desc="encoding clips", disable=not progress):
        wav_BW, examples = world.batch(seed, start, min(chunk, count - start), "train")
        codes.append(np.asarray(encode(codec, jnp.asarray(wav_BW[:, None])), np.int16))
        captions += [e.caption for e in examples]
    ids_NL, mask_NL = t5.tokenize(tokenizer, captions)
    return Dataset(
        codes_NKT=np.concatenate(codes)[:, :, :FRAMES],
        ids_NL=ids_NL,
        lengths_N=mask_NL.sum(axis=1).astype(np.int32),
        captions=tuple(captions),
    )


def batch_indices(seed: int, step: int, size: int, lengths_N: np.ndarray) -> np.ndarray:
    """The clips of update `step` (0-based), a pure function of (seed, step).

    With probability SAME_LENGTH: `size` clips whose captions have the length of a clip drawn at
    random (so no caption is padded). Otherwise the step's slice of one permutation of the data per
    epoch, from (seed, epoch).
    """
    rng = np.random.default_rng((seed, step))
    if rng.random() < SAME_LENGTH:
        pool = np.flatnonzero(lengths_N == lengths_N[rng.integers(len(lengths_N))])
        return np.sort(rng.choice(pool, size, replace=len(pool) < size))
    per_epoch = len(lengths_N) // size
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng((seed, epoch)).permutation(len(lengths_N))
    return order[i * size : (i + 1) * size]


def make_batch(data: Dataset, idx: np.ndarray) -> train.Batch:
    """Codes and token ids of the clips `idx`, captions padded to the longest (as generation
    pads a batch)."""
    L = int(data.lengths_N[idx].max())
    ids_BL = np.zeros((len(idx), L), np.int32)
    width = min(L, data.ids_NL.shape[1])
    ids_BL[:, :width] = data.ids_NL[idx, :width]
    mask_BL = (np.arange(L)[None] < data.lengths_N[idx, None]).astype(np.int32)
    return train.Batch(
        codes_BKT=jnp.asarray(data.codes_NKT[idx], jnp.int32),
        text_BLC=None,
        text_mask_BL=jnp.asarray(mask_BL),
        text_ids_BL=jnp.asarray(ids_BL),
    )


def init_models(seed: int) -> tuple[LMModel, t5.T5Conditioner]:
    """The untrained LM and conditioner (T5 + output_proj) of the toy model."""
    rngs = nnx.Rngs(seed)
    lm = LMModel(TOY_LM, rngs=rngs)
    conditioner = t5.T5Conditioner(text.TOY_T5, TOY_LM.dim, rngs=rngs, name=CONDITIONER_NAME)
    return lm, conditioner


def train_lm(
    data: Dataset,
    seed: int = 0,
    steps: int = STEPS,
    batch_size: int = BATCH,
    cfg: train.TrainConfig = TRAIN,
    *,
    devices: int = 1,
    progress: bool = True,
    log: Callable[[int, dict], None] | None = None,
) -> tuple[LMModel, t5.T5Conditioner, list[float]]:
    """Trains T5 + output_proj + LM on `data` with `train.train_step`.

    With `devices` > 1 the batch is split over the first `devices` JAX devices (a `data` mesh,
    `sharding.py`; every weight replicated): the same update, its sums taken in another order. On
    CPU, `--xla_force_host_platform_device_count` makes the devices, one thread each, which uses
    the cores that a single device's small matmuls leave idle (`__main__.py` sets it).

    Returns:
      (lm, conditioner) with the EMA weights (the raw ones when `cfg.ema_decay` is None), and the
      loss of every update.
    """
    lm, conditioner = init_models(seed)
    parts, trainable, frozen = train.split_model(lm, conditioner)
    state = train.init_state(cfg, trainable, seed)
    placement = None
    if devices > 1:
        if batch_size % devices:
            raise ValueError(f"batch size {batch_size} does not split over {devices} devices")
        mesh = sharding.make_mesh(data=devices, devices=jax.devices()[:devices])
        placement = sharding.Placement(mesh)
        proj = conditioner.output_proj
        state = jax.device_put(state, sharding.train_shardings(state, placement, lm, proj))
        frozen = jax.device_put(frozen, sharding.train_shardings(frozen, placement, lm, proj))
    del lm, conditioner
    losses = []
    bar = trange(steps, desc="training LM", disable=not progress)
    for n in bar:
        batch = make_batch(data, batch_indices(seed, n, batch_size, data.lengths_N))
        if placement is not None:
            batch = jax.device_put(batch, sharding.batch_shardings(batch, placement))
        state, metrics = train.train_step(state, frozen, batch, parts, cfg)
        if n % 25 == 0 or n == steps - 1:
            ce = float(metrics["ce"])
            bar.set_postfix(ce=f"{ce:.3f}")
            if log is not None:
                log(n + 1, {k: np.asarray(v).tolist() for k, v in metrics.items()})
        losses.append(metrics["ce"])
    params = state.params if cfg.ema_decay is None else train.ema_params(cfg, state.ema_state)
    lm, conditioner = train.merge_model(parts, params, frozen)
    return lm, conditioner, [float(x) for x in losses]


def save_text_and_lm(lm: LMModel, conditioner: t5.T5Conditioner, directory: str) -> None:
    """Writes the LM, T5 and output_proj and their config sections into `directory`."""
    lm.save_pretrained(directory)
    checkpoint.save_module(conditioner.t5, os.path.join(directory, checkpoint.WEIGHT_FILES["t5"]))
    checkpoint.save_module(conditioner.output_proj, os.path.join(directory, t5.CONDITIONER_FILE))
    checkpoint.update_config(directory, "t5", conditioner.config.to_dict())
    checkpoint.update_config(
        directory,
        "conditioner",
        {
            "input_dim": conditioner.config.d_model,
            "output_dim": conditioner.output_dim,
            "name": conditioner.name,
        },
    )


def train_all(
    out: str,
    seed: int = 0,
    *,
    codec_steps: int = toy_codec.STEPS,
    lm_steps: int = STEPS,
    clips: int = CLIPS,
    codec_dir: str | None = None,
    devices: int = 1,
    progress: bool = True,
    log: Callable[[str, int, dict], None] | None = None,
) -> dict:
    """Trains the toy AudioGen from scratch (tokenizer, codec, T5 + LM) into the directory `out`.

    The directory is built beside `out` and swapped in whole (`checkpoint.writing`), with its
    manifest.

    Args:
      out: the converted directory to write.
      seed: everything derives from it.
      codec_steps, lm_steps: training updates of each stage.
      clips: training clips encoded for the LM.
      codec_dir: reuse the codec of this converted directory instead of training one.
      devices: JAX devices the LM's batches are split over (`train_lm`).
      progress: tqdm bars.
      log: called as log(stage, step, metrics) ("codec" or "lm").

    Returns:
      timings (wall and process CPU seconds per stage) and the LM's first and last losses.
    """
    report = {}

    def clock():
        return time.time(), time.process_time()

    def since(t0):
        t = clock()
        return {"wall_s": round(t[0] - t0[0], 1), "cpu_s": round(t[1] - t0[1], 1)}

    with checkpoint.writing(out) as tmp:
        t0 = clock()
        text.train_tokenizer(os.path.join(tmp, checkpoint.TOKENIZER_DIR), seed)
        tokenizer = t5.load_tokenizer(tmp)
        if codec_dir is not None:
            codec = EncodecModel.from_pretrained(codec_dir)
        else:
            codec_log = None if log is None else (lambda n, m: log("codec", n, m))
            codec = toy_codec.train(seed, codec_steps, progress=progress, log=codec_log)
            report["codec"] = since(t0)
        toy_codec.save(codec, tmp)
        t1 = clock()
        data = encode_clips(codec, tokenizer, seed, clips, progress=progress)
        report["encode"] = since(t1)
        t2 = clock()
        lm_log = None if log is None else (lambda n, m: log("lm", n, m))
        lm, conditioner, losses = train_lm(
            data, seed, lm_steps, devices=devices, progress=progress, log=lm_log
        )
        report["lm"] = since(t2)
        save_text_and_lm(lm, conditioner, tmp)
        report["total"] = since(t0)
    report["lm_loss"] = {"first": losses[0], "last_100_mean": float(np.mean(losses[-100:]))}
    return report
