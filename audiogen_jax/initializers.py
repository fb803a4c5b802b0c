"""Random initial weights drawn by numpy on the host, keyed by a JAX key.

Models built with random weights (the tests, the offline `tiny-random` model) would otherwise pay
for `jax.random` run eagerly, which compiles a kernel for every distinct parameter shape: for a
codec with dozens of shapes, compiling dwarfs drawing. Converted weights overwrite these values,
so only their distribution matters.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def host_random(
    key: jax.Array,
    shape: tuple[int, ...],
    draw: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray],
) -> jax.Array:
    """float32 random values drawn by numpy from `key`'s bits: `draw(generator, shape)`.

    Under a trace (`nnx.eval_shape`, `jax.jit`) the same draw runs as a host callback, so a key
    gives the same values either way.
    """

    def sample(data):
        rng = np.random.default_rng(np.asarray(data).ravel().tolist())
        return np.asarray(draw(rng, shape), np.float32)

    data = jax.random.key_data(key)
    if isinstance(data, jax.core.Tracer):
        return jax.pure_callback(sample, jax.ShapeDtypeStruct(shape, jnp.float32), data)
    return jax.device_put(sample(data))  # (jnp.asarray would compile a copy for every shape)


def uniform(key: jax.Array, shape: tuple[int, ...], bound: float) -> jax.Array:
    """U(-bound, bound), float32."""
    return host_random(key, shape, lambda g, s: g.uniform(-bound, bound, s))


def normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """N(0, 1), float32."""
    return host_random(key, shape, lambda g, s: g.standard_normal(s))
