"""The toy AudioGen's LM stage, and the whole model trained from scratch into a converted directory.

    codec (codec.py) --encode the training clips once--> codes [N, K, T] + their captions
    T5 (text.TOY_T5, trained) -> output_proj -> LMModel (TOY_LM, delay pattern)
        trained together with `train.train_step`: the same objective, condition dropout, AdamW
        and EMA as AudioGen's training, with T5 in the optimizer (the reference's
        `conditioners.t5.finetune`)

    train_all(DIR): tokenizer + codec + LM -> DIR, an ordinary converted directory (config.json,
        compression/t5/conditioner/lm.safetensors, tokenizer/spiece.model, manifest.json), each
        stage's result and checkpoints kept in DIR.training until then, so that an interrupted
        run resumes (resume.py)

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
dropout coins. The batches and coins of update n depend on (seed, n) alone, and the optimizer and
EMA live in the checkpointed state, so a resumed run ends with an uninterrupted run's bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import trange

from audiogen_jax import atomic, checkpoint, sharding, t5, train
from audiogen_jax.config import LMConfig
from audiogen_jax.encodec import EncodecModel
from audiogen_jax.lm import LMModel
from audiogen_jax.toy import codec as toy_codec
from audiogen_jax.toy import resume, text, world

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
    # read 56% of clips exactly right at CFG 3, top-k 4 at 0.8 read 78% (the first world's LM);
    # CFG 2 read 92-94% where CFG 3 read 87-89% (this world's, seeds 0 and 1).
    top_k=4,
    temperature=0.8,
    cfg_coef=2.0,
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


def save_clips(data: Dataset, path: str) -> None:
    """Writes the encoded clips into one .npz file, whole or not at all."""
    with atomic.replacing_file(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            codes_NKT=data.codes_NKT,
            ids_NL=data.ids_NL,
            lengths_N=data.lengths_N,
            captions=np.array(data.captions),  # unicode, so loading needs no pickle
        )


def load_clips(path: str) -> Dataset:
    with np.load(path) as z:
        return Dataset(
            codes_NKT=z["codes_NKT"],
            ids_NL=z["ids_NL"],
            lengths_N=z["lengths_N"],
            captions=tuple(str(c) for c in z["captions"]),
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
    checkpoints: resume.Checkpoints | None = None,
) -> tuple[LMModel, t5.T5Conditioner, list[float]]:
    """Trains T5 + output_proj + LM on `data` with `train.train_step`.

    With `devices` > 1 the batch is split over the first `devices` JAX devices (a `data` mesh,
    `sharding.py`; every weight replicated): the same update, its sums taken in another order. On
    CPU, `jax_num_cpu_devices` makes the devices, one thread each, which uses the cores that a
    single device's small matmuls leave idle (`__main__.py` sets it before JAX starts).

    With `checkpoints` (entered), training continues from their last state (read into this run's
    placement) and saves into them. The batches and the dropout coins are functions of (seed,
    step) and the EMA is in the state, so the result is that of an uninterrupted run.

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
    if checkpoints is not None:
        state, losses = checkpoints.restore(state, losses)
    start = int(state.step)
    bar = trange(start, steps, initial=start, total=steps, desc="training LM", disable=not progress)
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
        if checkpoints is not None:
            checkpoints.after_update(n + 1, state, losses)
    if checkpoints is not None:
        checkpoints.save(state, losses)  # the end too: writing DIR may yet be interrupted
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


