"""Training EnCodec from scratch without a discriminator: reconstruction losses, one jitted step.

    wav [B, C, W] --encoder--> latents [B, T, D] --RVQ (EMA codebooks)--> q [B, T, D]
        --decoder--> y [B, C, W]
    loss = l1_weight |y - wav|_1 + msspec_weight msspec(y, wav) + penalty

`msspec` is audiocraft's multi-scale mel loss: at each window 2**i (i in range_start..range_end-1,
hop a quarter window) an L1 distance between the mel power spectrograms plus alpha_i times the
mean squared distance between their log10, alpha_i = sqrt(2**i - 1). `penalty` is the quantizer's
commitment loss; the codebooks move by EMA after each step (`quantization_train.update`), and
the encoder and decoder by optax's Adam. `CodecTrainer.step` is the whole step, one compiled
program: forward, losses, gradients, optimizer update, codebook update.

Mirrors audiocraft 1.3.0 `solvers/compression.py` (`CompressionSolver.run_step`),
`models/encodec.py` (`EncodecModel.forward`) and `losses/specloss.py`
(`MelSpectrogramWrapper`, `MultiScaleMelSpectrogramLoss`; torchaudio's `MelSpectrogram`).

Differences from the reference:
- No adversarial or feature-matching losses (no discriminators), and fixed loss weights instead
  of audiocraft's gradient `Balancer`.
- Plain convolution kernels, no weight normalisation: `EncodecModel` holds folded kernels (its
  inference form), and the trained kernels are saved as they are.
- `unit_scale_init` restarts the convolutions from N(0, 1/fan_in). Torch's default
  (U(+-1/sqrt(fan_in)), variance 1/(3 fan_in)) shrinks the signal at every layer: the toy codec's
  13 layers each way turn a 0.09 RMS input into a 1e-4 RMS output, and learning waits until Adam
  has grown the weights back, which a run of a few thousand steps cannot afford.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from audiogen_jax import quantization_train as vq
from audiogen_jax.encodec import Conv1d, ConvTranspose1d, EncodecModel


@dataclasses.dataclass(frozen=True, kw_only=True)
class MelLossConfig:
    """`MultiScaleMelSpectrogramLoss` settings (audiocraft's argument names)."""

    range_start: int = 6  # first window 2**range_start samples
    range_end: int = 11  # last window 2**(range_end - 1)
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float | None = None  # None: sample_rate / 2
    normalized: bool = False  # STFT divided by the window's norm, loss by the sum of weights
    alphas: bool = True  # log-mel MSE weights sqrt(2**i - 1) (else 1)
    floor_level: float = 1e-5  # log10(floor + mel)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CodecTrainConfig:
    """What one codec training run does, besides the data."""

    learning_rate: float = 3e-4
    b1: float = 0.5  # Adam betas: audiocraft's EnCodec recipe
    b2: float = 0.9
    warmup_steps: int = 0
    total_steps: int = 1  # the cosine decay's length after warm-up (1: no decay worth the name)
    max_norm: float = 0.0  # global gradient-norm clip (0: none)
    l1_weight: float = 0.1
    msspec_weight: float = 2.0
    mel: MelLossConfig = MelLossConfig()
    vq: vq.VQTrainConfig = vq.VQTrainConfig()


# --------------------------------------------------------------------------------------------------
# Spectral losses and metrics.


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """HTK-scale triangular filters without area normalisation (torchaudio's defaults).

    Returns:
      float32 [n_fft // 2 + 1, n_mels]: a power spectrum [..., F] times this is its mel spectrum.
    """
    f_max = sample_rate // 2 if f_max is None else f_max
    all_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    m_min, m_max = (2595.0 * np.log10(1.0 + f / 700.0) for f in (f_min, f_max))
    f_pts = 700.0 * (10.0 ** (np.linspace(m_min, m_max, n_mels + 2) / 2595.0) - 1.0)
    slopes = f_pts[None, :] - all_freqs[:, None]
    f_diff = np.diff(f_pts)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up)).astype(np.float32)


