"""Training the residual VQ: k-means start, EMA codebooks, dead-code restarts, commitment loss.

EnCodec's codebooks are not trained by gradients. Each stage keeps two running averages over
training batches: how many latents chose each codeword (`cluster_size` [V]) and their sum
(`embed_avg` [V, D]). After every batch a codeword becomes their ratio, the mean of the latents it
stands for: k-means done online (van den Oord et al., arXiv:1711.00937, appendix A.1). The encoder
meets the codebooks halfway through the commitment loss |x - sg(q)|^2, and the decoder's gradient
reaches it through the straight-through estimator x + sg(q - x). A codeword almost nobody chooses
("dead": EMA count under a threshold) is restarted on a latent from the current batch.

Mirrors audiocraft 1.3.0 `quantization/core_vq.py`: `kmeans`, `sample_vectors`,
`EuclideanCodebook.forward` in training mode, `VectorQuantization.forward` and
`ResidualVectorQuantization.forward`. State is explicit (`VQStats` in, `VQStats` out) and every
function is jit-friendly; the codewords themselves live in `EncodecModel.quantizer`.

Differences from the reference (both measured in tests/test_quantization_train.py):
- Dead-code restarts take effect. The reference's `expire_codes_` writes batch latents into `embed`,
  but the same forward then overwrites all of `embed` with embed_avg / cluster_size, so the restart
  is lost (facebookresearch/encodec issue 61). Here a restarted codeword also gets
  cluster_size = threshold and embed_avg = threshold * latent, so the averages start from it.
- After k-means, `embed_avg` holds each cluster's sum (mean * size), so embed_avg / cluster_size
  is the k-means mean. The reference stores the mean itself, which the first EMA update then
  divides by the cluster size, shrinking every codeword towards zero.
- Random draws (k-means seeds, restart latents) come from a JAX key, not torch's global generator.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True, kw_only=True)
class VQTrainConfig:
    """The quantizer's training settings (audiocraft `rvq` config names; EnCodec's values)."""

    decay: float = 0.99  # EMA decay of cluster_size and embed_avg
    epsilon: float = 1e-5  # Laplace smoothing of cluster_size
    threshold_ema_dead_code: float = 2.0  # restart codewords whose EMA count falls below this
    kmeans_iters: int = 50  # k-means iterations on the first batch (0: keep the random codewords)
    commitment_weight: float = 1.0  # weight of each stage's commitment loss

    def __post_init__(self):
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        if self.kmeans_iters < 0 or self.threshold_ema_dead_code < 0:
            raise ValueError("kmeans_iters and threshold_ema_dead_code must be >= 0")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VQStats:
    """Each stage's running averages (the reference's `cluster_size` and `embed_avg` buffers)."""

    cluster_size_KV: jax.Array  # [K, V] EMA of how many latents chose each codeword
    embed_avg_KVD: jax.Array  # [K, V, D] EMA of their sum


def nearest(x_ND: jax.Array, embed_VD: jax.Array) -> jax.Array:
    """Nearest codeword of each row [N] int32 (distance expanded in the reference's order)."""
    dist_NV = -(
        jnp.sum(x_ND**2, axis=1, keepdims=True)
        - 2 * (x_ND @ embed_VD.T)
        + jnp.sum(embed_VD**2, axis=1)[None, :]
    )
    return jnp.argmax(dist_NV, axis=-1).astype(jnp.int32)


def sample_vectors(key: jax.Array, samples_ND: jax.Array, num: int) -> jax.Array:
    """`num` rows of `samples_ND`, without replacement if there are enough (as the reference)."""
    n = samples_ND.shape[0]
    if n >= num:
        idx = jax.random.permutation(key, n)[:num]
    else:
        idx = jax.random.randint(key, (num,), 0, n)
    return samples_ND[idx]


def kmeans_from(samples_ND: jax.Array, means_VD: jax.Array, iters: int):
    """Lloyd's k-means from given starting means; empty clusters keep their previous mean.

    Returns:
      means [V, D] and the final assignment's cluster sizes [V] (float32).
    """
    V = means_VD.shape[0]

    def step(means, _):
        buckets_N = nearest(samples_ND, means)
        onehot_NV = jax.nn.one_hot(buckets_N, V, dtype=samples_ND.dtype)
        bins_V = onehot_NV.sum(0)
        new_means = (onehot_NV.T @ samples_ND) / jnp.maximum(bins_V, 1.0)[:, None]
        return jnp.where((bins_V == 0)[:, None], means, new_means), bins_V

    means_VD, bins_IV = jax.lax.scan(step, means_VD, None, length=iters)
    # The reference returns the sizes of the last iteration's assignment (before its update).
    return means_VD, bins_IV[-1]


def init_codebooks(key: jax.Array, x_ND: jax.Array, n_q: int, bins: int, cfg: VQTrainConfig):
    """k-means codebooks for every stage from one batch of latents, each on the previous residual.

    The reference does the same lazily: stage k's first training forward clusters the residual that
    stages 0..k-1 (already initialised in that forward) leave.

    Returns:
      (embed_KVD [K, V, D], VQStats consistent with it).
    """
    residual = x_ND
    embeds, sizes = [], []
    for key_k in jax.random.split(key, n_q):
        means, size = kmeans_from(residual, sample_vectors(key_k, residual, bins), cfg.kmeans_iters)
        residual = residual - means[nearest(residual, means)]
        embeds.append(means)
        sizes.append(size)
    embed_KVD, size_KV = jnp.stack(embeds), jnp.stack(sizes)
    return embed_KVD, VQStats(size_KV, embed_KVD * size_KV[..., None])


def quantize(embed_KVD: jax.Array, x_BTD: jax.Array, cfg: VQTrainConfig):
    """The training forward of the residual VQ (reference `ResidualVectorQuantization.forward`).

    Args:
      embed_KVD: the codebooks [K, V, D] (constants here: they move by EMA, not by gradient).
      x_BTD: the encoder's latents.

    Returns:
      quantized_BTD: sum of the chosen codewords in value, identity in gradient (x + sg(q - x)).
      codes_BKT: int32 codes.
      penalty: mean over stages of commitment_weight * mean (x_k - sg(q_k))^2, x_k stage k's input.
      inputs_KND: each stage's input latents, flattened and without gradient (for `update`).
    """
    B, T, D = x_BTD.shape
    embed_KVD = jax.lax.stop_gradient(embed_KVD)
    residual_ND = x_BTD.reshape(B * T, D)
    total_ND = jnp.zeros_like(residual_ND)
    codes, losses, inputs = [], [], []
    for k in range(embed_KVD.shape[0]):
        idx_N = nearest(residual_ND, embed_KVD[k])
        q_ND = embed_KVD[k][idx_N]
        losses.append(cfg.commitment_weight * jnp.mean((q_ND - residual_ND) ** 2))
        inputs.append(jax.lax.stop_gradient(residual_ND))
        codes.append(idx_N.reshape(B, T))
        # The next stage sees the residual; its gradient flows to x only (q is a constant).
        residual_ND = residual_ND - q_ND
        total_ND = total_ND + q_ND
    x_ND = x_BTD.reshape(B * T, D)
    quantized_ND = x_ND + jax.lax.stop_gradient(total_ND - x_ND)
    return (
        quantized_ND.reshape(B, T, D),
        jnp.stack(codes, axis=1),
        jnp.mean(jnp.stack(losses)),
        jnp.stack(inputs),
    )


def _ema(moving: jax.Array, new: jax.Array, decay: float) -> jax.Array:
    return moving * decay + new * (1 - decay)


def update(
    key: jax.Array,
    embed_KVD: jax.Array,
    stats: VQStats,
    inputs_KND: jax.Array,
    codes_BKT: jax.Array,
    cfg: VQTrainConfig,
):
    """One EMA step of every codebook after a training batch, then dead-code restarts.

    Args:
      key: draws the restart latents.
      embed_KVD, stats: the codebooks and their running averages before this batch.
      inputs_KND, codes_BKT: what `quantize` saw and chose in this batch.

    Returns:
      (embed_KVD, stats, dead_K): the updated codebooks and averages, and how many codewords of
      each stage were restarted.
    """
    K, V, _ = embed_KVD.shape
    codes_KN = codes_BKT.transpose(1, 0, 2).reshape(K, -1)
    embeds, sizes, avgs, deads = [], [], [], []
    for k, key_k in enumerate(jax.random.split(key, K)):
        x_ND = inputs_KND[k]
        onehot_NV = jax.nn.one_hot(codes_KN[k], V, dtype=x_ND.dtype)
        # Dead means: rarely chosen before this batch (the reference tests before its update).
        dead_V = stats.cluster_size_KV[k] < cfg.threshold_ema_dead_code
        size_V = _ema(stats.cluster_size_KV[k], onehot_NV.sum(0), cfg.decay)
        avg_VD = _ema(stats.embed_avg_KVD[k], (x_ND.T @ onehot_NV).T, cfg.decay)
        total = size_V.sum()
        smoothed_V = (size_V + cfg.epsilon) / (total + V * cfg.epsilon) * total
        embed_VD = avg_VD / smoothed_V[:, None]
        # Restart: the codeword becomes a latent of this batch, with averages that say so.
        fresh_VD = sample_vectors(key_k, x_ND, V)
        threshold = cfg.threshold_ema_dead_code
        embeds.append(jnp.where(dead_V[:, None], fresh_VD, embed_VD))
        sizes.append(jnp.where(dead_V, threshold, size_V))
        avgs.append(jnp.where(dead_V[:, None], fresh_VD * threshold, avg_VD))
        deads.append(dead_V.sum())
    return jnp.stack(embeds), VQStats(jnp.stack(sizes), jnp.stack(avgs)), jnp.stack(deads)
