"""Text conditioning: the T5 encoder, its tokenizer, and AudioGen's T5 conditioner.

AudioGen describes a sound with text, encodes the text with a frozen T5 encoder, projects the hidden
states to the LM width, and lets the LM cross-attend to them. This file holds all three steps:

    descriptions --tokenize--> ids_BL, mask_BL --T5EncoderModel--> h_BLD
                 --output_proj, times mask--> condition_BLD

The encoder is T5 (Raffel et al. 2020, "Exploring the limits of transfer learning...", section 2.1):
pre-norm blocks of self-attention and a feed-forward layer, an RMS-style layer norm (no mean, no
bias), no 1/sqrt(H) scaling of the attention scores (T5 folds it into the initialisation), and a
learned relative position bias that only block 0 owns and every block reuses. Positions enter
nowhere else.

References (the code this mirrors; attribute names follow its state-dict keys):
  - transformers 5.24 `models/t5/modeling_t5.py` (`T5EncoderModel`, `T5Stack`, `T5Attention`, ...).
  - audiocraft 1.3.0 `modules/conditioners.py` (`T5Conditioner.tokenize` and `.forward`).

Very long descriptions: neither audiocraft nor transformers truncates. audiocraft calls the
tokenizer with `padding=True` only, so a text longer than t5-large's `model_max_length` (512) draws
a transformers warning and is encoded whole. T5 has no position table to run out of: relative
distances at or beyond `relative_attention_max_distance` (128) share the last bucket, so any length
runs; the cost grows as L^2. `tokenize` below does exactly the same (no truncation), and the LM then
cross-attends to all L positions.

Differences from the reference:
  - Only the encoder (no decoder, no KV cache); bidirectional position buckets only.
  - The bucket table is computed once per length in numpy (float32 arithmetic as in torch, so the
    integer table matches bit for bit) and enters the jitted graph as a constant.
  - Dropout is absent (the reference runs T5 in eval mode).
  - No fp16 overflow clamping (`T5Block`): the encoder runs in float32, as audiocraft runs it.
  - The conditioner keeps the tokenizer on the module (`tokenizer`, static), so
    `encode(descriptions)` is one call.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from audiogen_jax import checkpoint, checks
from audiogen_jax.config import T5Config

SPIECE = "spiece.model"
# Files a T5 tokenizer directory may hold; `spiece.model` is required, the others are copied when
# present.
TOKENIZER_FILES = (
    SPIECE,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
CONDITIONER_FILE = "conditioner.safetensors"


# T5 runs in float32 in the reference, and torch's float32 matmuls stay float32 on GPUs; JAX's
# default there is TF32. Full precision costs little: T5 runs once per generation.
PRECISION = jax.lax.Precision.HIGHEST


def _normal(std: float) -> nnx.Initializer:
    return nnx.initializers.normal(stddev=std)


def _linear(d_in: int, d_out: int, std: float | None, rngs: nnx.Rngs, use_bias: bool = False):
    """nnx.Linear at full float32 precision; `std` None keeps flax's default init."""
    init = {} if std is None else {"kernel_init": _normal(std)}
    return nnx.Linear(d_in, d_out, use_bias=use_bias, precision=PRECISION, rngs=rngs, **init)


# --------------------------------------------------------------------------------------------------
# Relative positions.


