"""Residual VQ on its own: nearest-codeword choice, the running residual, and decoding as a sum."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from audiogen_jax.quantization import ResidualVectorQuantizer


def _rvq(n_q=3, bins=16, dim=8, seed=0):
    return ResidualVectorQuantizer(dim, n_q, bins, rngs=nnx.Rngs(seed))


def test_encode_is_nearest_codeword_of_the_running_residual():
    rvq = _rvq()
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    codes, residuals = rvq.encode_with_residuals(jnp.asarray(x))
    assert codes.shape == (2, 3, 5) and residuals.shape == (3, 2, 5, 8)
    residual = x.astype(np.float64)
    for k, layer in enumerate(rvq.layers):
        embed = np.asarray(layer.embed[...], np.float64)
        dist = ((residual[..., None, :] - embed) ** 2).sum(-1)  # plain |x - e|^2, float64
        np.testing.assert_array_equal(codes[:, k], dist.argmin(-1))
        residual = residual - embed[np.asarray(codes[:, k])]
        np.testing.assert_allclose(residuals[k], residual, atol=1e-5)


def test_decode_sums_the_chosen_codewords_and_accepts_fewer_stages():
    rvq = _rvq()
    codes = jnp.asarray(np.random.default_rng(1).integers(0, 16, (2, 3, 4)), jnp.int32)
    expected = sum(np.asarray(rvq.layers[k].embed[...])[np.asarray(codes[:, k])] for k in range(3))
    np.testing.assert_allclose(rvq.decode(codes), expected, atol=1e-6)
    first = np.asarray(rvq.layers[0].embed[...])[np.asarray(codes[:, 0])]
    np.testing.assert_allclose(rvq.decode(codes[:, :1]), first, atol=1e-6)


def test_codeword_inputs_encode_to_themselves_with_zero_residual():
    rvq = _rvq(n_q=2)
    idx = np.array([[3, 7, 0, 15]])
    x = np.asarray(rvq.layers[0].embed[...])[idx]  # [1, 4, D], exactly codewords of stage 0
    codes, residuals = rvq.encode_with_residuals(jnp.asarray(x))
    np.testing.assert_array_equal(codes[:, 0], idx)
    assert float(jnp.abs(residuals[0]).max()) == 0.0


def test_random_init_is_the_same_eagerly_and_under_jit():
    # Codewords are drawn by numpy from the key's bits (`initializers.host_random`); under a trace,
    # by a callback.
    eager = _rvq(seed=3)
    traced = nnx.jit(lambda: _rvq(seed=3))()
    for a, b in zip(eager.layers, traced.layers, strict=True):
        np.testing.assert_array_equal(a.embed[...], b.embed[...])
    assert not np.array_equal(_rvq(seed=4).layers[0].embed[...], eager.layers[0].embed[...])
    assert not np.array_equal(eager.layers[0].embed[...], eager.layers[1].embed[...])
