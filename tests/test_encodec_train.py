"""Codec training: the spectral losses against audiocraft's (`reference`), the metrics, and the
jitted train step on a micro codec (loss falls, codebooks move by EMA, the result saves and loads
as a converted directory). Tolerances are in docs/parity.md."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from audiogen_jax import encodec_train as et
from audiogen_jax.config import EncodecConfig
from audiogen_jax.encodec import EncodecModel
from audiogen_jax.quantization_train import VQTrainConfig

SR = 8000


def _signals(seed=0, B=2, W=3000):
    rng = np.random.default_rng(seed)
    t = np.arange(W) / SR
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal((B, W))
    y = x + 0.1 * rng.standard_normal((B, W))
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parity
@pytest.mark.parametrize("log, normalized", [(False, False), (True, False), (True, True)])
def test_mel_spectrogram_matches_the_reference(reference, log, normalized):
    import torch
    from audiocraft.losses.specloss import MelSpectrogramWrapper

    x, _ = _signals()
    ref = MelSpectrogramWrapper(
        n_fft=256,
        hop_length=64,
        win_length=256,
        n_mels=32,
        sample_rate=SR,
        log=log,
        normalized=normalized,
    )(torch.from_numpy(x)).numpy()
    ours = np.asarray(
        et.mel_spectrogram(jnp.asarray(x), SR, 256, 64, 32, log=log, normalized=normalized)
    )
    assert ours.shape == ref.shape
    # Measured (docs/parity.md): 8.6e-6 relative on mel power, 3.8e-6 absolute on log10 mel.
    if log:
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    else:
        np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=0)


@pytest.mark.parity
@pytest.mark.parametrize("normalized, alphas", [(False, True), (True, True), (True, False)])
def test_multiscale_mel_loss_matches_the_reference(reference, normalized, alphas):
    import torch
    from audiocraft.losses.specloss import MultiScaleMelSpectrogramLoss

    x, y = _signals(1)
    cfg = et.MelLossConfig(
        range_start=5, range_end=10, n_mels=32, normalized=normalized, alphas=alphas
    )
    ref = MultiScaleMelSpectrogramLoss(
        SR, range_start=5, range_end=10, n_mels=32, normalized=normalized, alphas=alphas
    )(torch.from_numpy(x[:, None]), torch.from_numpy(y[:, None])).item()
    ours = float(et.multiscale_mel_loss(jnp.asarray(x), jnp.asarray(y), SR, cfg))
    np.testing.assert_allclose(ours, ref, rtol=2e-6)  # measured: 3.3e-7 relative


def test_mel_filterbank_is_triangles_on_the_htk_scale():
    fb = et.mel_filterbank(SR, 512, 20)
    assert fb.shape == (257, 20) and fb.min() == 0.0 and fb.max() <= 1.0
    peaks = np.argmax(fb, axis=0) * SR / 512
    mel = 2595 * np.log10(1 + peaks / 700)
    np.testing.assert_allclose(np.diff(mel), np.diff(mel).mean(), atol=60)  # evenly spaced mels


def test_si_snr_and_mel_distance():
    x, y = _signals(2)
    x, y = jnp.asarray(x), jnp.asarray(y)
    assert float(et.si_snr(x, 3.0 * x).min()) > 60  # scale does not matter
    noise = y - x
    expected = 10 * np.log10(
        np.sum(np.asarray(x - x.mean(-1, keepdims=True)) ** 2, -1)
        / np.sum(np.asarray(noise) ** 2, -1)
    )
    np.testing.assert_allclose(et.si_snr(x, y), expected, atol=0.3)  # noise ~ orthogonal to x
    assert float(et.mel_distance(x, x, SR).max()) == 0.0
    assert float(et.mel_distance(x, y, SR).min()) > 0.0


MICRO = EncodecConfig(
    sample_rate=SR, dimension=8, n_filters=2, ratios=(4, 2), lstm=1, n_q=2, bins=8
)


@pytest.fixture(scope="module")
def micro():
    """A micro codec's trainer (one compilation for the tests below) and a batch of tones."""
    cfg = et.CodecTrainConfig(
        learning_rate=3e-3,
        b1=0.9,
        b2=0.999,
        warmup_steps=1,
        mel=et.MelLossConfig(range_start=5, range_end=8, n_mels=16, normalized=True),
        vq=VQTrainConfig(kmeans_iters=5, threshold_ema_dead_code=0.5),
    )
    trainer = et.CodecTrainer(EncodecModel(MICRO, rngs=nnx.Rngs(0)), cfg)
    t = np.arange(1024) / SR
    hz = np.random.default_rng(0).uniform(200, 2000, 4)
    wav = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in hz])[:, None].astype(np.float32)
    return trainer, jnp.asarray(wav)


def _run(trainer, wav, steps):
    state = trainer.init(jax.random.key(0), wav)
    first_embed = np.asarray(state.embed_KVD)
    losses = []
    for _ in range(steps):
        state, metrics = trainer.step(state, wav, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    return state, losses, first_embed


def test_train_step_lowers_the_loss_and_moves_the_codebooks_by_ema(micro, tmp_path):
    trainer, wav = micro
    state, losses, first_embed = _run(trainer, wav, 10)
    assert int(state.step) == 10
    # Measured: 10 steps take the loss from 7.76 to about 6.6 (-15%).
    assert losses[-1] < 0.9 * losses[0], losses
    assert not np.allclose(np.asarray(state.embed_KVD), first_embed)
    # The exported codec is an ordinary EncodecModel that round-trips through a directory.
    from audiogen_jax.toy import codec

    model = trainer.export(state)
    codec.save(model, tmp_path / "c")
    loaded = EncodecModel.from_pretrained(tmp_path / "c")
    np.testing.assert_array_equal(loaded.encode(wav), model.encode(wav))
    np.testing.assert_array_equal(
        np.asarray(loaded.quantizer.layers[1].embed[...]), np.asarray(state.embed_KVD[1])
    )


def test_train_step_is_deterministic(micro):
    trainer, wav = micro
    (a, losses_a, _), (b, losses_b, _) = _run(trainer, wav, 3), _run(trainer, wav, 3)
    assert losses_a == losses_b
    np.testing.assert_array_equal(np.asarray(a.embed_KVD), np.asarray(b.embed_KVD))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_config_validation():
    with pytest.raises(ValueError, match="decay"):
        VQTrainConfig(decay=1.0)
    assert dataclasses.replace(et.CodecTrainConfig(), l1_weight=0.0).l1_weight == 0.0
