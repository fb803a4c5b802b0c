"""Training the residual VQ against audiocraft's `core_vq` (the reference, torch), on small tensors:
the training forward (codes, straight-through output, commitment loss and its gradient), the EMA
update of every buffer, dead-code expiry, and k-means. Tolerances are in docs/parity.md.

Two documented differences are tested as such: the reference's dead-code restart leaves no trace
(its buffers equal an update without expiry), while ours puts a batch latent in place; and our
k-means start stores cluster sums in embed_avg."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiogen_jax import quantization_train as vq

# Measured: max |ours - reference| over these tests is 4.8e-7 (float32 sums in another order;
# docs/parity.md).
ATOL = 2e-6


def _reference_rvq(reference, n_q, dim, bins, decay, threshold):
    from audiocraft.quantization.core_vq import ResidualVectorQuantization

    rvq = ResidualVectorQuantization(
        num_quantizers=n_q,
        dim=dim,
        codebook_size=bins,
        decay=decay,
        kmeans_init=False,
        threshold_ema_dead_code=threshold,
        channels_last=False,
        commitment_weight=1.0,
    )
    return rvq.train()


def _setup(reference, threshold, seed=0, n_q=3, dim=8, bins=16, B=2, T=20, decay=0.9):
    """A reference RVQ with random buffers, the same state on our side, and an input."""
    import torch

    rng = np.random.default_rng(seed)
    ref = _reference_rvq(reference, n_q, dim, bins, decay, threshold)
    embed = rng.standard_normal((n_q, bins, dim)).astype(np.float32)
    size = rng.uniform(2.5, 6.0, (n_q, bins)).astype(np.float32)
    size[:, :3] = [0.5, 1.0, 1.9]  # three dead codewords per stage (under a threshold of 2)
    avg = (embed * size[..., None] * rng.uniform(0.8, 1.2, (n_q, bins, 1))).astype(np.float32)
    with torch.no_grad():
        for k, layer in enumerate(ref.layers):
            layer._codebook.embed.copy_(torch.from_numpy(embed[k]))
            layer._codebook.cluster_size.copy_(torch.from_numpy(size[k]))
            layer._codebook.embed_avg.copy_(torch.from_numpy(avg[k]))
    x_BTD = rng.standard_normal((B, T, dim)).astype(np.float32) * 1.5
    cfg = vq.VQTrainConfig(decay=decay, threshold_ema_dead_code=float(threshold))
    ours = (jnp.asarray(embed), vq.VQStats(jnp.asarray(size), jnp.asarray(avg)))
    return ref, ours, x_BTD, cfg


def _buffers(ref):
    return [
        np.stack([getattr(layer._codebook, name).detach().numpy() for layer in ref.layers])
        for name in ("embed", "cluster_size", "embed_avg")
    ]


@pytest.mark.parity
def test_training_forward_and_ema_update_match_the_reference(reference):
    import torch

    ref, (embed, stats), x_BTD, cfg = _setup(reference, threshold=0)
    x_t = torch.from_numpy(x_BTD.transpose(0, 2, 1).copy()).requires_grad_(True)  # [B, D, T]
    quantized_t, codes_t, losses_t = ref(x_t)
    g_BTD = np.random.default_rng(1).standard_normal(x_BTD.shape).astype(np.float32)
    (quantized_t * torch.from_numpy(g_BTD.transpose(0, 2, 1).copy())).sum().add(
        losses_t.mean()
    ).backward()

    def objective(x):
        q, codes, penalty, inputs = vq.quantize(embed, x, cfg)
        return jnp.sum(q * g_BTD) + penalty, (q, codes, penalty, inputs)

    grad, (q, codes, penalty, inputs) = jax.grad(objective, has_aux=True)(jnp.asarray(x_BTD))
    np.testing.assert_array_equal(np.asarray(codes), codes_t.numpy().transpose(1, 0, 2))
    np.testing.assert_allclose(q, quantized_t.detach().numpy().transpose(0, 2, 1), atol=ATOL)
    np.testing.assert_allclose(penalty, losses_t.mean().item(), atol=ATOL)
    # Straight-through plus commitment: the gradient the encoder would receive.
    np.testing.assert_allclose(grad, x_t.grad.numpy().transpose(0, 2, 1), atol=ATOL)

    new_embed, new_stats, dead = vq.update(jax.random.key(0), embed, stats, inputs, codes, cfg)
    ref_embed, ref_size, ref_avg = _buffers(ref)
    assert int(dead.sum()) == 0
    np.testing.assert_allclose(new_stats.cluster_size_KV, ref_size, atol=ATOL)
    np.testing.assert_allclose(new_stats.embed_avg_KVD, ref_avg, atol=ATOL)
    np.testing.assert_allclose(new_embed, ref_embed, atol=ATOL)


@pytest.mark.parity
def test_dead_codes_same_choice_as_the_reference_but_the_restart_sticks(reference):
    from audiocraft.quantization.core_vq import EuclideanCodebook

    ref, (embed, stats), x_BTD, cfg = _setup(reference, threshold=2)
    expired = []
    original = EuclideanCodebook.replace_

    def spy(self, samples, mask):
        expired.append(mask.numpy().copy())
        return original(self, samples, mask)

    EuclideanCodebook.replace_ = spy
    try:
        import torch

        ref(torch.from_numpy(x_BTD.transpose(0, 2, 1).copy()))
    finally:
        EuclideanCodebook.replace_ = original
    _, codes, _, inputs = vq.quantize(embed, jnp.asarray(x_BTD), cfg)
    new_embed, new_stats, dead = vq.update(jax.random.key(0), embed, stats, inputs, codes, cfg)
    dead_KV = np.asarray(stats.cluster_size_KV) < cfg.threshold_ema_dead_code
    np.testing.assert_array_equal(np.stack(expired), dead_KV)  # the same codewords expire
    np.testing.assert_array_equal(dead, dead_KV.sum(1))

    # The reference's buffers are those of an update without expiry: its restart left no trace.
    no_restart = vq.VQTrainConfig(decay=cfg.decay, threshold_ema_dead_code=0.0)
    plain_embed, plain_stats, _ = vq.update(
        jax.random.key(0), embed, stats, inputs, codes, no_restart
    )
    ref_embed, ref_size, ref_avg = _buffers(ref)
    np.testing.assert_allclose(ref_embed, plain_embed, atol=ATOL)
    np.testing.assert_allclose(ref_size, plain_stats.cluster_size_KV, atol=ATOL)
    # Ours: live codewords as the reference; each dead one is a latent of its stage's input, with
    # averages that keep it there.
    live = ~dead_KV
    np.testing.assert_allclose(np.asarray(new_embed)[live], ref_embed[live], atol=ATOL)
    np.testing.assert_allclose(np.asarray(new_stats.embed_avg_KVD)[live], ref_avg[live], atol=ATOL)
    for k, v in zip(*np.nonzero(dead_KV), strict=True):
        row = np.asarray(new_embed[k, v])
        assert np.any(np.all(np.asarray(inputs[k]) == row, axis=1)), (k, v)
        assert float(new_stats.cluster_size_KV[k, v]) == cfg.threshold_ema_dead_code
        np.testing.assert_allclose(new_stats.embed_avg_KVD[k, v], 2.0 * row, atol=ATOL)
        # ...and the next update keeps it (up to the EMA), where the reference's would not exist.
    again, _, _ = vq.update(jax.random.key(1), new_embed, new_stats, inputs, codes, cfg)
    restarted = np.asarray(new_embed)[dead_KV]
    assert np.abs(np.asarray(again)[dead_KV] - restarted).max() < 0.2 * np.abs(restarted).max()


@pytest.mark.parity
def test_kmeans_matches_the_reference_from_the_same_start(reference, monkeypatch):
    import torch
    from audiocraft.quantization import core_vq

    rng = np.random.default_rng(2)
    centres = rng.standard_normal((6, 4)) * 4
    samples = (centres[rng.integers(0, 6, 300)] + rng.standard_normal((300, 4))).astype(np.float32)
    start = samples[rng.choice(300, 8, replace=False)]
    monkeypatch.setattr(core_vq, "sample_vectors", lambda s, n: torch.from_numpy(start.copy()))
    ref_means, ref_bins = core_vq.kmeans(torch.from_numpy(samples), 8, 10)
    means, bins = vq.kmeans_from(jnp.asarray(samples), jnp.asarray(start), 10)
    np.testing.assert_array_equal(np.asarray(bins), ref_bins.numpy())
    np.testing.assert_allclose(means, ref_means.numpy(), atol=ATOL)


def _residual_norms(embed_KVD, x_ND):
    residual, norms = x_ND, []
    for k in range(embed_KVD.shape[0]):
        residual = residual - embed_KVD[k][vq.nearest(residual, embed_KVD[k])]
        norms.append(float(jnp.mean(residual**2)))
    return residual, norms


def test_init_codebooks_stores_sums_so_the_first_update_keeps_the_means():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((500, 4)).astype(np.float32) * 3)
    cfg = vq.VQTrainConfig(decay=0.99, kmeans_iters=10, threshold_ema_dead_code=0.0)
    embed, stats = vq.init_codebooks(jax.random.key(0), x, 2, 8, cfg)
    assert embed.shape == (2, 8, 4) and stats.cluster_size_KV.shape == (2, 8)
    np.testing.assert_allclose(
        stats.embed_avg_KVD / stats.cluster_size_KV[..., None], embed, rtol=1e-5
    )
    # Stage 1 clusters what stage 0 leaves, so each stage shrinks the residual further.
    _, residuals = _residual_norms(embed, x)
    assert residuals[0] < float(jnp.mean(x**2)) and residuals[1] < residuals[0]
    # One EMA step on the same latents moves the codewords a little, not by their cluster size
    # (the reference's layout shrinks them to about mean / size here).
    _, codes, _, inputs = vq.quantize(embed, x[None], cfg)
    after, _, _ = vq.update(jax.random.key(1), embed, stats, inputs, codes, cfg)
    assert float(jnp.abs(after - embed).max()) < 0.05 * float(jnp.abs(embed).max())


def test_sample_vectors_draws_rows_without_replacement_when_it_can():
    x = jnp.arange(20.0).reshape(10, 2)
    rows = np.asarray(vq.sample_vectors(jax.random.key(0), x, 10))
    assert sorted(rows[:, 0].tolist()) == list(range(0, 20, 2))
    more = np.asarray(vq.sample_vectors(jax.random.key(0), x, 25))
    assert more.shape == (25, 2) and set(more[:, 0].tolist()) <= set(range(0, 20, 2))
