"""int8 matmuls for the LM (W8A8): an opt-in beyond the reference, which has no quantized LM.

`LMModel.astype(jnp.int8)` quantizes every matmul kernel once, symmetrically per output channel
(`LMModel.from_pretrained(..., dtype=jnp.int8)` does the same, one kernel at a time as it reads
them): w ~ q * scale[:, None], q in [-127, 127], stored int8 [out, in] with a float32 scale per
row. At run time the activations are quantized per row (per token) on the fly and the product
runs int8 x int8 -> int32, rescaled by both scales. XLA:CPU has no fast int8-weight x float dot, so
quantizing the activations too is what makes int8 weights pay. Embeddings, norms and biases stay
float32. Error against float32: docs/parity.md ("LM in bfloat16 and int8"); speed:
docs/performance.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Keeps an all-zero row from dividing by zero; its codes are then all 0, as they should be.
_TINY = 1e-30


def quantize_kernel(w_OI: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetric per-output-channel int8: w ~ q * scale[:, None] with q in [-127, 127].

    Args:
      w_OI: a float kernel [out, in].

    Returns:
      (q int8 [out, in], scale float32 [out]).
    """
    w_OI = jnp.asarray(w_OI, jnp.float32)
    scale_O = jnp.maximum(jnp.abs(w_OI).max(axis=1), _TINY) / 127.0
    q_OI = jnp.clip(jnp.round(w_OI / scale_O[:, None]), -127, 127).astype(jnp.int8)
    return q_OI, scale_O


def quantize_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Dynamic symmetric int8 of activations [..., in], one scale per row (per token) [..., 1]."""
    scale = jnp.maximum(jnp.abs(x).max(axis=-1, keepdims=True), _TINY) / 127.0
    return jnp.clip(jnp.round(x / scale), -127, 127).astype(jnp.int8), scale


def matmul(x: jax.Array, q_OI: jax.Array, scale_O: jax.Array) -> jax.Array:
    """x W^T for a quantized kernel: [..., in] x int8 [out, in] -> float32 [..., out]."""
    x8, x_scale = quantize_rows(x)
    y = jax.lax.dot_general(
        x8, q_OI, (((x.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.int32
    )
    return y.astype(jnp.float32) * x_scale * scale_O