def mel_spectrogram(
    x_BW: jax.Array,
    sample_rate: int,
    n_fft: int,
    hop: int,
    n_mels: int,
    *,
    f_min: float = 0.0,
    f_max: float | None = None,
    log: bool = True,
    normalized: bool = False,
    floor_level: float = 1e-5,
) -> jax.Array:
    """Mel power spectrogram [B, n_mels, frames] as audiocraft's `MelSpectrogramWrapper`.

    The signal is reflect-padded by (n_fft - hop) // 2 on both sides, then zero-padded on the right
    so the last frame is full, and cut into Hann-windowed frames (periodic window, no centring).
    """
    pad = (n_fft - hop) // 2
    x_BW = jnp.pad(x_BW, ((0, 0), (pad, pad)), mode="reflect")
    length = x_BW.shape[-1]
    n_frames = math.ceil((length - n_fft) / hop) + 1
    x_BW = jnp.pad(x_BW, ((0, 0), (0, (n_frames - 1) * hop + n_fft - length)))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    if n_fft % hop == 0:
        # Frames from hop-sized blocks: slices and a concatenation, cheaper to differentiate than
        # a gather (whose gradient is a scatter).
        blocks = x_BW[:, : (n_frames - 1 + n_fft // hop) * hop].reshape(x_BW.shape[0], -1, hop)
        frames_BNW = jnp.concatenate(
            [blocks[:, i : i + n_frames] for i in range(n_fft // hop)], axis=-1
        )
    else:
        frames_BNW = x_BW[:, np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]]
    frames_BNW = frames_BNW * window.astype(np.float32)
    power_BNF = jnp.abs(jnp.fft.rfft(frames_BNW, axis=-1)) ** 2
    if normalized:
        power_BNF = power_BNF / float(np.sum(window**2))
    fb = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
    mel = jnp.einsum("BNF,FM->BMN", power_BNF, fb)
    return jnp.log10(floor_level + mel) if log else mel


def multiscale_mel_loss(
    x_BW: jax.Array, y_BW: jax.Array, sample_rate: int, cfg: MelLossConfig
) -> jax.Array:
    """audiocraft's `MultiScaleMelSpectrogramLoss(x, y)`: a scalar."""
    loss, total = 0.0, 0.0
    for i in range(cfg.range_start, cfg.range_end):
        n_fft = 2**i
        common = dict(f_min=cfg.f_min, f_max=cfg.f_max, normalized=cfg.normalized)
        mel_x, mel_y = (
            mel_spectrogram(v, sample_rate, n_fft, n_fft // 4, cfg.n_mels, log=False, **common)
            for v in (x_BW, y_BW)
        )
        log_x, log_y = (jnp.log10(cfg.floor_level + m) for m in (mel_x, mel_y))
        alpha = math.sqrt(n_fft - 1) if cfg.alphas else 1.0
        loss = loss + jnp.mean(jnp.abs(mel_x - mel_y)) + alpha * jnp.mean((log_x - log_y) ** 2)
        total += alpha + 1
    return loss / total if cfg.normalized else loss


def si_snr(reference_BW: jax.Array, estimate_BW: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Scale-invariant signal-to-noise ratio in dB, per row [B] (both signals made zero-mean)."""
    ref = reference_BW - reference_BW.mean(-1, keepdims=True)
    est = estimate_BW - estimate_BW.mean(-1, keepdims=True)
    target = (
        jnp.sum(est * ref, -1, keepdims=True) / (jnp.sum(ref**2, -1, keepdims=True) + eps)
    ) * ref
    noise = est - target
    return 10 * jnp.log10((jnp.sum(target**2, -1) + eps) / (jnp.sum(noise**2, -1) + eps))


def mel_distance(
    reference_BW: jax.Array, estimate_BW: jax.Array, sample_rate: int, floor: float = 1e-5
) -> jax.Array:
    """Mean |log10 max(mel, floor)| difference per row [B] (64 mels, 64 ms windows, hop 16 ms).

    The usual codec metric (e.g. DAC's mel distance), over every time-frequency cell. On a clip
    that is mostly digital silence, cells where both signals are silent count as exact, so compare
    it between codecs on the same clips rather than across worlds.
    """
    n_fft = 2 ** round(math.log2(0.064 * sample_rate))
    ref, est = (
        jnp.log10(
            jnp.maximum(mel_spectrogram(v, sample_rate, n_fft, n_fft // 4, 64, log=False), floor)
        )
        for v in (reference_BW, estimate_BW)
    )
    return jnp.mean(jnp.abs(ref - est), axis=(1, 2))


# --------------------------------------------------------------------------------------------------
# The train step.


def unit_scale_init(model: EncodecModel, seed: int) -> EncodecModel:
    """Redraws every convolution kernel from N(0, 1/fan_in), in place; returns `model`.

    fan_in is the taps one output sample sums: C_in * k for a convolution, C_in * k / stride for
    a transposed one. With this the SEANet stack passes its input through at about unit scale
    (measured on the toy codec: 0.09 RMS in, 0.2 RMS out), instead of torch's default shrinking.
    """
    rng = np.random.default_rng(seed)
    for _, module in nnx.iter_graph(model):
        if isinstance(module, Conv1d | ConvTranspose1d):
            k, c_in, c_out = module.kernel.shape
            fan_in = c_in * k / (module.stride if isinstance(module, ConvTranspose1d) else 1)
            draw = rng.standard_normal((k, c_in, c_out)) / np.sqrt(fan_in)
            module.kernel.set_value(jnp.asarray(draw, jnp.float32))
    return model


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CodecTrainState:
    """Everything a training step changes."""

    params: nnx.State  # encoder and decoder parameters (the codebooks are not among them)
    opt_state: optax.OptState
    embed_KVD: jax.Array  # the codebooks
    stats: vq.VQStats  # their running averages
    step: jax.Array  # int32 scalar


def _is_trainable(path, value) -> bool:
    return isinstance(value, nnx.Param) and "quantizer" not in path


class CodecTrainer:
    """The model's fixed structure, the optimizer, and the jitted `step` over a `CodecTrainState`.

    Args:
      model: the codec to train (its current weights are the starting point).
      cfg: losses, optimizer and quantizer settings.
    """

    def __init__(self, model: EncodecModel, cfg: CodecTrainConfig):
        self.cfg = cfg
        self.sample_rate = model.sample_rate
        self.graphdef, self._params, self.rest = nnx.split(model, _is_trainable, ...)
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, cfg.learning_rate, max(cfg.warmup_steps, 1), max(cfg.total_steps, 2)
        )
        adam = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2)
        clip = optax.clip_by_global_norm(cfg.max_norm) if cfg.max_norm else optax.identity()
        self.optimizer = optax.chain(clip, adam)
        self.step = jax.jit(self._step, donate_argnums=0)

    def _model(self, params: nnx.State) -> EncodecModel:
        return nnx.merge(self.graphdef, params, self.rest)

    def init(self, key: jax.Array, wav_BCW: jax.Array) -> CodecTrainState:
        """The starting state: k-means codebooks from the encoder's latents of this batch."""
        z_BTD = jax.jit(lambda p, w: self._model(p).encode_latent(w))(self._params, wav_BCW)
        cfg = self.model_config
        embed, stats = jax.jit(vq.init_codebooks, static_argnums=(2, 3, 4))(
            key, z_BTD.reshape(-1, z_BTD.shape[-1]), cfg.n_q, cfg.bins, self.cfg.vq
        )
        params = jax.tree.map(jnp.copy, self._params)  # the step donates its state's buffers
        return CodecTrainState(
            params, self.optimizer.init(params), embed, stats, jnp.zeros((), jnp.int32)
        )

    @property
    def model_config(self):
        return self._model(self._params).config

    def losses(self, params: nnx.State, embed_KVD: jax.Array, wav_BCW: jax.Array):
        """(total loss, (named losses, codebook-update inputs)) of one batch [B, C, W]."""
        model = self._model(params)
        z_BTD = model.encode_latent(wav_BCW)
        q_BTD, codes_BKT, penalty, inputs_KND = vq.quantize(embed_KVD, z_BTD, self.cfg.vq)
        y_BCW = model.decode_latent(q_BTD)[..., : wav_BCW.shape[-1]]  # as the reference trims
        B, C, W = wav_BCW.shape
        l1 = jnp.mean(jnp.abs(y_BCW - wav_BCW))
        msspec = multiscale_mel_loss(
            y_BCW.reshape(B * C, W), wav_BCW.reshape(B * C, W), self.sample_rate, self.cfg.mel
        )
        total = self.cfg.l1_weight * l1 + self.cfg.msspec_weight * msspec + penalty
        return total, (
            {"loss": total, "l1": l1, "msspec": msspec, "penalty": penalty},
            (inputs_KND, codes_BKT),
        )

    def _step(self, state: CodecTrainState, wav_BCW: jax.Array, key: jax.Array):
        grads, (metrics, (inputs_KND, codes_BKT)) = jax.grad(self.losses, has_aux=True)(
            state.params, state.embed_KVD, wav_BCW
        )
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        embed, stats, dead_K = vq.update(
            jax.random.fold_in(key, state.step),
            state.embed_KVD,
            state.stats,
            inputs_KND,
            codes_BKT,
            self.cfg.vq,
        )
        metrics = dict(metrics, dead=dead_K.sum(), grad_norm=optax.tree.norm(grads))
        return CodecTrainState(params, opt_state, embed, stats, state.step + 1), metrics

    def export(self, state: CodecTrainState) -> EncodecModel:
        """The trained `EncodecModel`: the state's weights and codebooks in an inference module."""
        model = self._model(jax.tree.map(jnp.copy, state.params))
        for k, layer in enumerate(model.quantizer.layers):
            layer.embed.set_value(state.embed_KVD[k])
        return model


def fit(
    trainer: CodecTrainer,
    state: CodecTrainState,
    batch: Callable[[int], np.ndarray],
    steps: int,
    key: jax.Array,
    *,
    progress: bool = True,
    log: Callable[[int, dict[str, float]], None] | None = None,
    log_every: int = 50,
    on_step: Callable[[int, CodecTrainState], None] | None = None,
) -> CodecTrainState:
    """Runs `trainer.step` from the state's step to `steps`, on `batch(step)` [B, C, W].

    Args:
      log: called every `log_every` steps (and at the end) with the step and its metrics.
      on_step: called after every step with the steps done and the new state, to checkpoint it
        (synchronously: the next step donates the state's buffers).
    """
    from tqdm.auto import tqdm

    start = int(state.step)
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, desc="codec")
    for i in bar:
        state, metrics = trainer.step(state, jnp.asarray(batch(i)), key)
        if (i + 1) % log_every == 0 or i + 1 == steps:
            host = {k: float(v) for k, v in metrics.items()}
            bar.set_postfix(
                loss=f"{host['loss']:.3f}", msspec=f"{host['msspec']:.3f}", dead=int(host["dead"])
            )
            if log is not None:
                log(i + 1, host)
        if on_step is not None:
            on_step(i + 1, state)
    return state
