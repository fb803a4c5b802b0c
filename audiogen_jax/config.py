"""Frozen configs for every component, with presets.

Each config holds only what the architecture uses, is read from the checkpoint's own config at
conversion time (by `encodec_params.py`, `t5_params.py`, `lm_params.py`), and is stored in the
converted directory's `config.json`. Nothing in the model code assumes AudioGen-medium's numbers:
those live in the presets below (`medium()` for AudioGen-medium, `musicgen()` / `base()` for the
MusicGen family), next to the `tiny()` presets the tests and the offline `tiny-random` model use.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

_PAD_MODES = ("constant", "reflect", "replicate", "circular")
# The reference's generation classes (audiocraft `models/audiogen.py`, `models/musicgen.py`), named
# by the `solver` key of a checkpoint's training config.
FAMILIES = ("audiogen", "musicgen")
# MusicGen's LM sizes (audiocraft `config/model/lm/model_scale/*.yaml`): (dim, heads, layers).
MUSICGEN_SCALES = {"small": (1024, 16, 24), "medium": (1536, 24, 48), "large": (2048, 32, 48)}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# The JSON value each annotation accepts (annotations are strings under `from __future__`), and its
# name in error messages. A config read from a file is checked against these before use, so a
# field of the wrong type is one clear error, not a TypeError deep in the model.
_JSON_KINDS = {
    "int": (_is_int, "an integer"),
    "float": (lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "tuple[int, ...]": (
        lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) for x in v),
        "a list of integers",
    ),
}


class _Dict:
    """to_dict / from_dict for JSON round trips (tuples come back as tuples)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """The config from its JSON form; raises ValueError naming any unknown key or a value of
        the wrong type."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(d).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown config keys {unknown}")
        for key, value in d.items():
            ok, kind = _JSON_KINDS.get(str(names[key].type), (lambda v: True, ""))
            if not ok(value):
                raise ValueError(f"{cls.__name__}.{key} must be {kind}, got {value!r}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncodecConfig(_Dict):
    """SEANet encoder/decoder + residual VQ (audiocraft `EncodecModel`, `SEANetEncoder/Decoder`,
    RVQ)."""

    sample_rate: int  # Hz
    channels: int = 1  # audio channels
    dimension: int  # latent width D of the codes' embeddings
    n_filters: int  # C of the first conv; doubles at each downsampling
    n_residual_layers: int = 1  # residual blocks per resolution
    ratios: tuple[int, ...]  # decoder-order up-sampling ratios; the encoder uses them reversed
    kernel_size: int = 7  # first conv
    last_kernel_size: int = 7  # last conv
    residual_kernel_size: int = 3
    dilation_base: int = 2  # residual block j uses dilation dilation_base**j
    causal: bool = False
    pad_mode: str = "constant"  # padding of the streamable convs
    true_skip: bool = True  # identity shortcut in residual blocks (else a 1x1 conv)
    compress: int = 2  # residual hidden width = channels // compress
    lstm: int = 2  # LSTM layers at the bottleneck (0 = none)
    elu_alpha: float = 1.0
    trim_right_ratio: float = 1.0  # causal transposed convs: share of the trim taken on the right
    final_activation: str | None = None  # decoder output activation (None or "Tanh")
    n_q: int  # codebooks K
    bins: int  # codebook size V

    def __post_init__(self):
        _check(self.sample_rate > 0, "sample_rate must be positive")
        _check(self.channels >= 1, "channels must be >= 1")
        _check(
            len(self.ratios) > 0 and all(r >= 1 for r in self.ratios), f"bad ratios {self.ratios}"
        )
        _check(
            self.pad_mode in _PAD_MODES,
            f"pad_mode must be one of {_PAD_MODES}, got {self.pad_mode!r}",
        )
        _check(self.n_q >= 1 and self.bins >= 2, "n_q >= 1 and bins >= 2 required")
        _check(
            self.final_activation in (None, "Tanh"),
            f"unsupported final_activation {self.final_activation!r}",
        )

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> int:
        # Codec frames per second, rounded down like the reference's builder
        # (`sample_rate // encoder.hop_length`); generation turns seconds into frames with it.
        return self.sample_rate // self.hop_length

    @classmethod
    def medium(cls) -> EncodecConfig:
        """The 16 kHz EnCodec of facebook/audiogen-medium (encodec_large_nq4_s320)."""
        return cls(
            sample_rate=16000, dimension=128, n_filters=64, ratios=(8, 5, 4, 2), n_q=4, bins=2048
        )

    @classmethod
    def musicgen(cls) -> EncodecConfig:
        """The 32 kHz EnCodec of the MusicGen family (encodec_large_nq4_s640: hop 640, 50 Hz)."""
        return cls(
            sample_rate=32000, dimension=128, n_filters=64, ratios=(8, 5, 4, 4), n_q=4, bins=2048
        )

    @classmethod
    def tiny(cls) -> EncodecConfig:
        return cls(
            sample_rate=8000, dimension=16, n_filters=4, ratios=(4, 2), lstm=1, n_q=4, bins=32
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class T5Config(_Dict):
    """The T5 encoder (transformers `T5Config` field names) and the conditioner's projection."""

    vocab_size: int
    d_model: int
    d_kv: int  # per-head width H
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # "relu" (T5 v1.0) or "gated-gelu" (v1.1)

    def __post_init__(self):
        _check(
            self.feed_forward_proj in ("relu", "gated-gelu"),
            f"unsupported feed_forward_proj {self.feed_forward_proj!r} "
            "(supported: 'relu', 'gated-gelu')",
        )
        _check(self.num_heads >= 1 and self.d_kv >= 1, "num_heads and d_kv must be >= 1")
        _check(
            min(self.vocab_size, self.d_model, self.d_ff, self.num_layers) >= 1,
            "vocab_size, d_model, d_ff and num_layers must be >= 1",
        )
        # Bidirectional buckets: half per direction, half of those exact, the rest log-spaced up to
        # max_distance.
        _check(
            self.relative_attention_num_buckets >= 4, "relative_attention_num_buckets must be >= 4"
        )
        _check(
            self.relative_attention_max_distance > self.relative_attention_num_buckets // 4,
            "relative_attention_max_distance must exceed relative_attention_num_buckets // 4",
        )

    @classmethod
    def base(cls) -> T5Config:
        """t5-base, MusicGen's text encoder."""
        return cls(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)

    @classmethod
    def large(cls) -> T5Config:
        return cls(vocab_size=32128, d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16)

    @classmethod
    def tiny(cls) -> T5Config:
        return cls(
            vocab_size=8100,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=20,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMConfig(_Dict):
    """The delay-pattern transformer LM (audiocraft `LMModel` + `StreamingTransformer`)."""

    dim: int  # D
    num_heads: int  # N; head width H = D // N
    num_layers: int
    hidden_scale: float = 4.0  # F = int(hidden_scale * D)
    n_q: int  # K
    card: int  # V; the special token id is `card`
    delays: tuple[int, ...]  # delay per codebook
    condition_dim: int  # width of the text encoder's output (before output_proj)
    max_period: float = 10000.0  # sinusoidal positions
    positional_scale: float = 1.0
    norm_eps: float = 1e-5
    bias_ff: bool = False
    bias_attn: bool = False
    bias_proj: bool = False
    cfg_coef: float = 3.0  # default guidance coefficient
    max_duration: float = 10.0  # seconds per generation window (training segment_duration)
    # The generation defaults the checkpoint was trained/evaluated with.
    use_sampling: bool = True
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0
    # The reference class that generates with this checkpoint (the training config's `solver`) and
    # that class's defaults, which the checkpoint does not store: AudioGen 5 s and a 2 s stride,
    # MusicGen 15 s and 18 s (`__init__` and `set_generation_params` of each class).
    family: str = "audiogen"
    duration: float = 5.0  # seconds generated when none is set
    extend_stride: float = 2.0  # seconds each window moves past max_duration
    # Stereo (MusicGen-stereo): the mono codec runs on each channel and the K streams interleave
    # them, stream 2k holding the left channel's codebook k and 2k + 1 the right's (audiocraft
    # `InterleaveStereoCompressionModel`, codebook interleaving).
    interleave_stereo: bool = False

    def __post_init__(self):
        _check(
            min(self.dim, self.num_heads, self.num_layers, self.n_q, self.card) >= 1,
            "dim, num_heads, num_layers, n_q and card must be >= 1",
        )
        _check(self.max_duration > 0, f"max_duration must be > 0 s, got {self.max_duration}")
        _check(
            self.dim % self.num_heads == 0,
            f"dim {self.dim} not divisible by num_heads {self.num_heads}",
        )
        _check(len(self.delays) == self.n_q, f"{len(self.delays)} delays for {self.n_q} codebooks")
        _check(all(d >= 0 for d in self.delays), "delays must be >= 0")
        _check(self.family in FAMILIES, f"family must be one of {FAMILIES}, got {self.family!r}")
        _check(self.duration > 0, f"duration must be > 0 seconds, got {self.duration}")
        # (Whether the stride fits the window is checked where both are used: GenerationSettings.)
        _check(
            self.extend_stride > 0, f"extend_stride must be > 0 seconds, got {self.extend_stride}"
        )
        _check(
            not self.interleave_stereo or self.n_q % 2 == 0,
            f"interleaved stereo needs an even number of streams, got n_q={self.n_q}",
        )

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def ffn_dim(self) -> int:
        return int(self.hidden_scale * self.dim)

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @classmethod
    def medium(cls, num_layers: int = 48) -> LMConfig:
        return cls(
            dim=1536,
            num_heads=24,
            num_layers=num_layers,
            n_q=4,
            card=2048,
            delays=(0, 1, 2, 3),
            condition_dim=1024,
        )

    @classmethod
    def musicgen(
        cls, scale: str = "small", stereo: bool = False, num_layers: int | None = None
    ) -> LMConfig:
        """A MusicGen LM (facebook/musicgen-{scale}, or -stereo-{scale}); `num_layers` overrides
        the depth (the tests keep the widths and run a few layers)."""
        _check(scale in MUSICGEN_SCALES, f"scale must be one of {sorted(MUSICGEN_SCALES)}")
        dim, heads, layers = MUSICGEN_SCALES[scale]
        # Stereo: two streams per codebook, each pair delayed alike (the stereo fine-tuning grid's
        # `codebooks_pattern.delay.delays`).
        delays = (0, 0, 1, 1, 2, 2, 3, 3) if stereo else (0, 1, 2, 3)
        return cls(
            dim=dim,
            num_heads=heads,
            num_layers=layers if num_layers is None else num_layers,
            n_q=len(delays),
            card=2048,
            delays=delays,
            condition_dim=768,
            max_duration=30.0,
            family="musicgen",
            duration=15.0,
            extend_stride=18.0,
            interleave_stereo=stereo,
        )

    @classmethod
    def tiny(cls) -> LMConfig:
        return cls(
            dim=32, num_heads=4, num_layers=2, n_q=4, card=32, delays=(0, 1, 2, 3), condition_dim=32
        )
