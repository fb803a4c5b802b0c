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
`norm_cross`, `norm2`, `out_norm`, `linears`), so `convert.py` is mostly renames.

Shapes: B batch, K codebooks, S steps of the delayed layout, L text tokens, D model width,
F feed-forward width, N heads, H head width, V codebook size (`card`), M cache length (max steps).

Inference is a set of pure functions over an `LMModel` and an explicit `KVCache` pytree:
  `forward(lm, seq_BKS, condition_BLD)`          teacher-forced logits [B, K, S, V]
  `init_cache(lm, condition_BLD, max_steps)`     preallocated cache, cross-attention K/V computed once
  `step(lm, seq_BKS, cache, start)`              S new steps at positions start.., returns the new cache
The public functions validate their inputs (clear `ValueError`s) and call jitted cores.

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
  - Linear kernels are stored `[in, out]` for float32 weights (the fastest layout for XLA:CPU),
    and `[out, in]` (the checkpoint's layout) for bfloat16/float16 weights, whose matmuls take
    bf16 inputs and accumulate in float32 (`preferred_element_type`): see docs/parity.md for the
    decode-step timings behind this choice. Activations, softmax and norms are float32 throughout.
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

from audiogen_jax import checkpoint
from audiogen_jax.config import LMConfig

# A large finite negative score: masked logits vanish in the softmax without risking inf - inf.
_MASKED = -1e30


def kernel_layout(param_dtype) -> str:
    """'in_out' for float32 kernels, 'out_in' (checkpoint layout) for 16-bit and int8 ones."""
    return "in_out" if jnp.dtype(param_dtype) == jnp.float32 else "out_in"


def _float_dtype(param_dtype) -> jnp.dtype:
    """The dtype of the non-matmul weights (embeddings, norms, biases): float32 in an int8 model."""
    return jnp.dtype(jnp.float32) if jnp.dtype(param_dtype) == jnp.int8 else jnp.dtype(param_dtype)


def quantize_int8(w_OI: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetric per-output-channel int8: w ~ q * scale[:, None] with q in [-127, 127].

    Args:
      w_OI: a float kernel [out, in].

    Returns:
      (q int8 [out, in], scale float32 [out]).
    """
    w_OI = jnp.asarray(w_OI, jnp.float32)
    scale_O = jnp.maximum(jnp.abs(w_OI).max(axis=1), 1e-30) / 127.0
    q = jnp.clip(jnp.round(w_OI / scale_O[:, None]), -127, 127).astype(jnp.int8)
    return q, scale_O


def _int8_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Dynamic symmetric int8 of activations, one scale per row (per token)."""
    scale = jnp.maximum(jnp.abs(x).max(axis=-1, keepdims=True), 1e-30) / 127.0
    return jnp.clip(jnp.round(x / scale), -127, 127).astype(jnp.int8), scale


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
    """y = x W (+ b), with W stored in the layout that streams fastest for its dtype (see module doc).

    An int8 `param_dtype` (opt-in, `LMModel.astype(jnp.int8)`) stores W as int8 [out, in] with a
    float32 scale per output channel (`kernel_scale`); the input is quantized per row on the fly and
    the product runs int8 x int8 -> int32 (W8A8: XLA:CPU has no fast int8-weight x float dot).
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
            w, scale = quantize_int8(w)
        self.kernel = nnx.Param(w.astype(param_dtype))
        self.kernel_scale = nnx.Param(scale) if scale is not None else None
        bias_dtype = _float_dtype(param_dtype)
        self.bias = nnx.Param(jnp.zeros((out_features,), bias_dtype)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.kernel[...]
        contract_w = 0 if self.layout == "in_out" else 1
        if self.kernel_scale is not None:
            x8, x_scale = _int8_rows(x)
            y = jax.lax.dot_general(
                x8, w, (((x.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.int32
            )
            y = y.astype(jnp.float32) * x_scale * self.kernel_scale[...]
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
    q_BNSH: jax.Array, k_BNMH: jax.Array, v_BNMH: jax.Array, mask_SM: jax.Array | None
) -> jax.Array:
    """Scaled dot-product attention (scale 1/sqrt(H)); `mask_SM` True where a query may look.

    Everything is head-major ([B, N, ., H]): both products are then batched over (B, N) with no
    transpose of the keys/values, which XLA would otherwise copy from the cache at every step.
    """
    scale = 1.0 / math.sqrt(q_BNSH.shape[-1])
    scores_BNSM = jnp.einsum("BNSH,BNMH->BNSM", q_BNSH * scale, k_BNMH)
    if mask_SM is not None:
        scores_BNSM = jnp.where(mask_SM, scores_BNSM, _MASKED)
    weights_BNSM = jax.nn.softmax(scores_BNSM, axis=-1)
    return jnp.einsum("BNSM,BNMH->BNSH", weights_BNSM, v_BNMH)


class Attention(nnx.Module):
    """Multi-head attention with separate q/k/v projections (the reference packs them in one matrix)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        use_bias: bool,
        param_dtype,
        rngs: nnx.Rngs,
        layout: str | None = None,
    ):
        self.num_heads = num_heads
        lin = functools.partial(
            Linear, dim, dim, use_bias=use_bias, param_dtype=param_dtype, rngs=rngs, layout=layout
        )
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = lin(), lin(), lin(), lin()

    def heads(self, proj: Linear, x_BSD: jax.Array) -> jax.Array:
        """proj(x) split into heads, head-major: [B, N, S, H]."""
        y = proj(x_BSD)
        y = y.reshape(*y.shape[:-1], self.num_heads, y.shape[-1] // self.num_heads)
        return jnp.swapaxes(y, -3, -2)

    def output(self, o_BNSH: jax.Array) -> jax.Array:
        o_BSNH = jnp.swapaxes(o_BNSH, -3, -2)
        return self.out_proj(o_BSNH.reshape(*o_BSNH.shape[:-2], -1))


class TransformerLayer(nnx.Module):
    """Pre-norm layer: x += SA(norm1 x); x += CA(norm_cross x, condition); x += FF(norm2 x)."""

    def __init__(self, cfg: LMConfig, *, param_dtype, rngs: nnx.Rngs, layout: str | None = None):
        kw = {"param_dtype": param_dtype, "rngs": rngs, "layout": layout}
        self.self_attn = Attention(cfg.dim, cfg.num_heads, use_bias=cfg.bias_attn, **kw)
        self.cross_attention = Attention(cfg.dim, cfg.num_heads, use_bias=cfg.bias_attn, **kw)
        self.linear1 = Linear(cfg.dim, cfg.ffn_dim, use_bias=cfg.bias_ff, **kw)
        self.linear2 = Linear(cfg.ffn_dim, cfg.dim, use_bias=cfg.bias_ff, **kw)
        norm = functools.partial(LayerNorm, cfg.dim, eps=cfg.norm_eps, param_dtype=param_dtype)
        self.norm1, self.norm_cross, self.norm2 = norm(), norm(), norm()

    def cross_kv(self, condition_BLD: jax.Array) -> tuple[jax.Array, jax.Array]:
        ca = self.cross_attention
        return ca.heads(ca.k_proj, condition_BLD), ca.heads(ca.v_proj, condition_BLD)

    def __call__(self, x_BSD, cross_k_BNLH, cross_v_BNLH, past, start):
        """One layer over S new steps.

        Args:
          x_BSD: the residual stream of the new steps.
          cross_k_BNLH, cross_v_BNLH: the condition's keys/values for this layer.
          past: None (teacher forcing: attend causally within x) or the layer's cache
            (keys_BNMH, values_BNMH), into which the new keys/values are written at `start`.
          start: int32 scalar, position of the first new step.

        Returns:
          (x_BSD, (keys_BNMH, values_BNMH) or None).
        """
        sa = self.self_attn
        h = self.norm1(x_BSD)
        q, k, v = sa.heads(sa.q_proj, h), sa.heads(sa.k_proj, h), sa.heads(sa.v_proj, h)
        S = x_BSD.shape[1]
        if past is None:
            keys, values = k, v
            mask_SM = jnp.tril(jnp.ones((S, S), bool))
        else:
            zero = jnp.zeros((), jnp.int32)
            keys = jax.lax.dynamic_update_slice(
                past[0], k.astype(past[0].dtype), (zero, zero, start, zero)
            )
            values = jax.lax.dynamic_update_slice(
                past[1], v.astype(past[1].dtype), (zero, zero, start, zero)
            )
            query_pos = start + jnp.arange(S, dtype=jnp.int32)
            mask_SM = jnp.arange(keys.shape[2], dtype=jnp.int32)[None, :] <= query_pos[:, None]
        x_BSD = x_BSD + sa.output(_attend(q, keys, values, mask_SM))
        # No key padding mask, as the reference: padded condition rows are exact zeros.
        ca = self.cross_attention
        q = ca.heads(ca.q_proj, self.norm_cross(x_BSD))
        x_BSD = x_BSD + ca.output(_attend(q, cross_k_BNLH, cross_v_BNLH, None))
        h = jax.nn.gelu(self.linear1(self.norm2(x_BSD)), approximate=False)
        x_BSD = x_BSD + self.linear2(h)
        return x_BSD, (None if past is None else (keys, values))


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
    def from_pretrained(cls, directory: str | os.PathLike, dtype=None) -> LMModel:
        """Loads DIR/config.json['lm'] + DIR/lm.safetensors.

        Args:
          directory: a converted directory (`convert_weights.py --lm ... --out DIR`).
          dtype: None keeps the file's weight dtype (a bf16 file stays bf16); float32 or bfloat16
            converts after loading (kernels change layout with the dtype, see `kernel_layout`);
            int8 quantizes the matmul kernels after loading (load a bf16 file: less memory).
        """
        cfg = LMConfig.from_dict(checkpoint.read_config(directory, "lm"))
        path = os.path.join(directory, checkpoint.WEIGHT_FILES["lm"])
        file_dtype = _file_float_dtype(path)
        lm = checkpoint.load_module(
            lambda: cls(cfg, rngs=nnx.Rngs(0), param_dtype=file_dtype), path
        )
        if dtype is not None and jnp.dtype(dtype) != file_dtype:
            lm = lm.astype(dtype)
            _return_freed_memory()
        return lm

    def astype(self, dtype) -> LMModel:
        """A copy with every weight in `dtype`, kernels re-laid out for it.

        int8 is one way: it quantizes the kernels of a float model (`quantize_int8`); embeddings,
        norms and biases stay float32.
        """
        dtype = jnp.dtype(dtype)
        if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16, jnp.int8):
            raise ValueError(f"LM weights can be float32, bfloat16, float16 or int8, not {dtype}")
        if self.dtype == jnp.int8:
            raise ValueError("an int8 model cannot be converted back; load the float weights again")
        new = nnx.eval_shape(lambda: LMModel(self.config, rngs=nnx.Rngs(0), param_dtype=dtype))
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
                value, scales[path[:-1] + ("kernel_scale",)] = quantize_int8(value)
            var.set_value(jnp.asarray(value, var.get_value().dtype))
        for path, var in flat:
            if path[-1] == "kernel_scale":
                var.set_value(scales[path])
        return nnx.merge(graphdef, nnx.from_flat_state(flat))

    @property
    def dtype(self):
        return self.linears[0].kernel[...].dtype


def _return_freed_memory() -> None:
    """Hands freed heap pages back to the OS after a whole model was replaced (glibc only).

    glibc serves blocks under 32 MB from its heap and keeps them when freed, so after `astype` the
    process would stay at the size of both models (int8 from a bf16 file: 5.8 GiB instead of 2.1 GiB;
    docs/performance.md).
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _file_float_dtype(path: str) -> np.dtype:
    """The dtype of the floating-point tensors in a safetensors file (read from its header)."""
    import json
    import struct

    if not os.path.isfile(path):
        raise checkpoint.CheckpointError(f"{path}: no such weights file")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    names = {"F32": jnp.float32, "BF16": jnp.bfloat16, "F16": jnp.float16}
    found = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    floats = sorted(found & set(names))
    if len(floats) != 1:
        raise checkpoint.CheckpointError(
            f"{path}: expected one floating dtype, found {sorted(found)}"
        )
    return jnp.dtype(names[floats[0]])


# --------------------------------------------------------------------------------------------------
# The KV cache.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Decoding state: per layer, self-attention keys/values [B, N, M, H] (preallocated to M steps,
    float32) and the condition's cross-attention keys/values [B, N, L, H] (computed once).

    Head-major, the layout the attention products read directly (see `_attend`)."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    cross_keys: tuple[jax.Array, ...]
    cross_values: tuple[jax.Array, ...]

    @property
    def max_steps(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]


# --------------------------------------------------------------------------------------------------
# Jitted cores.


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
    ck, cv = layer.cross_kv(condition_BLD)
    return layer(x_BSD, ck, cv, None, None)[0]


@functools.partial(jax.jit, static_argnames="remat")
def _forward(
    lm: LMModel, seq_BKS: jax.Array, condition_BLD: jax.Array, remat: bool = False
) -> jax.Array:
    x = _embed(lm, seq_BKS, jnp.zeros((), jnp.int32))
    condition_BLD = condition_BLD.astype(jnp.float32)
    # remat (training): keep only each layer's input for the backward pass and recompute the rest.
    run = jax.checkpoint(_teacher_forced_layer) if remat else _teacher_forced_layer
    for layer in lm.transformer.layers:
        x = run(layer, x, condition_BLD)
    return _heads(lm, x)


@functools.partial(jax.jit, static_argnums=2)
def _init_cache(lm: LMModel, condition_BLD: jax.Array, max_steps: int) -> KVCache:
    cfg = lm.config
    B = condition_BLD.shape[0]
    shape = (B, cfg.num_heads, max_steps, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, jnp.float32) for _ in range(cfg.num_layers))
    cross = [layer.cross_kv(condition_BLD.astype(jnp.float32)) for layer in lm.transformer.layers]
    return KVCache(
        keys=zeros,
        values=zeros,
        cross_keys=tuple(k for k, _ in cross),
        cross_values=tuple(v for _, v in cross),
    )


@jax.jit
def _step(lm: LMModel, seq_BKS: jax.Array, cache: KVCache, start: jax.Array):
    x = _embed(lm, seq_BKS, start)
    keys, values = [], []
    for i, layer in enumerate(lm.transformer.layers):
        x, (k, v) = layer(
            x, cache.cross_keys[i], cache.cross_values[i], (cache.keys[i], cache.values[i]), start
        )
        keys.append(k)
        values.append(v)
    new_cache = dataclasses.replace(cache, keys=tuple(keys), values=tuple(values))
    return _heads(lm, x), new_cache


# --------------------------------------------------------------------------------------------------
# Checked public entry points. Checks that need values run only on concrete arrays (outside jit);
# shape checks always run (shapes are static even under tracing).


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_seq(lm: LMModel, seq_BKS) -> jax.Array:
    cfg = lm.config
    if getattr(seq_BKS, "ndim", None) != 3 or seq_BKS.shape[1] != cfg.n_q:
        raise ValueError(
            f"seq must be [B, K={cfg.n_q}, S] codes, got shape {getattr(seq_BKS, 'shape', None)}"
        )
    if not jnp.issubdtype(seq_BKS.dtype, jnp.integer):
        raise ValueError(f"seq must hold integer codes, got dtype {seq_BKS.dtype}")
    if _concrete(seq_BKS):
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
            f"condition must be [B, L, D={D}] (already projected by the conditioner's output_proj), "
            f"got shape {getattr(condition_BLD, 'shape', None)}"
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


def init_cache(lm: LMModel, condition_BLD, max_steps: int) -> KVCache:
    """An empty cache for up to `max_steps` steps, holding the condition's cross-attention keys/values.

    Args:
      lm: the model.
      condition_BLD: the projected text condition (the CFG batch [cond; null] when guiding).
      max_steps: M, the most steps this generation will run (static).
    """
    _check_condition(lm, condition_BLD)
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    return _init_cache(lm, condition_BLD, int(max_steps))


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
    if _concrete(start):
        s0 = int(start)
        if s0 < 0 or s0 + S > cache.max_steps:
            raise ValueError(
                f"steps {s0}..{s0 + S - 1} do not fit a cache of {cache.max_steps} steps "
                f"(init_cache(..., max_steps) must cover the whole sequence)"
            )
    return _step(lm, seq_BKS, cache, jnp.asarray(start, jnp.int32))
