"""The delay-pattern transformer language model over EnCodec codes, with an explicit KV cache.

AudioGen models K parallel streams of codes (one per residual codebook) with a single decoder-only
transformer: at every step of the delayed layout (see `patterns.py`) the K codes of that step are
embedded and summed, a sinusoidal position is added, a stack of pre-norm layers (causal
self-attention, cross-attention to the projected T5 text condition, GELU feed-forward) runs, and
K linear heads give the logits of the next step's K codes.

Mirrors audiocraft 1.3.0 `models/lm.py::LMModel.forward` and `modules/transformer.py`
(`StreamingTransformer`, `StreamingTransformerLayer`, `StreamingMultiheadAttention` on its custom,
`memory_efficient` path, `create_sin_embedding`). Attribute names follow the checkpoint keys
(`emb`, `transformer.layers.{i}.self_attn`, `cross_attention`, `linear1`, `linear2`, `norm1`,
`norm_cross`, `norm2`, `out_norm`, `linears`), so `lm_params.py` is mostly renames.

Shapes: B batch, K codebooks, S steps of the delayed layout, L text tokens, D model width,
F feed-forward width, N heads, H head width, V codebook size (`card`), M cache length (max steps).

Inference is a set of pure functions over an `LMModel` and an explicit `KVCache` pytree:
  `forward(lm, seq_BKS, condition_BLD)`       teacher-forced logits [B, K, S, V]
  `init_cache(lm, condition_BLD, max_steps)`  preallocated cache, cross-attention K/V computed once
  `step(lm, seq_BKS, cache, start)`           S new steps at positions start.., and the new cache
The public functions validate their inputs (clear `ValueError`s) and call jitted cores. One
`Attention` module serves both attentions of a layer (`cross=False`: causal self-attention over
the cache; `cross=True`: the text condition), so `TransformerLayer.__call__` is the pre-norm
layer's three residual updates.

Differences from the reference:
  - The packed `in_proj_weight` is stored as three projections `q_proj`, `k_proj`, `v_proj`
    (same rows, same math).
  - The self-attention cache is preallocated to `max_steps` and written in place with
    `dynamic_update_slice`; attention runs over the whole cache with a position mask, instead of
    growing the cache with `torch.cat`. The cache is head-major ([B, N, M, H], the reference's is
    [B, M, N, H]) so the attention products read it without a per-step transposed copy
    (docs/performance.md). The reference refuses a multi-step call on a non-empty cache; `step`
    allows it (causal within the block), which a prompt prefill uses.
  - Cross-attention keys/values of the condition are computed once per generation (`init_cache`),
    not at every step as the reference does.
  - Cross-attention takes an optional key mask (`context_mask_BL`); the reference has none.
    Generation pads the text to a few bucketed lengths and masks only the positions it added, so
    the positions the reference attends are exactly the ones attended here.
  - Linear kernels are held `[in, out]` for float32 weights (the layout XLA:CPU streams fastest)
    and `[out, in]` (the checkpoint's layout) for bfloat16/float16 weights, whose matmuls take
    16-bit inputs and accumulate in float32 (`preferred_element_type`); docs/performance.md has
    the timings behind the choice. On disk every kernel is `[in, out]`, whatever the dtype;
    `from_pretrained` lays them out for the dtype it loads. Activations, softmax and norms are
    float32 throughout.
  - Opt-in int8 weights (`astype(jnp.int8)`, see `int8.py`), beyond the reference.
  - Only what AudioGen uses is implemented: pre-norm (`norm_first`), LayerNorm, sinusoidal
    positions, GELU, `kv_repeat == 1`, no layer scale, no q/k LayerNorm, no rope. The converter
    refuses checkpoints that need anything else.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from audiogen_jax import checkpoint, checks, int8
from audiogen_jax.config import LMConfig

# A large finite negative score: masked logits vanish in the softmax without risking inf - inf.
_MASKED = -1e30


# Every kernel is stored [in, out] in lm.safetensors, whatever its dtype; the header says so under
# this key, which files written before this layout was fixed (16-bit kernels [out, in]) lack.
DISK_LAYOUT = "in_out"
LAYOUT_KEY = "kernel_layout"


def kernel_layout(param_dtype) -> str:
    """The layout kernels are held in at run time: 'in_out' for float32, 'out_in' (the checkpoint's)
    for 16-bit and int8 ones."""
    return "in_out" if jnp.dtype(param_dtype) == jnp.float32 else "out_in"


def _float_dtype(param_dtype) -> jnp.dtype:
    """The dtype of the non-matmul weights (embeddings, norms, biases): float32 in an int8 model."""
    return jnp.dtype(jnp.float32) if jnp.dtype(param_dtype) == jnp.int8 else jnp.dtype(param_dtype)


def sin_embedding(positions_S: jax.Array, dim: int, max_period: float) -> jax.Array:
    """Sinusoidal positions, exactly as audiocraft's `create_sin_embedding`, in float32.

    The cosine half comes first and the frequency exponent divides by `half - 1` (not `half`).

    Args:
      positions_S: integer positions [S].
      dim: D (even).
      max_period: the longest period.

    Returns:
      [S, D] float32.
    """
    half = dim // 2
    positions = positions_S.astype(jnp.float32)[:, None]
    exponent = jnp.arange(half, dtype=jnp.float32) / (half - 1)
    phase = positions / (jnp.float32(max_period) ** exponent)
    return jnp.concatenate([jnp.cos(phase), jnp.sin(phase)], axis=-1)


# --------------------------------------------------------------------------------------------------
# Leaf modules.


class Linear(nnx.Module):
    """y = x W (+ b), with W held in the layout that streams fastest for its dtype (module doc).

    An int8 `param_dtype` (opt-in, `LMModel.astype(jnp.int8)`) holds W as int8 [out, in] with a
    float32 scale per output channel (`kernel_scale`); see `int8.py`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool,
        param_dtype,
        rngs: nnx.Rngs,
        layout: str | None = None,
    ):
        self.layout = layout or kernel_layout(param_dtype)
        shape = (
            (in_features, out_features) if self.layout == "in_out" else (out_features, in_features)
        )
        std = 1.0 / math.sqrt(in_features)
        w = jax.random.normal(rngs.params(), shape, jnp.float32) * std
        scale = None
        if jnp.dtype(param_dtype) == jnp.int8:
            if self.layout != "out_in":
                raise ValueError("int8 kernels are stored [out, in]")
            w, scale = int8.quantize_kernel(w)
        self.kernel = nnx.Param(w.astype(param_dtype))
        self.kernel_scale = nnx.Param(scale) if scale is not None else None
        bias_dtype = _float_dtype(param_dtype)
        self.bias = nnx.Param(jnp.zeros((out_features,), bias_dtype)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.kernel[...]
        contract_w = 0 if self.layout == "in_out" else 1
        if self.kernel_scale is not None:
            y = int8.matmul(x, w, self.kernel_scale[...])
            return y if self.bias is None else y + self.bias[...]
        # 16-bit weights: feed the dot 16-bit inputs and accumulate in float32. A 16x16->16 dot, or
        # an upcast of the weights inside jit, is several times slower on XLA:CPU.
        y = jax.lax.dot_general(
            x.astype(w.dtype),
            w,
            (((x.ndim - 1,), (contract_w,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y


class Embed(nnx.Module):
    """A lookup table of `num` rows of width `dim` (audiocraft `ScaledEmbedding`: no scaling)."""

    def __init__(self, num: int, dim: int, *, param_dtype, rngs: nnx.Rngs):
        param_dtype = _float_dtype(param_dtype)
        self.embedding = nnx.Param(
            (jax.random.normal(rngs.params(), (num, dim), jnp.float32) / math.sqrt(dim)).astype(
                param_dtype
            )
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(jnp.float32)


class LayerNorm(nnx.Module):
    """torch `nn.LayerNorm`: two-pass mean and biased variance, in float32."""

    def __init__(self, dim: int, *, eps: float, param_dtype):
        param_dtype = _float_dtype(param_dtype)
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)


# --------------------------------------------------------------------------------------------------
# Attention.


def _attend(
    q_BNSH: jax.Array, k_BNMH: jax.Array, v_BNMH: jax.Array, mask: jax.Array | None
) -> jax.Array:
    """Scaled dot-product attention (scale 1/sqrt(H)); `mask` (broadcast to [B, N, S, M]) True
    where a query may look.

    Everything is head-major ([B, N, ., H]): both products are then batched over (B, N) with no
    transpose of the keys/values, which XLA would otherwise copy from the cache at every step.
    """
    scale = 1.0 / math.sqrt(q_BNSH.shape[-1])
    scores_BNSM = jnp.einsum("BNSH,BNMH->BNSM", q_BNSH * scale, k_BNMH)
    if mask is not None:
        scores_BNSM = jnp.where(mask, scores_BNSM, _MASKED)
    weights_BNSM = jax.nn.softmax(scores_BNSM, axis=-1)
    return jnp.einsum("BNSM,BNMH->BNSH", weights_BNSM, v_BNMH)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KV:
    """The keys and values one attention reads, head-major (the layout `_attend` reads directly)."""

    keys: jax.Array  # [B, N, M, H]: M cached steps (self-attention) or L text tokens (cross)
    values: jax.Array  # [B, N, M, H]

    def write(self, new: KV, start: jax.Array) -> KV:
        """A copy with the S steps of `new` ([B, N, S, H]) written at positions start..start+S-1."""
        zero = jnp.zeros((), jnp.int32)
        at = (zero, zero, start, zero)
        return KV(
            keys=jax.lax.dynamic_update_slice(self.keys, new.keys.astype(self.keys.dtype), at),
            values=jax.lax.dynamic_update_slice(
                self.values, new.values.astype(self.values.dtype), at
            ),
        )


class Attention(nnx.Module):
    """Multi-head attention (reference `StreamingMultiheadAttention`), with an explicit KV cache.

    `cross=False`: causal self-attention over the steps so far. `cross=True`: attention to a context
    (the text condition), with no mask unless `context_mask_BL` is given: the reference attends
    every text position, padding included. The reference packs q/k/v in one matrix; here they are
    three projections with the same rows.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        cross: bool,
        use_bias: bool,
        param_dtype,
        rngs: nnx.Rngs,
        layout: str | None = None,
    ):
        self.num_heads = num_heads
        self.cross = cross
        lin = functools.partial(
            Linear, dim, dim, use_bias=use_bias, param_dtype=param_dtype, rngs=rngs, layout=layout
        )
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = lin(), lin(), lin(), lin()

    def _split_heads(self, y_BSD: jax.Array) -> jax.Array:
        y_BSNH = y_BSD.reshape(*y_BSD.shape[:-1], self.num_heads, -1)
        return jnp.swapaxes(y_BSNH, -3, -2)

    def keys_values(self, x_BMD: jax.Array) -> KV:
        """The keys and values of M positions of x: what `__call__` attends to."""
        return KV(self._split_heads(self.k_proj(x_BMD)), self._split_heads(self.v_proj(x_BMD)))

    def __call__(
        self,
        x_BSD: jax.Array,
        context_BLD: jax.Array | None = None,
        *,
        cache: KV | None = None,
        start: jax.Array | None = None,
        context_mask_BL: jax.Array | None = None,
    ) -> tuple[jax.Array, KV | None]:
        """Attention for S new steps.

        Args:
          x_BSD: the (normed) residual stream of the new steps: the queries, and for
            self-attention the new keys/values too.
          context_BLD: cross-attention without a cache: the condition, projected here.
          cache: self-attention: None (teacher forcing: causal within x) or the keys/values of the
            steps so far [B, N, M, H], preallocated to M steps, into which the new steps are
            written at `start`. Cross-attention: the context's keys/values from `keys_values`
            (computed once per generation, see `init_cache`).
          start: with a self-attention cache, int32 scalar: the position of the first new step.
          context_mask_BL: cross-attention only: bool, True where a text position may be attended;
            None attends all of them (the reference). Generation pads the text to a bucketed
            length and masks only the positions it added (`generate.py`).

        Returns:
          (out_BSD, the cache: updated by self-attention, as given by cross-attention).
        """
        q_BNSH = self._split_heads(self.q_proj(x_BSD))
        S = x_BSD.shape[1]
        if self.cross:
            # The reference has no key padding mask: its padded condition rows are exact zeros and
            # are attended like the others. Only positions beyond its padding are masked here.
            kv = cache if cache is not None else self.keys_values(context_BLD)
            mask = None if context_mask_BL is None else context_mask_BL[:, None, None, :]
        elif cache is None:
            kv, mask = self.keys_values(x_BSD), jnp.tril(jnp.ones((S, S), bool))
        else:
            kv = cache = cache.write(self.keys_values(x_BSD), start)
            # Causal by position: a query at position p sees the cached steps 0..p.
            query_pos_S = start + jnp.arange(S, dtype=jnp.int32)
            key_pos_M = jnp.arange(kv.keys.shape[2], dtype=jnp.int32)
            mask = key_pos_M[None, :] <= query_pos_S[:, None]
        o_BSNH = jnp.swapaxes(_attend(q_BNSH, kv.keys, kv.values, mask), -3, -2)
        return self.out_proj(o_BSNH.reshape(*o_BSNH.shape[:-2], -1)), cache


class TransformerLayer(nnx.Module):
    """The pre-norm layer (reference `StreamingTransformerLayer` with `norm_first`)."""

    def __init__(self, cfg: LMConfig, *, param_dtype, rngs: nnx.Rngs, layout: str | None = None):
        kw = {"param_dtype": param_dtype, "rngs": rngs, "layout": layout}
        attention = functools.partial(
            Attention, cfg.dim, cfg.num_heads, use_bias=cfg.bias_attn, **kw
        )
        self.self_attn = attention(cross=False)
        self.cross_attention = attention(cross=True)
        self.linear1 = Linear(cfg.dim, cfg.ffn_dim, use_bias=cfg.bias_ff, **kw)
        self.linear2 = Linear(cfg.ffn_dim, cfg.dim, use_bias=cfg.bias_ff, **kw)
        norm = functools.partial(LayerNorm, cfg.dim, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.norm1, self.norm_cross, self.norm2 = norm(), norm(), norm()

    def feed_forward(self, x_BSD: jax.Array) -> jax.Array:
        return self.linear2(jax.nn.gelu(self.linear1(x_BSD), approximate=False))

    def __call__(
        self,
        x_BSD: jax.Array,
        condition_BLD: jax.Array | None = None,
        *,
        self_kv: KV | None = None,
        cross_kv: KV | None = None,
        start: jax.Array | None = None,
        context_mask_BL: jax.Array | None = None,
    ) -> tuple[jax.Array, KV | None]:
        """x += SA(norm1 x); x += CA(norm_cross x, condition); x += FF(norm2 x), for S new steps.

        Args:
          x_BSD: the residual stream of the new steps.
          condition_BLD: the projected text condition (when `cross_kv` is not given).
          self_kv, start: the self-attention cache and the position of the first new step (see
            `Attention`); None for teacher forcing.
          cross_kv: the condition's keys/values for this layer (`init_cache`).
          context_mask_BL: which text positions cross-attention may attend (None: all).

        Returns:
          (x_BSD, self_kv with the new steps written, or None).
        """
        sa_BSD, self_kv = self.self_attn(self.norm1(x_BSD), cache=self_kv, start=start)
        x_BSD = x_BSD + sa_BSD
        ca_BSD, _ = self.cross_attention(
            self.norm_cross(x_BSD), condition_BLD, cache=cross_kv, context_mask_BL=context_mask_BL
        )
        x_BSD = x_BSD + ca_BSD
        x_BSD = x_BSD + self.feed_forward(self.norm2(x_BSD))
        return x_BSD, self_kv


class Transformer(nnx.Module):
    def __init__(self, cfg: LMConfig, *, param_dtype, rngs: nnx.Rngs, layout: str | None = None):
        self.layers = nnx.List(
            [
                TransformerLayer(cfg, param_dtype=param_dtype, rngs=rngs, layout=layout)
                for _ in range(cfg.num_layers)
            ]
        )


class LMModel(nnx.Module):
    """Embeddings -> sinusoidal positions -> pre-norm transformer -> out_norm -> K heads.

    Args:
      cfg: the LM config.
      rngs: random init (tests, the tiny model); converted weights come through `from_pretrained`.
      param_dtype: weight dtype (float32, or bfloat16 to halve the bytes streamed per step; int8
        quantizes the matmul kernels, an opt-in beyond the reference, see `Linear`).
      layout: override the kernel layout ('in_out' or 'out_in'); default from `param_dtype`.
    """

    def __init__(
        self, cfg: LMConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32, layout: str | None = None
    ):
        self.config = cfg
        self.emb = nnx.List(
            [
                Embed(cfg.card + 1, cfg.dim, param_dtype=param_dtype, rngs=rngs)
                for _ in range(cfg.n_q)
            ]
        )
        self.transformer = Transformer(cfg, param_dtype=param_dtype, rngs=rngs, layout=layout)
        self.out_norm = LayerNorm(cfg.dim, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.linears = nnx.List(
            [
                Linear(
                    cfg.dim,
                    cfg.card,
                    use_bias=cfg.bias_proj,
                    param_dtype=param_dtype,
                    rngs=rngs,
                    layout=layout,
                )
                for _ in range(cfg.n_q)
            ]
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, dtype=None, shardings: checkpoint.Shardings | None = None
    ) -> LMModel:
        """Loads DIR/config.json['lm'] + DIR/lm.safetensors.

        Each kernel is read from the file's `[in, out]` and laid out for the dtype as it is read
        (`kernel_layout`), so no second copy of the model is ever made: an int8 kernel is
        quantized from its own float tensor as that is read (`checkpoint.load_module`), with the
        same values as `astype(jnp.int8)` of the float model.

        Args:
          directory: a converted directory (`convert_weights.py --lm ... --out DIR`).
          dtype: None keeps the file's weight dtype (a bf16 file stays bf16); float32, bfloat16 or
            float16 casts each tensor as it is read; int8 quantizes each kernel as it is read
            (embeddings, norms and biases become float32).
          shardings: where each weight goes (`checkpoint.load_module`); default the default
            device. An int8 kernel is quantized from its float shards.
        """
        cfg = LMConfig.from_dict(checkpoint.read_config(directory, "lm"))
        path = os.path.join(directory, checkpoint.WEIGHT_FILES["lm"])
        target = _stored_dtype(path) if dtype is None else _check_dtype(dtype)
        layout = kernel_layout(target)
        lm = checkpoint.load_module(
            lambda: cls(cfg, rngs=checkpoint.SHAPE_ONLY_RNGS, param_dtype=target, layout=layout),
            path,
            dtype=_float_dtype(target),
            transposed=lambda key: layout != DISK_LAYOUT and key.endswith(".kernel"),
            shardings=shardings,
            quantize=int8.quantize_kernel,
        )
        if target == jnp.int8:
            checkpoint.return_freed_memory()  # the per-kernel float copies, freed to the heap
        return lm

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes DIR/lm.safetensors (kernels `[in, out]`, as the converter writes them) and
        DIR/config.json['lm']. An int8 model cannot be saved: save the float weights."""
        if self.dtype == jnp.int8:
            raise ValueError("an int8 LM is quantized when loading; save the float model instead")
        os.makedirs(directory, exist_ok=True)
        checkpoint.save_module(
            self,
            os.path.join(directory, checkpoint.WEIGHT_FILES["lm"]),
            metadata={LAYOUT_KEY: DISK_LAYOUT, "dtype": jnp.dtype(self.dtype).name},
            transposed=lambda key: (
                self.linears[0].layout != DISK_LAYOUT and key.endswith(".kernel")
            ),
        )
        checkpoint.update_config(directory, "lm", self.config.to_dict())

    def astype(self, dtype) -> LMModel:
        """A copy with every weight in `dtype`, kernels re-laid out for it.

        int8 is one way: it quantizes the kernels of a float model (`int8.quantize_kernel`);
        embeddings, norms and biases stay float32.
        """
        dtype = _check_dtype(dtype)
        if self.dtype == jnp.int8:
            raise ValueError("an int8 model cannot be converted back; load the float weights again")
        new = checkpoint.abstract_module(
            lambda: LMModel(self.config, rngs=checkpoint.SHAPE_ONLY_RNGS, param_dtype=dtype)
        )
        graphdef, new_state = nnx.split(new)
        old = dict(nnx.to_flat_state(nnx.state(self)))
        old_layout = {p: m.layout for p, m in nnx.iter_modules(self) if isinstance(m, Linear)}
        new_layout = {p: m.layout for p, m in nnx.iter_modules(new) if isinstance(m, Linear)}
        flat = nnx.to_flat_state(new_state)
        scales = {}
        for path, var in flat:
            if path[-1] == "kernel_scale":
                continue
            value = old[path].get_value()
            if path[-1] == "kernel" and old_layout[path[:-1]] != new_layout[path[:-1]]:
                value = value.T
            if path[-1] == "kernel" and dtype == jnp.int8:
                value, scales[path[:-1] + ("kernel_scale",)] = int8.quantize_kernel(value)
            var.set_value(jnp.asarray(value, var.get_value().dtype))
        for path, var in flat:
            if path[-1] == "kernel_scale":
                var.set_value(scales[path])
        return nnx.merge(graphdef, nnx.from_flat_state(flat))

    @property
    def dtype(self):
        return self.linears[0].kernel[...].dtype


def _check_dtype(dtype) -> jnp.dtype:
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16, jnp.int8):
        raise ValueError(f"LM weights can be float32, bfloat16, float16 or int8, not {dtype}")
    return dtype


def _stored_dtype(path: str) -> jnp.dtype:
    """The dtype of an lm.safetensors' floating-point tensors; refuses the version-1 layout."""
    f = checkpoint.open_weights(path)
    if f.metadata.get(LAYOUT_KEY) != DISK_LAYOUT:
        raise checkpoint.CheckpointError(
            f"{path} was written by an older audiogen-jax, whose 16-bit kernels were laid out "
            "[out, in]; convert the LM again: `audiogen-jax convert --lm state_dict.bin --out "
            f"{os.path.dirname(path) or '.'}`"
        )
    floats = sorted({t.dtype.name for t in f.values() if jnp.issubdtype(t.dtype, jnp.floating)})
    if len(floats) != 1:
        raise checkpoint.CheckpointError(f"{path}: expected one floating dtype, found {floats}")
    return jnp.dtype(floats[0])


# --------------------------------------------------------------------------------------------------
# The KV cache and the jitted cores.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Decoding state: per layer, what each attention reads (float32, head-major `KV`s)."""

    self_attn: tuple[KV, ...]  # [B, N, M, H]: keys/values of the steps so far, preallocated to M
    cross_attention: tuple[KV, ...]  # [B, N, L, H]: the condition's, computed once
    context_mask_BL: jax.Array  # [B, L] bool: the text positions cross-attention attends

    @property
    def max_steps(self) -> int:
        return self.self_attn[0].keys.shape[2]

    @property
    def batch_size(self) -> int:
        return self.self_attn[0].keys.shape[0]


def _embed(lm: LMModel, seq_BKS: jax.Array, start: jax.Array) -> jax.Array:
    x_BSD = lm.emb[0](seq_BKS[:, 0])
    for k in range(1, len(lm.emb)):
        x_BSD = x_BSD + lm.emb[k](seq_BKS[:, k])
    cfg = lm.config
    positions_S = start + jnp.arange(seq_BKS.shape[-1], dtype=jnp.int32)
    return x_BSD + cfg.positional_scale * sin_embedding(positions_S, cfg.dim, cfg.max_period)


def _heads(lm: LMModel, x_BSD: jax.Array) -> jax.Array:
    out_BSD = lm.out_norm(x_BSD)
    return jnp.stack([head(out_BSD) for head in lm.linears], axis=1)


def _teacher_forced_layer(layer: TransformerLayer, x_BSD, condition_BLD) -> jax.Array:
    return layer(x_BSD, condition_BLD)[0]


@functools.partial(jax.jit, static_argnames="remat")
def _forward(
    lm: LMModel, seq_BKS: jax.Array, condition_BLD: jax.Array, remat: bool = False
) -> jax.Array:
    x_BSD = _embed(lm, seq_BKS, jnp.zeros((), jnp.int32))
    condition_BLD = condition_BLD.astype(jnp.float32)
    # remat (training): keep only each layer's input for the backward pass and recompute the rest.
    run = jax.checkpoint(_teacher_forced_layer) if remat else _teacher_forced_layer
    for layer in lm.transformer.layers:
        x_BSD = run(layer, x_BSD, condition_BLD)
    return _heads(lm, x_BSD)


@functools.partial(jax.jit, static_argnums=2)
def _init_cache(
    lm: LMModel, condition_BLD: jax.Array, max_steps: int, context_mask_BL: jax.Array
) -> KVCache:
    cfg = lm.config
    shape = (condition_BLD.shape[0], cfg.num_heads, max_steps, cfg.head_dim)
    condition_BLD = condition_BLD.astype(jnp.float32)
    layers = lm.transformer.layers
    return KVCache(
        self_attn=tuple(
            KV(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)) for _ in layers
        ),
        cross_attention=tuple(layer.cross_attention.keys_values(condition_BLD) for layer in layers),
        context_mask_BL=context_mask_BL,
    )


@jax.jit
def _step(
    lm: LMModel, seq_BKS: jax.Array, cache: KVCache, start: jax.Array
) -> tuple[jax.Array, KVCache]:
    x_BSD = _embed(lm, seq_BKS, start)
    self_attn = []
    for layer, self_kv, cross_kv in zip(
        lm.transformer.layers, cache.self_attn, cache.cross_attention, strict=True
    ):
        x_BSD, self_kv = layer(
            x_BSD,
            self_kv=self_kv,
            cross_kv=cross_kv,
            start=start,
            context_mask_BL=cache.context_mask_BL,
        )
        self_attn.append(self_kv)
    return _heads(lm, x_BSD), dataclasses.replace(cache, self_attn=tuple(self_attn))


# --------------------------------------------------------------------------------------------------
# Checked public entry points. Checks that need values run only on concrete arrays (outside jit);
# shape checks always run (shapes are static even under tracing).


def _check_seq(lm: LMModel, seq_BKS) -> jax.Array:
    cfg = lm.config
    if getattr(seq_BKS, "ndim", None) != 3 or seq_BKS.shape[1] != cfg.n_q:
        raise ValueError(
            f"seq must be [B, K={cfg.n_q}, S] codes, got shape {getattr(seq_BKS, 'shape', None)}"
        )
    if not jnp.issubdtype(seq_BKS.dtype, jnp.integer):
        raise ValueError(f"seq must hold integer codes, got dtype {seq_BKS.dtype}")
    if checks.is_concrete(seq_BKS):
        arr = np.asarray(seq_BKS)
        if arr.size and (arr.min() < 0 or arr.max() > cfg.card):
            raise ValueError(
                f"codes must lie in [0, {cfg.card}] ({cfg.card} is the special token), "
                f"got values in [{arr.min()}, {arr.max()}]"
            )
    return jnp.asarray(seq_BKS, jnp.int32)


def _check_condition(lm: LMModel, condition_BLD) -> None:
    D = lm.config.dim
    if getattr(condition_BLD, "ndim", None) != 3 or condition_BLD.shape[-1] != D:
        raise ValueError(
            f"condition must be [B, L, D={D}] (already projected by the conditioner's "
            f"output_proj), got shape {getattr(condition_BLD, 'shape', None)}"
        )


def forward(lm: LMModel, seq_BKS, condition_BLD, *, remat: bool = False) -> jax.Array:
    """Teacher-forced logits (reference `LMModel.forward` with precomputed condition tensors).

    Args:
      lm: the model.
      seq_BKS: int codes in the delayed layout, values in [0, V] (V = special token).
      condition_BLD: the projected text condition (zeros on padded and null rows).
      remat: rematerialise each layer in the backward pass (training memory; same values).

    Returns:
      logits [B, K, S, V] float32; position s predicts step s + 1.
    """
    seq_BKS = _check_seq(lm, seq_BKS)
    _check_condition(lm, condition_BLD)
    if condition_BLD.shape[0] != seq_BKS.shape[0]:
        raise ValueError(
            f"batch mismatch: seq {seq_BKS.shape[0]} vs condition {condition_BLD.shape[0]}"
        )
    return _forward(lm, seq_BKS, condition_BLD, remat=remat)


def init_cache(lm: LMModel, condition_BLD, max_steps: int, *, context_mask_BL=None) -> KVCache:
    """An empty cache for up to `max_steps` steps, with the condition's cross-attention keys/values.

    Args:
      lm: the model.
      condition_BLD: the projected text condition (the CFG batch [cond; null] when guiding).
      max_steps: M, the most steps this generation will run (static).
      context_mask_BL: bool [B, L], True where cross-attention may attend; None: every text
        position, as the reference (its padded positions included).
    """
    _check_condition(lm, condition_BLD)
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    B, L, _ = condition_BLD.shape
    if context_mask_BL is None:
        context_mask_BL = jnp.ones((B, L), bool)
    elif tuple(context_mask_BL.shape) != (B, L):
        raise ValueError(
            f"context_mask_BL must be [B, L] = {(B, L)}, got {tuple(context_mask_BL.shape)}"
        )
    return _init_cache(lm, condition_BLD, int(max_steps), jnp.asarray(context_mask_BL, bool))


def step(lm: LMModel, seq_BKS, cache: KVCache, start) -> tuple[jax.Array, KVCache]:
    """Runs S new steps at positions start..start+S-1 against the cache (causal within the block).

    S = 1 while decoding; S > 1 for a prompt prefill. Positions are absolute layout steps, as the
    reference's streaming offsets.

    Args:
      lm: the model.
      seq_BKS: int codes of the new steps.
      cache: from `init_cache` or a previous `step`.
      start: int32 scalar (may be traced), the position of the first new step.

    Returns:
      (logits [B, K, S, V] float32, the cache with the new steps' keys/values written).
    """
    seq_BKS = _check_seq(lm, seq_BKS)
    B, _, S = seq_BKS.shape
    if B != cache.batch_size:
        raise ValueError(f"batch mismatch: seq {B} vs cache {cache.batch_size}")
    if S > cache.max_steps:
        raise ValueError(f"{S} steps do not fit a cache of {cache.max_steps} steps")
    if checks.is_concrete(start):
        s0 = int(start)
        if s0 < 0 or s0 + S > cache.max_steps:
            raise ValueError(
                f"steps {s0}..{s0 + S - 1} do not fit a cache of {cache.max_steps} steps "
                f"(init_cache(..., max_steps) must cover the whole sequence)"
            )
    return _step(lm, seq_BKS, cache, jnp.asarray(start, jnp.int32))
