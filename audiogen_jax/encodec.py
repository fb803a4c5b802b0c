"""EnCodec: the neural audio codec that turns a waveform into K streams of integer codes and back.

    wav [B, C, W] --SEANet encoder--> latents [B, T, D] --RVQ--> codes [B, K, T]
    codes [B, K, T] --sum of codewords--> latents [B, T, D] --SEANet decoder--> wav [B, C, T * hop]
    (T = ceil(W / hop))

The SEANet encoder is a stack of strided 1-d convolutions (one per ratio; hop = product of the
ratios), each preceded by residual blocks, then a multi-layer LSTM with a skip connection at the
bottleneck. The decoder mirrors it with transposed convolutions. Every convolution pads its input
itself ("streamable" convs), so the output length depends only on the input length and the strides.

References: Défossez et al., "High Fidelity Neural Audio Compression" (arXiv:2210.13438);
audiocraft 1.3.0 `models/encodec.py` (`EncodecModel`), `modules/seanet.py` (`SEANetEncoder`,
`SEANetDecoder`, `SEANetResnetBlock`), `modules/conv.py` (`StreamableConv1d`,
`StreamableConvTranspose1d`, `pad1d`), `modules/lstm.py` (`StreamableLSTM`). Module attribute names
follow the reference's state-dict keys (`encoder.model.3.conv.kernel` for
`encoder.model.3.conv.conv.weight_{g,v}`), so `encodec_params.py` is mostly renames.

Differences from the reference:
- Activations are channels-last `[B, W, C]` inside the codec (XLA:CPU convolutions are fastest that
  way); the public `encode` / `decode` take and return the reference's `[B, C, W]` and `[B, K, T]`.
- Weight normalisation is folded into plain kernels at conversion (`w = g * v / |v|`): inference
  only.
- A transposed convolution runs as an ordinary convolution with `s * C_out` output channels whose
  frames are then interleaved ("sub-pixel" form): the same sums, without multiplying zeros.
- The LSTM's input projection runs for all time steps in one matmul; only the recurrent product is
  inside the `lax.scan`. Its two biases are summed at conversion.
- Inference only, no `renormalize` (the converter refuses checkpoints that use it), no streaming
  state.
- `encode` refuses audio whose peak exceeds `MAX_AMPLITUDE` (100, i.e. 40 dB over full scale)
  instead of returning meaningless codes (at 1e10 every frame got the same code): float audio lies
  in [-1, 1], and such a peak is a mistake, most often integer PCM passed as float.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from audiogen_jax import checkpoint, checks, initializers, program_cache
from audiogen_jax.config import EncodecConfig
from audiogen_jax.quantization import ResidualVectorQuantizer

# Float audio is in [-1, 1]; a peak beyond this is a unit mistake (16-bit PCM values as floats reach
# 32767), not a loud sound.
MAX_AMPLITUDE = 100.0


def _uniform(key: jax.Array, shape: tuple[int, ...], bound: float) -> nnx.Param:
    """A parameter drawn from U(-bound, bound) (numpy on the host: see `initializers.py`)."""
    return nnx.Param(initializers.uniform(key, shape, bound))


def _zeros(shape: tuple[int, ...]) -> nnx.Param:
    return nnx.Param(jax.device_put(np.zeros(shape, np.float32)))


# torch F.pad mode -> jnp.pad mode.
_JNP_PAD_MODES = {
    "constant": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
}


def _extra_padding(length: int, kernel_size: int, stride: int, padding_total: int) -> int:
    """Right padding that makes the last window of a strided conv full (reference
    `get_extra_padding_for_conv1d`)."""
    n_frames = (length - kernel_size + padding_total) / stride + 1
    ideal_length = (math.ceil(n_frames) - 1) * stride + (kernel_size - padding_total)
    return ideal_length - length


def _pad1d(x_BWC: jax.Array, left: int, right: int, mode: str) -> jax.Array:
    """Pads the time axis like the reference's `pad1d`, including reflect padding of very short
    inputs."""
    if left == 0 and right == 0:
        return x_BWC
    extra = 0
    if mode == "reflect":
        # numpy/torch reflect needs more samples than the pad; the reference zero-pads first, then
        # drops those zeros again after reflecting.
        length = x_BWC.shape[1]
        if length <= max(left, right):
            extra = max(left, right) - length + 1
            x_BWC = jnp.pad(x_BWC, ((0, 0), (0, extra), (0, 0)))
    out = jnp.pad(x_BWC, ((0, 0), (left, right), (0, 0)), mode=_JNP_PAD_MODES[mode])
    return out[:, : out.shape[1] - extra] if extra else out


class ELU(nnx.Module):
    """x if x > 0 else alpha * (exp(x) - 1); parameterless, kept as a module so indices match the
    reference."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.elu(x, self.alpha)