def relative_position_bucket(
    relative_position: np.ndarray, *, num_buckets: int, max_distance: int
) -> np.ndarray:
    """T5's bidirectional relative-position buckets (transformers `_relative_position_bucket`).

    Half the buckets are for keys after the query, half for keys before (or at) it. In each half,
    distances below `num_buckets // 4` get a bucket each; larger ones share log-spaced buckets, and
    every distance at or beyond `max_distance` falls into the last one.

    Args:
      relative_position: integer array of key position minus query position, any shape.
      num_buckets: total buckets (both directions).
      max_distance: distance where the log-spaced buckets stop growing.

    Returns:
      int32 array of bucket ids in [0, num_buckets), same shape.
    """
    rel = np.asarray(relative_position, dtype=np.int64)
    half = num_buckets // 2
    bucket = (rel > 0).astype(np.int64) * half
    dist = np.abs(rel)
    max_exact = half // 2
    # The same float32 steps as torch, so that distances on a bucket edge round the same way.
    ratio = np.maximum(dist, 1).astype(np.float32) / np.float32(max_exact)
    log_steps = (
        np.log(ratio)
        / np.float32(math.log(max_distance / max_exact))
        * np.float32(half - max_exact)
    )
    large = np.minimum(max_exact + log_steps.astype(np.int64), half - 1)
    bucket = bucket + np.where(dist < max_exact, dist, large)
    return bucket.astype(np.int32)


def bucket_table(length: int, cfg: T5Config) -> np.ndarray:
    """[L, L] bucket of every (query, key) pair of a length-L text (query on rows)."""
    pos = np.arange(length)
    return relative_position_bucket(
        pos[None, :] - pos[:, None],
        num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance,
    )


# --------------------------------------------------------------------------------------------------
# The encoder, leaf modules first.


class T5LayerNorm(nnx.Module):
    """RMS norm: scale only, no mean subtraction, no bias; the mean square is taken in float32."""

    def __init__(self, dim: int, eps: float):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        var_BL1 = jnp.mean(jnp.square(x_BLD.astype(jnp.float32)), axis=-1, keepdims=True)
        return self.weight[...] * (x_BLD * jax.lax.rsqrt(var_BL1 + self.eps))


