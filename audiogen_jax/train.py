"""Training: the objective, condition dropout, the optimizer and schedule, and one compiled step.

AudioGen is trained like MusicGen (Copet et al. 2023, section 3): teacher forcing on the delayed
codes, a cross-entropy per codebook, AdamW with gradient clipping and an inverse-square-root
schedule, an EMA of the weights, and classifier-free-guidance dropout of the text condition. This
file is that recipe as pure functions over explicit state:

    codes_BKT --delay, keep the valid steps--> seq_BKS --LM--> logits_BKSV
              --read each code's logit at its own step, mask invalid cells--> ce_K --> ce

    train_step(state, frozen, batch): loss, gradients (accumulated over micro-batches), clip,
    AdamW update, EMA every N updates: one jitted program, the state donated.

References (audiocraft 1.3.0): `solvers/musicgen.py` (`run_step`, `_compute_cross_entropy`),
`models/lm.py` (`compute_predictions`), `modules/conditioners.py`
(`ClassifierFreeGuidanceDropout`), `optim/inverse_sqrt_lr_scheduler.py`, `optim/ema.py`
(`ModuleDictEMA`), `solvers/builders.py` (`get_optimizer`: torch AdamW over all LM parameters,
the conditioner's `output_proj` included), and the released solver config
`config/solver/audiogen/audiogen_base_16khz.yaml` (values in `TrainConfig.audiogen`).

The text encoder (T5) is frozen, so its hidden states are computed once per caption outside the
step (`data.py` caches them); the step applies the trainable `output_proj` and the mask, exactly
as the reference conditioner does after T5. The reference can also fine-tune T5 with the LM
(`conditioners.t5.finetune`: T5's parameters join the optimizer's); here that is
`split_model(lm, conditioner)` with the whole `T5Conditioner`, and batches of token ids
(`Batch.text_ids_BL`) that the step runs through T5 (the toy model trains its T5 this way).

Differences from the reference (each checked to give the same numbers, docs/parity.md):
  - Condition dropout nulls the projected condition in place (all zeros at the batch's text
    length); the reference re-tokenizes empty descriptions (one masked token). Cross-attention
    over all-zero keys and values gives the same output at any length.
  - Gradient clipping keeps torch's `clip_grad_norm_` formula, max_norm / (norm + 1e-6) capped at
    1 and always applied; optax's `clip_by_global_norm` divides by the norm itself and only when
    it exceeds the limit (a relative difference of 1e-6 / norm).
  - The EMA is optax's debiased `ema`. audiocraft's (count = count * decay + 1, weight 1 / count)
    gives the same weighted average of the updates' parameters; it starts from the initial
    weights, which the debiased EMA never needs.
  - The EMA steps after every `ema_every`-th update of the run; the reference counts batches
    within an epoch, the same thing when the epoch length (2,000 updates) is a multiple of 10.
  - The coin of condition dropout comes from `jax.random` (fold_in of the step), not torch's
    generator: the same probability, not the same draws.
  - Optional, beyond the reference: gradient accumulation, bfloat16 matmuls with float32 master
    weights, per-layer rematerialisation, LoRA adapters (`lora.py`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from audiogen_jax import lm as lm_lib
from audiogen_jax import patterns


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimizer, schedule, EMA and step options. Hashable: a static argument of the jitted step."""

    lr: float  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW
    eps: float = 1e-8  # AdamW
    weight_decay: float = 0.1  # decoupled (AdamW), on every trained parameter
    max_norm: float = 1.0  # global gradient-norm clip (torch formula); 0 = none
    schedule: str = "inverse_sqrt"  # "inverse_sqrt" (linear warm-up, then 1/sqrt) or "constant"
    warmup_steps: int = 3000  # linear warm-up length in updates (inverse_sqrt)
    warmup_init_lr: float = 0.0  # learning rate the warm-up starts from
    ema_decay: float | None = 0.99  # None = no EMA
    ema_every: int = 10  # EMA step after every N updates
    cfg_dropout: float = 0.1  # probability that a batch trains on the null condition
    accumulate: int = 1  # micro-batches per update (gradient accumulation)
    compute_dtype: str = "float32"  # "bfloat16": bf16 matmul inputs, float32 master weights
    remat: bool = False  # recompute each layer in the backward pass

    def __post_init__(self):
        checks = [
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (all(0 <= b < 1 for b in self.betas), f"betas must be in [0, 1), got {self.betas}"),
            (self.weight_decay >= 0 and self.max_norm >= 0, "weight_decay, max_norm must be >= 0"),
            (self.schedule in ("inverse_sqrt", "constant"), f"unknown schedule {self.schedule!r}"),
            (self.warmup_steps >= 1, f"warmup_steps must be >= 1, got {self.warmup_steps}"),
            (self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay must be in (0, 1)"),
            (self.ema_every >= 1, f"ema_every must be >= 1, got {self.ema_every}"),
            (0 <= self.cfg_dropout <= 1, f"cfg_dropout must be in [0, 1], got {self.cfg_dropout}"),
            (self.accumulate >= 1, f"accumulate must be >= 1, got {self.accumulate}"),
            (
                self.compute_dtype in ("float32", "bfloat16"),
                f"compute_dtype must be float32 or bfloat16, got {self.compute_dtype!r}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @classmethod
    def audiogen(cls, **overrides) -> TrainConfig:
        """The released AudioGen recipe (solver `audiogen/audiogen_base_16khz` over its defaults):
        AdamW lr 5e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1, max_norm 1.0, inverse_sqrt
        with 3,000 warm-up updates from 0, EMA decay 0.99 every 10 updates, CFG dropout 0.1."""
        base = dict(
            lr=5e-4,
            betas=(0.9, 0.95),
            eps=1e-8,
            weight_decay=0.1,
            max_norm=1.0,
            schedule="inverse_sqrt",
            warmup_steps=3000,
            warmup_init_lr=0.0,
            ema_decay=0.99,
            ema_every=10,
            cfg_dropout=0.1,
        )
        return cls(**{**base, **overrides})


# --------------------------------------------------------------------------------------------------
# The objective.


def lm_loss(
    lm: lm_lib.LMModel, codes_BKT, condition_BLD, *, remat: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced cross-entropy of the codes, as the reference's training step computes it.

    The codes are laid out in the delay pattern and only the first T + 1 + min(delays) steps are
    kept (`compute_predictions(..., keep_only_valid_steps=True)`); the logit that predicts code
    c[b, k, t] is the LM output at step t + delays[k]; cells whose step lies past the kept
    sequence are invalid (the last delays[k] frames of codebook k). Cross-entropy is averaged over
    each codebook's valid (b, t) cells, then over the K codebooks with equal weight
    (`_compute_cross_entropy`). Invalid cells are selected away, never multiplied by a mask.

    Args:
      lm: the LM.
      codes_BKT: int codes [B, K, T], values in [0, V).
      condition_BLD: the projected text condition the LM cross-attends to (the conditioner's
        output: zeros on padded and null rows).
      remat: rematerialise each layer in the backward pass.

    Returns:
      (ce scalar, ce_K [K]) float32.
    """
    cfg = lm.config
    B, K, T = codes_BKT.shape
    if K != cfg.n_q or T < 1:
        raise ValueError(f"codes must be [B, K={cfg.n_q}, T>=1], got shape {codes_BKT.shape}")
    codes_BKT = jnp.asarray(codes_BKT, jnp.int32)
    S = T + 1 + min(cfg.delays)
    seq_BKS = patterns.build_delayed(codes_BKT, cfg.delays, cfg.card)[:, :, :S]
    logits_BKSV = lm_lib.forward(lm, seq_BKS, condition_BLD, remat=remat)
    # Static index tables: the step whose output predicts (k, t), and whether it was computed.
    source_KT = np.arange(T)[None, :] + np.asarray(cfg.delays)[:, None]
    valid_KT = source_KT < S - 1
    source_KT = np.where(valid_KT, source_KT, 0)
    logits_BKTV = logits_BKSV[:, np.arange(K)[:, None], source_KT]
    target_logit_BKT = jnp.take_along_axis(logits_BKTV, codes_BKT[..., None], axis=-1)[..., 0]
    nll_BKT = jax.nn.logsumexp(logits_BKTV, axis=-1) - target_logit_BKT
    nll_BKT = jnp.where(valid_KT[None], nll_BKT, 0.0)
    count_K = B * valid_KT.sum(axis=1)
    ce_K = nll_BKT.sum(axis=(0, 2)) / count_K
    return ce_K.mean(), ce_K


def null_condition(condition_BLD: jax.Array, drop: jax.Array) -> jax.Array:
    """Classifier-free-guidance dropout: every row becomes the null condition when `drop` is True.

    The reference draws one coin per batch (`ClassifierFreeGuidanceDropout`, p = 0.1 for
    AudioGen) and, when it fires, replaces every description with None, which the T5 conditioner
    encodes as an all-masked row: exact zeros.
    """
    return jnp.where(drop, jnp.zeros_like(condition_BLD), condition_BLD)


# --------------------------------------------------------------------------------------------------
# Optimizer pieces.


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """The learning rate of update n + 1 given n updates done (optax's count).

    audiocraft's `InverseSquareRootLRScheduler` is a torch scheduler stepped after each update and
    already stepped once at construction, so update n (1-based) runs at
        init + n * (lr - init) / warmup   for n < warmup,
        lr * sqrt(warmup / n)             for n >= warmup.
    """
    if cfg.schedule == "constant":
        return optax.constant_schedule(cfg.lr)
    w, lr, init = cfg.warmup_steps, cfg.lr, cfg.warmup_init_lr
    delta = (lr - init) / w

    def decay(count):  # count counts from the first update at or past the warm-up
        return lr * np.sqrt(w) * jax.lax.rsqrt(jnp.asarray(count + w, jnp.float32))

    if w == 1:
        return decay
    warmup = optax.linear_schedule(init + delta, lr, transition_steps=w - 1)
    return optax.join_schedules([warmup, decay], boundaries=[w - 1])


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """torch's `clip_grad_norm_`: g * min(1, max_norm / (||g|| + 1e-6)), applied at every step."""

    def clip(updates, params=None):
        del params
        coef = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + 1e-6))
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates)

    return optax.stateless(clip)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Clip (torch formula) then AdamW with decoupled weight decay on every trained parameter."""
    adamw = optax.adamw(
        learning_rate_schedule(cfg),
        b1=cfg.betas[0],
        b2=cfg.betas[1],
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )
    return optax.chain(clip_by_global_norm_torch(cfg.max_norm), adamw) if cfg.max_norm else adamw


def make_ema(cfg: TrainConfig) -> optax.GradientTransformation | None:
    return None if cfg.ema_decay is None else optax.ema(cfg.ema_decay, debias=True)


def ema_params(cfg: TrainConfig, ema_state) -> Any:
    """The debiased EMA of the trained parameters (after at least one EMA step)."""
    return optax.tree.bias_correction(ema_state.ema, cfg.ema_decay, ema_state.count)


# --------------------------------------------------------------------------------------------------
# State and the compiled step.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    """One training batch: codes and the frozen text encoder's output, padded to the longest text.

    `text_BLC` holds T5's last hidden states (C its width); `text_mask_BL` is 1 on real tokens.
    When T5 trains with the LM (`split_model(lm, conditioner)`), `text_BLC` is None and
    `text_ids_BL` holds the token ids instead.
    """

    codes_BKT: jax.Array
    text_BLC: jax.Array | None
    text_mask_BL: jax.Array
    text_ids_BL: jax.Array | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything that changes during training (donated to the step, checkpointed).

    `params` is {"lm": ..., "output_proj": ...}: the trained variables of each module.
    """

    step: jax.Array  # int32: updates done
    params: Any
    opt_state: Any
    ema_state: Any  # optax EmaState, or None
    key: jax.Array  # uint32 [2]: the seed of condition dropout (folded with the step)


@dataclasses.dataclass(frozen=True)
class Parts:
    """Static structure: the graph definitions, and which variables train (nnx filters)."""

    lm_def: Any
    proj_def: Any


def split_model(lm, output_proj, *, lora: bool = False):
    """(parts, trainable {"lm", "output_proj"}, frozen {"lm", "output_proj"}).

    Full training updates every LM parameter and the conditioner's `output_proj` (as the
    reference); with LoRA adapters in the LM (`lora.add_lora`) only the adapters train.
    `output_proj` may also be the whole `t5.T5Conditioner` (T5 and its projection): then T5 trains
    too (the reference's `finetune`), under the "output_proj" key, and batches carry token ids.
    """
    train_filter = nnx.LoRAParam if lora else nnx.Param
    lm_def, lm_train, lm_frozen = nnx.split(lm, train_filter, ...)
    proj_filter = nnx.Nothing if lora else nnx.Param
    proj_def, proj_train, proj_frozen = nnx.split(output_proj, proj_filter, ...)
    parts = Parts(lm_def=lm_def, proj_def=proj_def)
    return (
        parts,
        {"lm": lm_train, "output_proj": proj_train},
        {"lm": lm_frozen, "output_proj": proj_frozen},
    )


def merge_model(parts: Parts, trainable, frozen):
    """(lm, output_proj) modules from the parts and variables (inverse of `split_model`)."""
    lm = nnx.merge(parts.lm_def, trainable["lm"], frozen["lm"])
    proj = nnx.merge(parts.proj_def, trainable["output_proj"], frozen["output_proj"])
    return lm, proj


def init_state(cfg: TrainConfig, trainable, seed: int) -> TrainState:
    """The state before the first update.

    The trained variables are copied: `train_step` donates the state's buffers, and the module
    they came from stays usable (drop it to free its copy).
    """
    ema = make_ema(cfg)
    trainable = jax.tree.map(jnp.copy, trainable)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=trainable,
        opt_state=make_optimizer(cfg).init(trainable),
        ema_state=None if ema is None else ema.init(trainable),
        key=jax.random.key_data(jax.random.key(seed)),
    )


def _cast_floats(tree, dtype):
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def _loss(trainable, frozen, parts: Parts, batch: Batch, drop, cfg: TrainConfig):
    lm_vars = (trainable["lm"], frozen["lm"])
    if cfg.compute_dtype == "bfloat16":  # the float32 masters stay in the state
        lm_vars = _cast_floats(lm_vars, jnp.bfloat16)
    lm, proj = merge_model(parts, {**trainable, "lm": lm_vars[0]}, {**frozen, "lm": lm_vars[1]})
    if batch.text_ids_BL is not None:  # T5 trains: the conditioner runs T5, projects and masks
        condition_BLD = proj(batch.text_ids_BL, batch.text_mask_BL)
    else:
        condition_BLD = proj(batch.text_BLC) * batch.text_mask_BL[..., None].astype(jnp.float32)
    condition_BLD = null_condition(condition_BLD, drop)
    return lm_loss(lm, batch.codes_BKT, condition_BLD, remat=cfg.remat)


def loss_and_grads(trainable, frozen, parts: Parts, batch: Batch, drop, cfg: TrainConfig):
    """(ce, ce_K, grads), averaged over `cfg.accumulate` equal micro-batches.

    Every micro-batch has the same number of valid cells per codebook, so the mean of the
    micro-batch losses is the whole batch's loss, and so are the gradients.
    """
    grad_fn = jax.value_and_grad(_loss, has_aux=True)
    if cfg.accumulate == 1:
        (ce, ce_K), grads = grad_fn(trainable, frozen, parts, batch, drop, cfg)
        return ce, ce_K, grads
    A = cfg.accumulate
    micro = jax.tree.map(lambda x: x.reshape(A, x.shape[0] // A, *x.shape[1:]), batch)

    def body(acc, mb):
        (ce, ce_K), g = grad_fn(trainable, frozen, parts, mb, drop, cfg)
        return jax.tree.map(jnp.add, acc, (ce, ce_K, g)), None

    zeros = (
        jnp.zeros((), jnp.float32),
        jnp.zeros((batch.codes_BKT.shape[1],), jnp.float32),
        jax.tree.map(jnp.zeros_like, trainable),
    )
    total, _ = jax.lax.scan(body, zeros, micro)
    return jax.tree.map(lambda x: x / A, total)


@dataclasses.dataclass(frozen=True)
class StateShardings:
    """Where a sharded state's arrays live, in a hashable form (a static argument of the step)."""

    treedef: Any
    leaves: tuple[jax.sharding.Sharding, ...]

    @classmethod
    def of(cls, state: TrainState) -> StateShardings | None:
        """The shardings of a state spread over a mesh (`sharding.py`); None on one device."""
        leaves, treedef = jax.tree.flatten(jax.tree.map(lambda x: x.sharding, state))
        if all(len(s.device_set) == 1 for s in leaves):
            return None
        return cls(treedef, tuple(leaves))

    def tree(self) -> TrainState:
        return jax.tree.unflatten(self.treedef, self.leaves)


@functools.partial(jax.jit, static_argnames=("parts", "cfg", "shardings"), donate_argnums=0)
def _train_step(
    state: TrainState,
    frozen,
    batch: Batch,
    parts: Parts,
    cfg: TrainConfig,
    shardings: StateShardings | None,
):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    drop = jax.random.uniform(key) < cfg.cfg_dropout
    ce, ce_K, grads = loss_and_grads(state.params, frozen, parts, batch, drop, cfg)
    if shardings is not None:
        # Gradients land where their parameters live (a reduce-scatter under fsdp, not a
        # replicated all-reduce), and so does everything the update writes.
        grads = jax.lax.with_sharding_constraint(grads, shardings.tree().params)
    grad_norm = optax.tree.norm(grads)
    tx = make_optimizer(cfg)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    ema_state = state.ema_state
    if ema_state is not None:
        ema = make_ema(cfg)
        ema_state = jax.lax.cond(
            step % cfg.ema_every == 0,
            lambda: ema.update(params, ema_state)[1],
            lambda: ema_state,
        )
    metrics = {
        "ce": ce,
        "ce_K": ce_K,
        "grad_norm": grad_norm,
        "lr": learning_rate_schedule(cfg)(state.step),
        "dropped": drop,
    }
    new_state = TrainState(
        step=step, params=params, opt_state=opt_state, ema_state=ema_state, key=state.key
    )
    if shardings is not None:
        new_state = jax.lax.with_sharding_constraint(new_state, shardings.tree())
    return new_state, metrics


def train_step(
    state: TrainState, frozen, batch: Batch, parts: Parts, cfg: TrainConfig
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update (one compiled program; `state` is donated: use the returned one).

    A state spread over a device mesh (placed with `sharding.train_shardings`, the batch with
    `sharding.batch_shardings`) comes back with every array where it was: the same program,
    partitioned by GSPMD.

    Args:
      state: from `init_state` or a previous step.
      frozen: the variables that do not train (from `split_model`).
      batch: codes [B, K, T] and text states [B, L, C] (or token ids [B, L] when T5 trains)
        + mask [B, L]; B divisible by `cfg.accumulate`.
      parts: from `split_model`.
      cfg: the training settings.

    Returns:
      (new state, metrics: ce, ce_K [K], grad_norm (before clipping), lr (of this update),
      dropped (whether this batch trained on the null condition)).
    """
    B = batch.codes_BKT.shape[0]
    if B % cfg.accumulate:
        raise ValueError(f"batch size {B} is not divisible by accumulate={cfg.accumulate}")
    text = batch.text_BLC if batch.text_ids_BL is None else batch.text_ids_BL
    if text is None or text.shape[0] != B or batch.text_mask_BL.shape != text.shape[:2]:
        raise ValueError(
            f"batch mismatch: codes {batch.codes_BKT.shape}, text "
            f"{getattr(text, 'shape', None)}, mask {batch.text_mask_BL.shape}"
        )
    return _train_step(state, frozen, batch, parts, cfg, StateShardings.of(state))