def settings(
    seed: int, codec_steps: int, lm_steps: int, clips: int, codec_dir: str | None, devices: int
) -> dict:
    """What the trained weights are a function of, as the work directory records them."""
    recipe = (toy_codec.TOY_CODEC, toy_codec.TRAIN, text.TOY_T5, text.VOCAB_SIZE, TOY_LM, TRAIN)
    recipe += (text.CORPUS_CAPTIONS, BATCH, SAME_LENGTH, FRAMES)
    codec = None
    if codec_dir is not None:
        with open(os.path.join(codec_dir, checkpoint.WEIGHT_FILES["compression"]), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()  # 0.75 MB
        codec = {"path": os.path.realpath(codec_dir), "sha256": digest}
    return {
        "seed": seed,
        "codec_steps": None if codec_dir is not None else codec_steps,
        "codec": codec,
        "lm_steps": lm_steps,
        "clips": clips,
        "devices": devices,
        # The toy's configs: a work directory from before they changed is refused.
        "recipe": hashlib.sha256(repr(recipe).encode()).hexdigest()[:16],
    }


def _resume_point(
    work: str, trains_codec: bool, codec_ckpt: resume.Checkpoints, lm_ckpt: resume.Checkpoints
) -> str:
    """Where a rerun picks up, in words (the line the command prints)."""
    if os.path.isfile(os.path.join(work, CLIPS_FILE)):
        return f"the LM stage at update {lm_ckpt.latest_step() or 0}"
    if not trains_codec or checkpoint.is_complete(os.path.join(work, CODEC_DIR)):
        return "encoding the clips" + (" (the codec is trained)" if trains_codec else "")
    if os.path.isfile(os.path.join(work, "tokenizer", "spiece.model")):
        return f"the codec stage at update {codec_ckpt.latest_step() or 0}"
    return "the start"


CODEC_DIR = "codec"
CLIPS_FILE = "clips.npz"


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
    save_every: int = resume.SAVE_EVERY,
    restart: bool = False,
) -> dict:
    """Trains the toy AudioGen from scratch (tokenizer, codec, T5 + LM) into the directory `out`.

    Each stage's result and the training stages' checkpoints go into the work directory
    `out`.training (`resume.py`); a call with the same settings continues from there. At the end
    `out` is built beside itself and swapped in whole (`checkpoint.writing`), with its manifest,
    and the work directory removed.

    Args:
      out: the converted directory to write.
      seed: everything derives from it.
      codec_steps, lm_steps: training updates of each stage.
      clips: training clips encoded for the LM.
      codec_dir: reuse the codec of this converted directory instead of training one.
      devices: JAX devices the LM's batches are split over (`train_lm`).
      progress: tqdm bars.
      log: called as log(stage, step, metrics) ("codec" or "lm").
      save_every: updates between checkpoints of the codec and LM stages.
      restart: discard the work directory of an earlier run first.

    Returns:
      timings of the stages this call ran (wall and process CPU seconds), where it resumed from,
      and the LM's first and last losses.

    Raises:
      resume.ResumeError: the work directory holds a run of other settings.
      resume.Interrupted: Ctrl-C during a training stage (its state is checkpointed).
    """
    report = {}

    def clock():
        return time.time(), time.process_time()

    def since(t0):
        t = clock()
        return {"wall_s": round(t[0] - t0[0], 1), "cpu_s": round(t[1] - t0[1], 1)}

    work = resume.work_directory(out)
    os.makedirs(os.path.dirname(work), exist_ok=True)
    run = settings(seed, codec_steps, lm_steps, clips, codec_dir, devices)
    codec_ckpt = resume.Checkpoints(os.path.join(work, "codec-checkpoints"), "codec", save_every)
    lm_ckpt = resume.Checkpoints(
        os.path.join(work, "lm-checkpoints"), "LM", save_every, os.path.join(work, "lm-losses.json")
    )
    with atomic.locked(work, wait=False):  # one run per work directory
        if resume.open_work(work, run, restart):
            report["resumed_from"] = _resume_point(work, codec_dir is None, codec_ckpt, lm_ckpt)
            print(f"resuming {work}: {report['resumed_from']}", file=sys.stderr, flush=True)
        t0 = clock()
        tokenizer_dir = os.path.join(work, "tokenizer")
        if not os.path.isfile(os.path.join(tokenizer_dir, "spiece.model")):
            text.train_tokenizer(tokenizer_dir, seed)
        tokenizer = t5.load_tokenizer(tokenizer_dir)

        clips_file = os.path.join(work, CLIPS_FILE)
        if codec_dir is None:
            codec_dir = os.path.join(work, CODEC_DIR)
            if not os.path.isfile(clips_file) and not checkpoint.is_complete(codec_dir):
                codec_log = None if log is None else (lambda n, m: log("codec", n, m))
                with codec_ckpt:
                    codec = toy_codec.train(
                        seed, codec_steps, progress=progress, log=codec_log, checkpoints=codec_ckpt
                    )
                with checkpoint.writing(codec_dir) as tmp:
                    toy_codec.save(codec, tmp)
                shutil.rmtree(codec_ckpt.directory)
                report["codec"] = since(t0)
        # Always the saved codec and clips (not the ones in memory): a resumed run reads them too.
        codec = EncodecModel.from_pretrained(codec_dir)
        if not os.path.isfile(clips_file):
            t1 = clock()
            save_clips(encode_clips(codec, tokenizer, seed, clips, progress=progress), clips_file)
            report["encode"] = since(t1)
        data = load_clips(clips_file)

        t2 = clock()
        lm_log = None if log is None else (lambda n, m: log("lm", n, m))
        with lm_ckpt:
            lm, conditioner, losses = train_lm(
                data,
                seed,
                lm_steps,
                devices=devices,
                progress=progress,
                log=lm_log,
                checkpoints=lm_ckpt,
            )
        report["lm"] = since(t2)

        with checkpoint.writing(out) as tmp:
            shutil.copytree(tokenizer_dir, os.path.join(tmp, checkpoint.TOKENIZER_DIR))
            toy_codec.save(codec, tmp)
            save_text_and_lm(lm, conditioner, tmp)
        shutil.rmtree(work)
        report["total"] = since(t0)
    report["lm_loss"] = {"first": losses[0], "last_100_mean": float(np.mean(losses[-100:]))}
    return report
