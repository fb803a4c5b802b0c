"""Residual vector quantization (RVQ): EnCodec's bottleneck, from latent vectors to integer codes.

Each of the K stages holds a codebook of V vectors of width D. Encoding picks, frame by frame, the
codeword nearest (in L2) to what the previous stages have not yet explained, and subtracts it:

    residual_0 = x
    code_k = argmin_v |residual_k - E_k[v]|^2
    residual_{k+1} = residual_k - E_k[code_k]

Decoding is the sum of the chosen codewords, so the first stage carries the coarse picture and every
later stage refines it (SoundStream, arXiv:2107.03312, Algorithm 1).

Mirrors audiocraft 1.3.0 `quantization/vq.py` (`ResidualVectorQuantizer`) and
`quantization/core_vq.py` (`ResidualVectorQuantization`, `VectorQuantization`,
`EuclideanCodebook`), inference path only.

Differences from the reference:
- Inference only: no k-means initialisation, EMA codebook updates, dead-code expiry or commitment
  loss (the training buffers `inited`, `cluster_size`, `embed_avg` are dropped at conversion).
- No input/output projections: audiocraft only adds them when the codebook width differs from the
  latent width, which the EnCodec builder never does.
- Latents are channels-last `[B, T, D]` (the reference moves `[B, D, T]` to `[B, T, D]` inside each
  stage).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from audiogen_jax import initializers


class Codebook(nnx.Module):
    """One stage: V codewords of width D (`EuclideanCodebook.embed`)."""

    def __init__(self, bins: int, dimension: int, *, rngs: nnx.Rngs):
        # Random codewords (a trained checkpoint overwrites them); audiocraft starts from zeros and
        # fills them by k-means on the first training batch.
        self.embed = nnx.Param(initializers.normal(rngs.params(), (bins, dimension)))

    def encode(self, x_ND: jax.Array) -> jax.Array:
        """Index of the nearest codeword for each row of `x_ND` [N, D] -> [N] int32.

        The distance is expanded as |x|^2 - 2 x.e + |e|^2, in that order, exactly like the
        reference: the plain |x - e|^2 rounds differently and can flip near-ties.
        """
        embed_VD = self.embed[...]
        dist_NV = -(
            jnp.sum(x_ND**2, axis=1, keepdims=True)
            - 2 * (x_ND @ embed_VD.T)
            + jnp.sum(embed_VD**2, axis=1)[None, :]
        )
        return jnp.argmax(dist_NV, axis=-1).astype(jnp.int32)

    def decode(self, codes: jax.Array) -> jax.Array:
        """Codewords for integer `codes` of any shape -> shape + [D]."""
        return jnp.take(self.embed[...], codes, axis=0)


class ResidualVectorQuantizer(nnx.Module):
    """K codebooks applied one after the other to the running residual (audiocraft `vq.layers`)."""

    def __init__(self, dimension: int, n_q: int, bins: int, *, rngs: nnx.Rngs):
        self.dimension = dimension
        self.n_q = n_q
        self.bins = bins
        self.layers = nnx.List([Codebook(bins, dimension, rngs=rngs) for _ in range(n_q)])

    def encode(self, x_BTD: jax.Array, n_q: int | None = None) -> jax.Array:
        """Latents [B, T, D] -> codes [B, K, T] int32, K = n_q (default: all stages)."""
        codes_BKT, _ = self.encode_with_residuals(x_BTD, n_q)
        return codes_BKT

    def encode_with_residuals(
        self, x_BTD: jax.Array, n_q: int | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Like `encode`, also returning what is left after each stage.

        Returns:
          codes_BKT: [B, K, T] int32.
          residuals_KBTD: [K, B, T, D], residual k = x minus the sum of the first k+1 codewords.
        """
        B, T, D = x_BTD.shape
        residual_ND = x_BTD.reshape(B * T, D)
        codes, residuals = [], []
        for layer in self.layers[: n_q or self.n_q]:
            idx_N = layer.encode(residual_ND)
            residual_ND = residual_ND - layer.decode(idx_N)
            codes.append(idx_N.reshape(B, T))
            residuals.append(residual_ND.reshape(B, T, D))
        return jnp.stack(codes, axis=1), jnp.stack(residuals)

    def decode(self, codes_BKT: jax.Array) -> jax.Array:
        """Codes [B, K, T] (K <= n_q: the first K stages) -> latents [B, T, D], the sum of the
        codewords."""
        # The reference starts from a scalar 0 and adds the stages in order; the same order here.
        out_BTD = 0.0
        for k in range(codes_BKT.shape[1]):
            out_BTD = out_BTD + self.layers[k].decode(codes_BKT[:, k])
        return out_BTD