class Tanh(nnx.Module):
    """The decoder's optional final activation."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(x)


class Conv1d(nnx.Module):
    """A plain 1-d convolution without padding; kernel [k, C_in, C_out] (torch's weight is
    [C_out, C_in, k])."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        rngs: nnx.Rngs,
    ):
        self.stride = stride
        self.dilation = dilation
        # torch's default conv init (kaiming_uniform, a=sqrt(5)): U(+-1/sqrt(fan_in)),
        # fan_in = C_in * k.
        bound = 1 / math.sqrt(in_channels * kernel_size)
        self.kernel = _uniform(rngs.params(), (kernel_size, in_channels, out_channels), bound)
        self.bias = _zeros((out_channels,))

    def __call__(self, x_BWC: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            x_BWC,
            self.kernel[...],
            window_strides=(self.stride,),
            padding="VALID",
            rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + self.bias[...]


class ConvTranspose1d(nnx.Module):
    """A 1-d transposed convolution without padding: [B, L, C_in] -> [B, (L - 1) * s + k, C_out].

    kernel [k, C_in, C_out] (torch's weight is [C_in, C_out, k]). Output sample t = m * s + r gets
    sum_p x[m - p] @ kernel[p * s + r], so taps are grouped into n = ceil(k / s) blocks of s phases
    and the whole thing is one ordinary convolution with n taps and s * C_out channels, whose output
    frames are then unfolded into s samples each.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int, rngs: nnx.Rngs
    ):
        self.stride = stride
        # torch computes fan_in from its weight's dim 1, which for a transposed conv is C_out.
        bound = 1 / math.sqrt(out_channels * kernel_size)
        self.kernel = _uniform(rngs.params(), (kernel_size, in_channels, out_channels), bound)
        self.bias = _zeros((out_channels,))

    def __call__(self, x_BLC: jax.Array) -> jax.Array:
        k, c_in, c_out = self.kernel.shape
        s = self.stride
        n = -(-k // s)
        kernel = jnp.pad(self.kernel[...], ((0, n * s - k), (0, 0), (0, 0)))  # [n*s, Ci, Co]
        # [n, s, Ci, Co] -> taps reversed (correlation, not convolution) -> [n, Ci, s*Co],
        # phase-major.
        kernel = (
            kernel.reshape(n, s, c_in, c_out)[::-1]
            .transpose(0, 2, 1, 3)
            .reshape(n, c_in, s * c_out)
        )
        frames = jax.lax.conv_general_dilated(
            x_BLC,
            kernel,
            window_strides=(1,),
            padding=[(n - 1, n - 1)],
            dimension_numbers=("NWC", "WIO", "NWC"),
        )  # [B, L + n - 1, s * Co]
        B, L = x_BLC.shape[:2]
        y = frames.reshape(B, (L + n - 1) * s, c_out)[:, : (L - 1) * s + k]
        return y + self.bias[...]


class StreamableConv1d(nnx.Module):
    """Conv1d that pads its own input so the output has ceil(W / stride) frames (reference
    `StreamableConv1d`).

    Non-causal: the padding is split between both sides (the extra half sample goes left). Causal:
    all of it on the left. Either way, extra right padding completes the last strided window.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        causal: bool,
        pad_mode: str,
        rngs: nnx.Rngs,
    ):
        self.causal = causal
        self.pad_mode = pad_mode
        self.conv = Conv1d(
            in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, rngs=rngs
        )

    def __call__(self, x_BWC: jax.Array) -> jax.Array:
        kernel_size = (self.conv.kernel.shape[0] - 1) * self.conv.dilation + 1  # with dilation
        stride = self.conv.stride
        padding_total = kernel_size - stride
        extra = _extra_padding(x_BWC.shape[1], kernel_size, stride, padding_total)
        if self.causal:
            left, right = padding_total, extra
        else:
            right = padding_total // 2
            left = padding_total - right
            right += extra
        return self.conv(_pad1d(x_BWC, left, right, self.pad_mode))