class T5Attention(nnx.Module):
    """Multi-head self-attention with an additive relative position bias and no score scaling."""

    def __init__(self, cfg: T5Config, *, has_relative_attention_bias: bool, rngs: nnx.Rngs):
        d, n, h = cfg.d_model, cfg.num_heads, cfg.d_kv
        self.num_heads, self.head_dim, self.config = n, h, cfg
        # transformers' initialisation (the 1/sqrt(H) a scaled dot product would apply lives in q's
        # std).
        self.q = _linear(d, n * h, (d * h) ** -0.5, rngs)
        self.k = _linear(d, n * h, d**-0.5, rngs)
        self.v = _linear(d, n * h, d**-0.5, rngs)
        self.o = _linear(n * h, d, (n * h) ** -0.5, rngs)
        self.relative_attention_bias = (
            nnx.Embed(
                cfg.relative_attention_num_buckets, n, embedding_init=_normal(d**-0.5), rngs=rngs
            )
            if has_relative_attention_bias
            else None
        )

    def compute_bias(self, length: int) -> jax.Array:
        """[N, L, L] position bias (query on rows); the bucket table is a trace-time constant."""
        if self.relative_attention_bias is None:
            raise ValueError("only the first block's attention owns the relative position bias")
        buckets_LL = jnp.asarray(bucket_table(length, self.config))
        return jnp.transpose(self.relative_attention_bias(buckets_LL), (2, 0, 1))

    def __call__(
        self, x_BLD: jax.Array, bias_NLL: jax.Array, mask_BL: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(output [B, L, D], attention weights [B, N, L(query), L(key)])."""
        b, length, _ = x_BLD.shape
        split = lambda t: t.reshape(b, length, self.num_heads, self.head_dim)  # noqa: E731
        q_BLNH, k_BLNH, v_BLNH = split(self.q(x_BLD)), split(self.k(x_BLD)), split(self.v(x_BLD))
        # Second 'L' of the score tensor: the key position, written M in the einsums.
        scores_BNLM = (
            jnp.einsum("BLNH,BMNH->BNLM", q_BLNH, k_BLNH, precision=PRECISION) + bias_NLL[None]
        )
        # A large finite negative, as transformers: a row with every key masked (a null description)
        # stays finite (a uniform average), and the conditioner's mask then zeroes it. -inf would
        # give NaN.
        neg = jnp.finfo(jnp.float32).min
        scores_BNLM = scores_BNLM + jnp.where(mask_BL[:, None, None, :] > 0, 0.0, neg)
        probs_BNLM = jax.nn.softmax(scores_BNLM.astype(jnp.float32), axis=-1)
        out_BLNH = jnp.einsum("BNLM,BMNH->BLNH", probs_BNLM, v_BLNH, precision=PRECISION)
        return self.o(out_BLNH.reshape(b, length, -1)), probs_BNLM


class T5LayerSelfAttention(nnx.Module):
    def __init__(self, cfg: T5Config, *, has_relative_attention_bias: bool, rngs: nnx.Rngs):
        self.SelfAttention = T5Attention(
            cfg, has_relative_attention_bias=has_relative_attention_bias, rngs=rngs
        )
        self.layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def __call__(self, x_BLD, bias_NLL, mask_BL):
        out_BLD, probs_BNLM = self.SelfAttention(self.layer_norm(x_BLD), bias_NLL, mask_BL)
        return x_BLD + out_BLD, probs_BNLM


class T5DenseActDense(nnx.Module):
    """T5 v1.0 feed-forward: wo(relu(wi(x))), no biases."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        self.wi = _linear(d, f, d**-0.5, rngs)
        self.wo = _linear(f, d, f**-0.5, rngs)

    def __call__(self, x_BLD):
        return self.wo(jax.nn.relu(self.wi(x_BLD)))


class T5DenseGatedActDense(nnx.Module):
    """T5 v1.1 "gated-gelu" feed-forward: wo(gelu_tanh(wi_0(x)) * wi_1(x)) ("gelu_new")."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        self.wi_0 = _linear(d, f, d**-0.5, rngs)
        self.wi_1 = _linear(d, f, d**-0.5, rngs)
        self.wo = _linear(f, d, f**-0.5, rngs)

    def __call__(self, x_BLD):
        return self.wo(jax.nn.gelu(self.wi_0(x_BLD), approximate=True) * self.wi_1(x_BLD))


class T5LayerFF(nnx.Module):
    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        ff = T5DenseGatedActDense if cfg.feed_forward_proj == "gated-gelu" else T5DenseActDense
        self.DenseReluDense = ff(cfg, rngs=rngs)  # the reference's name, gated or not
        self.layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def __call__(self, x_BLD):
        return x_BLD + self.DenseReluDense(self.layer_norm(x_BLD))


class T5Block(nnx.Module):
    """`layer.0` self-attention, `layer.1` feed-forward, each pre-normed with a residual."""

    def __init__(self, cfg: T5Config, *, has_relative_attention_bias: bool, rngs: nnx.Rngs):
        self.layer = nnx.List(
            [
                T5LayerSelfAttention(
                    cfg, has_relative_attention_bias=has_relative_attention_bias, rngs=rngs
                ),
                T5LayerFF(cfg, rngs=rngs),
            ]
        )

    def __call__(self, x_BLD, bias_NLL, mask_BL):
        x_BLD, probs_BNLM = self.layer[0](x_BLD, bias_NLL, mask_BL)
        return self.layer[1](x_BLD), probs_BNLM


class T5Stack(nnx.Module):
    """The blocks and the final norm; block 0's position bias is computed once and shared."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.block = nnx.List(
            [
                T5Block(cfg, has_relative_attention_bias=i == 0, rngs=rngs)
                for i in range(cfg.num_layers)
            ]
        )
        self.final_layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def __call__(self, x_BLD, mask_BL):
        bias_NLL = self.block[0].layer[0].SelfAttention.compute_bias(x_BLD.shape[1])
        probs = []
        for block in self.block:
            x_BLD, probs_BNLM = block(x_BLD, bias_NLL, mask_BL)
            probs.append(probs_BNLM)
        return self.final_layer_norm(x_BLD), tuple(probs)


