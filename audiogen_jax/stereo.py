"""Interleaved stereo: a mono EnCodec on each channel, its codebooks interleaved into 2K streams.

MusicGen-stereo keeps the mono 32 kHz codec and models both channels with one LM: the left and
right channels are encoded separately, and their K codebooks are interleaved so that stream 2k is
the left channel's codebook k and stream 2k + 1 the right's:

    wav [B, 2, W] --each channel--> codes [2, B, K, T] --interleave--> codes [B, 2K, T]
    codes [B, 2K, T] --de-interleave--> [2, B, K, T] --decode each--> wav [B, 2, T * hop]

The LM then sees 2K streams with their own delays (the stereo checkpoints delay each left/right
pair alike: [0, 0, 1, 1, 2, 2, 3, 3]); nothing else in generation changes.

Reference: audiocraft 1.3.0 `models/encodec.py` (`InterleaveStereoCompressionModel`, with
`per_timestep=False`), applied by `models/builders.py` (`get_wrapped_compression_model`) when the
LM's config has `interleave_stereo_codebooks.use`.

Differences from the reference:
- Both channels go through the codec as one batch of 2B mono signals (the reference makes two
  calls); each row is computed independently either way.
- `per_timestep=True` (interleaving in time, at twice the frame rate) is not implemented; no
  released checkpoint uses it, and the converter refuses it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from audiogen_jax.encodec import EncodecModel, _check_codes, _check_wav


def interleave(codes_CBKT: jax.Array) -> jax.Array:
    """Per-channel codes [2, B, K, T] -> [B, 2K, T], stream 2k + c = channel c's codebook k."""
    C, B, K, T = codes_CBKT.shape
    return codes_CBKT.transpose(1, 2, 0, 3).reshape(B, K * C, T)


def deinterleave(codes_BKT: jax.Array) -> jax.Array:
    """The inverse of `interleave`: [B, 2K, T] -> [2, B, K, T]."""
    B, K2, T = codes_BKT.shape
    return codes_BKT.reshape(B, K2 // 2, 2, T).transpose(2, 0, 1, 3)


class InterleaveStereoCompressionModel(nnx.Module):
    """A mono `EncodecModel` applied to each channel of stereo audio, codebooks interleaved.

    It has the codec's interface (`encode`, `decode`, `sample_rate`, `frame_rate`, `hop_length`,
    `n_q`, `cardinality`, `channels`), with 2 channels and twice the codebooks.
    """

    def __init__(self, model: EncodecModel):
        if model.channels != 1:
            raise ValueError(f"the wrapped codec must be mono, it has {model.channels} channels")
        self.model = model

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def channels(self) -> int:
        return 2

    @property
    def hop_length(self) -> int:
        return self.model.hop_length

    @property
    def frame_rate(self) -> int:
        return self.model.frame_rate

    @property
    def n_q(self) -> int:
        """Streams after interleaving: twice the codec's codebooks."""
        return 2 * self.model.n_q

    @property
    def cardinality(self) -> int:
        return self.model.cardinality

    def encode(self, wav_BCW) -> jax.Array:
        """Stereo audio [B, 2, W] at `sample_rate` -> interleaved codes [B, 2K, ceil(W / hop)]."""
        wav_BCW = _check_wav(wav_BCW, self.channels)
        B = wav_BCW.shape[0]
        # [left rows; right rows] as one mono batch [2B, 1, W].
        wav_2B1W = wav_BCW.transpose(1, 0, 2).reshape(2 * B, 1, -1)
        codes_2BKT = self.model.encode(wav_2B1W)
        return interleave(codes_2BKT.reshape(2, B, *codes_2BKT.shape[1:]))

    def decode(self, codes_BKT) -> jax.Array:
        """Interleaved codes [B, 2K', T] (K' <= K codebooks per channel) -> wav [B, 2, T * hop]."""
        codes_BKT = _check_codes(codes_BKT, self.n_q, self.cardinality)
        B, K2, T = codes_BKT.shape
        if K2 % 2:
            raise ValueError(f"interleaved stereo codes need an even number of streams, got {K2}")
        codes_2BKT = deinterleave(codes_BKT).reshape(2 * B, K2 // 2, T)
        wav_2B1W = self.model.decode(codes_2BKT)
        return jnp.asarray(wav_2B1W).reshape(2, B, -1).transpose(1, 0, 2)