class StreamableConvTranspose1d(nnx.Module):
    """ConvTranspose1d trimmed back to L * stride samples (reference
    `StreamableConvTranspose1d`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int,
        causal: bool,
        trim_right_ratio: float,
        rngs: nnx.Rngs,
    ):
        self.causal = causal
        self.trim_right_ratio = trim_right_ratio
        self.convtr = ConvTranspose1d(
            in_channels, out_channels, kernel_size, stride=stride, rngs=rngs
        )

    def __call__(self, x_BLC: jax.Array) -> jax.Array:
        padding_total = self.convtr.kernel.shape[0] - self.convtr.stride
        if self.causal:
            right = math.ceil(padding_total * self.trim_right_ratio)
        else:
            right = padding_total // 2
        left = padding_total - right
        y = self.convtr(x_BLC)
        return y[:, left : y.shape[1] - right]


class SEANetResnetBlock(nnx.Module):
    """x + block(x), block = [ELU, conv k (dilated) to C // compress, ELU, conv 1x1 back to C].

    The shortcut is the identity (`true_skip`) or a 1x1 streamable conv.
    """

    def __init__(self, dim: int, *, dilation: int, cfg: EncodecConfig, rngs: nnx.Rngs):
        hidden = dim // cfg.compress
        common = {"causal": cfg.causal, "pad_mode": cfg.pad_mode, "rngs": rngs}
        self.block = nnx.List(
            [
                ELU(cfg.elu_alpha),
                StreamableConv1d(
                    dim, hidden, cfg.residual_kernel_size, dilation=dilation, **common
                ),
                ELU(cfg.elu_alpha),
                StreamableConv1d(hidden, dim, 1, **common),
            ]
        )
        self.shortcut = None if cfg.true_skip else StreamableConv1d(dim, dim, 1, **common)

    def __call__(self, x_BWC: jax.Array) -> jax.Array:
        y = x_BWC
        for layer in self.block:
            y = layer(y)
        skip = x_BWC if self.shortcut is None else self.shortcut(x_BWC)
        return skip + y


class LSTMLayer(nnx.Module):
    """One LSTM layer, gates in torch's order (input, forget, cell, output), zero initial state.

    kernel_ih [C_in, 4H], weight_hh [4H, H], bias [4H] (= torch's b_ih + b_hh). The recurrent matrix
    keeps torch's [out, in] layout: XLA:CPU runs the per-step matrix-vector product about 3x faster
    contracting the last axis of both operands than with an [in, out] matrix.
    """

    def __init__(self, in_dim: int, hidden: int, *, rngs: nnx.Rngs):
        bound = 1 / math.sqrt(hidden)  # torch: every LSTM weight ~ U(+-1/sqrt(H))
        self.kernel_ih = _uniform(rngs.params(), (in_dim, 4 * hidden), bound)
        self.weight_hh = _uniform(rngs.params(), (4 * hidden, hidden), bound)
        self.bias = _zeros((4 * hidden,))

    def __call__(self, x_BTC: jax.Array) -> jax.Array:
        B = x_BTC.shape[0]
        H = self.weight_hh.shape[1]
        weight_hh = self.weight_hh[...]
        # The input projection does not depend on the state: one matmul for every step at once.
        gates_x_TBG = jnp.einsum("BTC,CG->TBG", x_BTC, self.kernel_ih[...]) + self.bias[...]

        def step(carry, gates_x_BG):
            h_BH, c_BH = carry
            gates = gates_x_BG + jax.lax.dot_general(h_BH, weight_hh, (((1,), (1,)), ((), ())))
            i, f, g, o = jnp.split(gates, 4, axis=-1)
            c_BH = jax.nn.sigmoid(f) * c_BH + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_BH = jax.nn.sigmoid(o) * jnp.tanh(c_BH)
            return (h_BH, c_BH), h_BH

        zeros = jnp.zeros((B, H), x_BTC.dtype)
        _, h_TBH = jax.lax.scan(step, (zeros, zeros), gates_x_TBG)
        return h_TBH.transpose(1, 0, 2)


class StreamableLSTM(nnx.Module):
    """A stack of LSTM layers over time, plus the input (reference `StreamableLSTM`, skip=True)."""

    def __init__(self, dim: int, num_layers: int, *, rngs: nnx.Rngs):
        self.layers = nnx.List([LSTMLayer(dim, dim, rngs=rngs) for _ in range(num_layers)])

    def __call__(self, x_BTC: jax.Array) -> jax.Array:
        y = x_BTC
        for layer in self.layers:
            y = layer(y)
        return y + x_BTC


def _run(layers: nnx.List, x: jax.Array) -> jax.Array:
    for layer in layers:
        x = layer(x)
    return x


class SEANetEncoder(nnx.Module):
    """wav [B, W, C_audio] -> latents [B, ceil(W / hop), D]; `model` indices match the
    reference's."""

    def __init__(self, cfg: EncodecConfig, *, rngs: nnx.Rngs):
        common = {"causal": cfg.causal, "pad_mode": cfg.pad_mode, "rngs": rngs}
        width = cfg.n_filters
        model: list = [StreamableConv1d(cfg.channels, width, cfg.kernel_size, **common)]
        for ratio in reversed(cfg.ratios):  # the config lists decoder (up-sampling) order
            model += [
                SEANetResnetBlock(width, dilation=cfg.dilation_base**j, cfg=cfg, rngs=rngs)
                for j in range(cfg.n_residual_layers)
            ]
            model += [
                ELU(cfg.elu_alpha),
                StreamableConv1d(width, 2 * width, 2 * ratio, stride=ratio, **common),
            ]
            width *= 2
        if cfg.lstm:
            model.append(StreamableLSTM(width, cfg.lstm, rngs=rngs))
        model += [
            ELU(cfg.elu_alpha),
            StreamableConv1d(width, cfg.dimension, cfg.last_kernel_size, **common),
        ]
        self.model = nnx.List(model)

    def __call__(self, x_BWC: jax.Array) -> jax.Array:
        return _run(self.model, x_BWC)


class SEANetDecoder(nnx.Module):
    """latents [B, T, D] -> wav [B, T * hop, C_audio]; `model` indices match the reference's."""

    def __init__(self, cfg: EncodecConfig, *, rngs: nnx.Rngs):
        common = {"causal": cfg.causal, "pad_mode": cfg.pad_mode, "rngs": rngs}
        width = cfg.n_filters * 2 ** len(cfg.ratios)
        model: list = [StreamableConv1d(cfg.dimension, width, cfg.kernel_size, **common)]
        if cfg.lstm:
            model.append(StreamableLSTM(width, cfg.lstm, rngs=rngs))
        for ratio in cfg.ratios:
            model += [
                ELU(cfg.elu_alpha),
                StreamableConvTranspose1d(
                    width,
                    width // 2,
                    2 * ratio,
                    stride=ratio,
                    causal=cfg.causal,
                    trim_right_ratio=cfg.trim_right_ratio,
                    rngs=rngs,
                ),
            ]
            model += [
                SEANetResnetBlock(width // 2, dilation=cfg.dilation_base**j, cfg=cfg, rngs=rngs)
                for j in range(cfg.n_residual_layers)
            ]
            width //= 2
        model += [
            ELU(cfg.elu_alpha),
            StreamableConv1d(cfg.n_filters, cfg.channels, cfg.last_kernel_size, **common),
        ]
        if cfg.final_activation == "Tanh":
            model.append(Tanh())
        self.model = nnx.List(model)

    def __call__(self, z_BTD: jax.Array) -> jax.Array:
        return _run(self.model, z_BTD)


# --------------------------------------------------------------------------------------------------
# Input checks: clear errors before anything is traced.


def _check_wav(wav, channels: int) -> jax.Array:
    if not hasattr(wav, "shape") or not hasattr(wav, "dtype"):
        wav = np.asarray(wav)
    if wav.ndim != 3:
        raise ValueError(f"wav must be [B, C, W] (rank 3), got shape {tuple(wav.shape)}")
    B, C, W = wav.shape
    if C != channels:
        raise ValueError(
            f"wav has {C} channels, the codec expects {channels}: shape {tuple(wav.shape)}"
        )
    if B == 0 or W == 0:
        raise ValueError(f"wav is empty: shape {tuple(wav.shape)}")
    if not jnp.issubdtype(wav.dtype, jnp.floating):
        raise ValueError(f"wav must be floating point, got {wav.dtype}")
    if checks.is_concrete(wav):
        host = np.asarray(wav)
        if not np.isfinite(host).all():
            raise ValueError("wav contains NaN or infinite samples")
        peak = float(np.abs(host).max())
        if peak > MAX_AMPLITUDE:
            raise ValueError(
                f"wav peaks at {peak:.3g}, beyond {MAX_AMPLITUDE:g} (float audio lies in [-1, 1]); "
                "scale it first (integer PCM: divide by 32768 for 16-bit)"
            )
    return jnp.asarray(wav, jnp.float32)


def _check_codes(codes, n_q: int, bins: int) -> jax.Array:
    if not hasattr(codes, "shape") or not hasattr(codes, "dtype"):
        codes = np.asarray(codes)
    if codes.ndim != 3:
        raise ValueError(f"codes must be [B, K, T] (rank 3), got shape {tuple(codes.shape)}")
    B, K, T = codes.shape
    if not 1 <= K <= n_q:
        raise ValueError(f"codes have K={K} codebooks, the codec has {n_q} (K must be in 1..{n_q})")
    if B == 0 or T == 0:
        raise ValueError(f"codes are empty: shape {tuple(codes.shape)}")
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    if checks.is_concrete(codes):
        host = np.asarray(codes)
        if host.min() < 0 or host.max() >= bins:
            raise ValueError(
                f"codes must lie in [0, {bins}), found values in [{host.min()}, {host.max()}]"
            )
    return jnp.asarray(codes, jnp.int32)


# Jitted pure functions over (graph, state); jax caches one executable per input shape.
# Called through `program_cache`, which keeps each compiled program across processes.
@functools.partial(jax.jit, static_argnames="graphdef")
def _encode_jit(state, wav_BCW, *, graphdef):
    return nnx.merge(graphdef, state).encode_traced(wav_BCW)


@functools.partial(jax.jit, static_argnames="graphdef")
def _decode_jit(state, codes_BKT, *, graphdef):
    return nnx.merge(graphdef, state).decode_traced(codes_BKT)


class EncodecModel(nnx.Module):
    """SEANet encoder + residual VQ + SEANet decoder (reference `EncodecModel`,
    renormalize=False)."""

    def __init__(self, cfg: EncodecConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.encoder = SEANetEncoder(cfg, rngs=rngs)
        self.decoder = SEANetDecoder(cfg, rngs=rngs)
        self.quantizer = ResidualVectorQuantizer(cfg.dimension, cfg.n_q, cfg.bins, rngs=rngs)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, shardings: checkpoint.Shardings | None = None
    ) -> EncodecModel:
        """Loads a converted directory (`config.json` section 'compression' +
        `compression.safetensors`); `shardings` as `checkpoint.load_module`'s."""
        cfg = EncodecConfig.from_dict(checkpoint.read_config(directory, "compression"))
        path = os.path.join(directory, checkpoint.WEIGHT_FILES["compression"])
        return checkpoint.load_module(
            lambda: cls(cfg, rngs=checkpoint.SHAPE_ONLY_RNGS), path, shardings=shardings
        )

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def frame_rate(self) -> int:
        """Frames per second, `sample_rate // hop_length` (an int, as the reference's builder
        sets)."""
        return self.config.frame_rate

    @property
    def n_q(self) -> int:
        return self.config.n_q

    @property
    def cardinality(self) -> int:
        return self.config.bins

    # Traceable paths (no checks): for use inside a caller's own jit.
    def encode_latent(self, wav_BCW: jax.Array) -> jax.Array:
        """wav [B, C, W] -> continuous latents [B, T, D], before quantization."""
        return self.encoder(wav_BCW.transpose(0, 2, 1))

    def encode_traced(self, wav_BCW: jax.Array) -> jax.Array:
        """wav [B, C, W] -> codes [B, K, T] int32."""
        return self.quantizer.encode(self.encode_latent(wav_BCW))

    def decode_latent(self, z_BTD: jax.Array) -> jax.Array:
        """Latents [B, T, D] -> wav [B, C, T * hop]."""
        return self.decoder(z_BTD).transpose(0, 2, 1)

    def decode_traced(self, codes_BKT: jax.Array) -> jax.Array:
        """codes [B, K, T] -> wav [B, C, T * hop]."""
        return self.decode_latent(self.quantizer.decode(codes_BKT))

    # Public, checked, jitted entry points.
    def encode(self, wav_BCW) -> jax.Array:
        """Encodes audio to codes.

        Args:
          wav_BCW: [B, C, W] float audio at `sample_rate`, C = `channels`, any W >= 1.

        Returns:
          codes [B, K, T] int32 with K = n_q and T = ceil(W / hop_length).
        """
        wav = _check_wav(wav_BCW, self.channels)
        graphdef, state = nnx.split(self)
        return program_cache.call(_encode_jit, state, wav, graphdef=graphdef)

    def decode(self, codes_BKT) -> jax.Array:
        """Decodes codes to audio.

        Args:
          codes_BKT: [B, K, T] integers in [0, bins); K <= n_q uses the first K codebooks only.

        Returns:
          wav [B, C, T * hop_length] float32 (not trimmed to the encoded length, like the
          reference).
        """
        codes = _check_codes(codes_BKT, self.n_q, self.cardinality)
        graphdef, state = nnx.split(self)
        return program_cache.call(_decode_jit, state, codes, graphdef=graphdef)