def _check_ids_mask(ids_BL, mask_BL, vocab_size: int) -> None:
    if ids_BL.ndim != 2:
        raise ValueError(f"token ids must be [B, L], got shape {tuple(ids_BL.shape)}")
    if not jnp.issubdtype(ids_BL.dtype, jnp.integer):
        raise ValueError(f"token ids must be integers, got {ids_BL.dtype}")
    if mask_BL is not None and tuple(mask_BL.shape) != tuple(ids_BL.shape):
        raise ValueError(
            f"mask shape {tuple(mask_BL.shape)} != token ids shape {tuple(ids_BL.shape)}"
        )
    if checks.is_concrete(ids_BL) and ids_BL.size:
        lo, hi = int(np.min(ids_BL)), int(np.max(ids_BL))
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"token ids must lie in [0, {vocab_size}), got values in [{lo}, {hi}] "
                "(is the tokenizer the one this T5 was trained with?)"
            )


class T5EncoderModel(nnx.Module):
    """The T5 encoder: token embedding `shared` (no scaling) followed by the `encoder` stack."""

    def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
        self.config = cfg
        self.shared = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=_normal(1.0), rngs=rngs)
        self.encoder = T5Stack(cfg, rngs=rngs)

    def __call__(
        self, ids_BL: jax.Array, mask_BL: jax.Array | None = None, *, return_attention: bool = False
    ):
        """Encodes token ids.

        Args:
          ids_BL: int token ids [B, L].
          mask_BL: 1 for real tokens, 0 for padding [B, L]; None attends everywhere.
          return_attention: also return every block's attention weights.

        Returns:
          The last hidden state [B, L, D] (float32); with `return_attention`, also a tuple with one
          [B, N, L(query), L(key)] array per block.
        """
        _check_ids_mask(ids_BL, mask_BL, self.config.vocab_size)
        if mask_BL is None:
            mask_BL = jnp.ones(ids_BL.shape, jnp.int32)
        h_BLD, probs = self.encoder(self.shared(ids_BL), mask_BL)
        return (h_BLD, probs) if return_attention else h_BLD


# --------------------------------------------------------------------------------------------------
# Tokenizer.


def _tokenizer_dir(directory: str) -> str:
    for d in (directory, os.path.join(directory, checkpoint.TOKENIZER_DIR)):
        if os.path.isfile(os.path.join(d, SPIECE)):
            return d
    raise ValueError(
        f"{directory} holds no T5 tokenizer: {SPIECE} is missing (looked in {directory} and "
        f"{os.path.join(directory, checkpoint.TOKENIZER_DIR)})"
    )


def _tokenizer_class():
    """transformers' `T5Tokenizer`, imported only when a tokenizer is loaded (seconds to import).

    Without torch, importing transformers logs "PyTorch was not found. Models won't be available":
    true and irrelevant here (only the tokenizer is used, which needs no torch). That one message
    is an "advisory" warning, which transformers skips when TRANSFORMERS_NO_ADVISORY_WARNINGS is
    set; it is set for the import only, so transformers' other warnings still show.
    """
    key = "TRANSFORMERS_NO_ADVISORY_WARNINGS"
    saved = os.environ.get(key)
    os.environ[key] = "1"
    try:
        from transformers import T5Tokenizer
    finally:
        if saved is None:
            del os.environ[key]
        else:
            os.environ[key] = saved
    return T5Tokenizer


def train_tokenizer(
    directory: str | os.PathLike,
    sentences,
    vocab_size: int,
    model_type: str = "unigram",
    num_threads: int = 1,
) -> str:
    """Trains a sentencepiece model with T5's ids (pad 0, eos 1, unk 2, no bos) on `sentences` and
    writes it as DIR/spiece.model (atomically); `load_tokenizer(DIR)` then adds T5's 100
    `<extra_id_*>` tokens. Used by the tiny-random model and the toy model, which train their own.

    Returns:
      `directory`, as a string.
    """
    import io

    import sentencepiece as spm  # a dependency of transformers' T5Tokenizer; only training needs it

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=num_threads,
        minloglevel=2,
    )
    path = os.path.join(directory, SPIECE)
    with open(path + ".partial", "wb") as f:
        f.write(model.getvalue())
    os.replace(path + ".partial", path)
    return directory


def load_tokenizer(directory_or_hub_id: str | os.PathLike):
    """transformers' `T5Tokenizer`, which audiocraft uses.

    Args:
      directory_or_hub_id: a directory holding `spiece.model` (and possibly tokenizer.json etc.), a
        converted directory (its `tokenizer/` is used), or a hub id such as "t5-large" where the
        network allows.
    """
    T5Tokenizer = _tokenizer_class()

    src = os.fspath(directory_or_hub_id)
    if os.path.isdir(src):
        src = _tokenizer_dir(src)
    elif os.path.exists(src):
        raise ValueError(f"{src} is a file; give the directory that holds {SPIECE}")
    try:
        # transformers v5 ignores `T5Tokenizer(vocab_file=...)`; from_pretrained(dir) reads it.
        return T5Tokenizer.from_pretrained(src)
    except OSError as e:
        raise ValueError(
            f"could not load a T5 tokenizer from {src!r}: not a local directory, and the hub "
            f"download failed ({e})"
        ) from e


def tokenize(tokenizer, descriptions: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and mask exactly as audiocraft's `T5Conditioner.tokenize`.

    None becomes "", every text gets EOS appended, rows are right-padded with id 0 to the longest
    text (no truncation at any length), and rows whose text is "" get an all-zero mask: they are the
    null condition.

    Args:
      tokenizer: from `load_tokenizer`.
      descriptions: B texts or None.

    Returns:
      (ids_BL, mask_BL), both int32 numpy arrays.
    """
    if isinstance(descriptions, (str, bytes)) or not isinstance(descriptions, Sequence):
        raise ValueError(
            f"descriptions must be a list of strings or None, got {type(descriptions).__name__}"
        )
    if len(descriptions) == 0:
        raise ValueError("descriptions is empty: give at least one description (or None)")
    for i, d in enumerate(descriptions):
        if d is not None and not isinstance(d, str):
            raise ValueError(
                f"description {i} is a {type(d).__name__} ({d!r}); expected a string or None"
            )
    entries = ["" if d is None else d for d in descriptions]
    enc = tokenizer(entries, padding=True, return_tensors="np")
    ids_BL = np.asarray(enc["input_ids"], dtype=np.int32)
    mask_BL = np.array(enc["attention_mask"], dtype=np.int32)
    mask_BL[[i for i, e in enumerate(entries) if e == ""], :] = 0
    return ids_BL, mask_BL


# --------------------------------------------------------------------------------------------------
# The conditioner: what the LM receives.


@jax.jit
def _condition(conditioner: T5Conditioner, ids_BL: jax.Array, mask_BL: jax.Array) -> jax.Array:
    return conditioner(ids_BL, mask_BL)


class T5Conditioner(nnx.Module):
    """T5 states projected to the LM width, zeroed where the mask is 0 (audiocraft `T5Conditioner`).

    Attributes:
      t5: the frozen `T5EncoderModel`.
      output_proj: `nnx.Linear(d_model, output_dim)` with bias; its weights come from the LM
        checkpoint.
      tokenizer: the T5 tokenizer when loaded with `from_pretrained` (static; not a parameter),
        else None.
    """

    def __init__(self, cfg: T5Config, output_dim: int, *, rngs: nnx.Rngs, name: str = "t5-large"):
        if output_dim < 1:
            raise ValueError(f"output_dim must be >= 1, got {output_dim}")
        self.config = cfg
        self.name = name
        self.t5 = T5EncoderModel(cfg, rngs=rngs)
        self.output_proj = _linear(cfg.d_model, output_dim, None, rngs, use_bias=True)
        self.tokenizer = None

    @property
    def output_dim(self) -> int:
        return self.output_proj.out_features

    def __call__(self, ids_BL: jax.Array, mask_BL: jax.Array) -> jax.Array:
        """The condition [B, L, output_dim] = output_proj(t5(ids, mask)) * mask[..., None].

        The mask multiplies after the projection (as the reference), so padded positions and null
        rows (all-zero mask) are exactly 0, bias included.
        """
        _check_ids_mask(ids_BL, mask_BL, self.config.vocab_size)
        h_BLD = self.t5(ids_BL, mask_BL)
        return self.output_proj(h_BLD) * mask_BL[..., None].astype(jnp.float32)

    def encode(self, descriptions: Sequence[str | None]) -> tuple[jax.Array, np.ndarray]:
        """Tokenizes with `self.tokenizer` and runs the jitted conditioner.

        Returns:
          (condition_BLD, mask_BL): as `__call__`, and the int32 numpy mask from `tokenize`.
        """
        if self.tokenizer is None:
            raise ValueError(
                "this conditioner has no tokenizer; load it with T5Conditioner.from_pretrained, "
                "or call tokenize(load_tokenizer(dir), descriptions) and the module yourself"
            )
        ids_BL, mask_BL = tokenize(self.tokenizer, descriptions)
        return _condition(self, jnp.asarray(ids_BL), jnp.asarray(mask_BL)), mask_BL

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        with_tokenizer: bool = True,
        shardings: checkpoint.Shardings | None = None,
    ) -> T5Conditioner:
        """Loads a converted directory.

        Reads DIR/t5.safetensors (config['t5']), DIR/conditioner.safetensors (config['conditioner'];
        keys `kernel` [d_model, D] and `bias` [D], written by `convert_lm`) and DIR/tokenizer/.
        `shardings` (as `checkpoint.load_module`'s) covers the whole conditioner: keys `t5.*` and
        `output_proj.*`.
        """
        directory = os.fspath(directory)
        cfg = T5Config.from_dict(checkpoint.read_config(directory, "t5"))
        cond = checkpoint.read_config(directory, "conditioner")
        if cond.get("input_dim") != cfg.d_model:
            raise checkpoint.CheckpointError(
                f"{directory}: config['conditioner'] input_dim {cond.get('input_dim')} != "
                f"T5 d_model {cfg.d_model}"
            )
        out_dim = int(cond["output_dim"])
        model = checkpoint.abstract_module(
            lambda: cls(
                cfg, out_dim, rngs=checkpoint.SHAPE_ONLY_RNGS, name=cond.get("name", "t5-large")
            )
        )
        placed = shardings(model) if callable(shardings) else shardings

        def part(prefix: str):
            if placed is None:
                return None
            return {k[len(prefix) :]: v for k, v in placed.items() if k.startswith(prefix)}

        t5 = checkpoint.load_module(
            lambda: T5EncoderModel(cfg, rngs=checkpoint.SHAPE_ONLY_RNGS),
            os.path.join(directory, checkpoint.WEIGHT_FILES["t5"]),
            shardings=part("t5."),
        )
        proj = checkpoint.load_module(
            lambda: _linear(cfg.d_model, out_dim, None, checkpoint.SHAPE_ONLY_RNGS, use_bias=True),
            os.path.join(directory, CONDITIONER_FILE),
            shardings=part("output_proj."),
        )
        model.t5, model.output_proj = t5, proj
        if with_tokenizer:
            tokenizer = load_tokenizer(os.path.join(directory, checkpoint.TOKENIZER_DIR))
            if len(tokenizer) > cfg.vocab_size:
                raise checkpoint.CheckpointError(
                    f"{directory}: the tokenizer has {len(tokenizer)} ids, T5 only {cfg.vocab_size}"
                )
            model.tokenizer = tokenizer
        return model
