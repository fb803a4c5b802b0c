"""Presets: the released checkpoints audiogen-jax runs, and `tiny-random` for offline use.

`CHECKPOINTS` lists the hub ids `AudioGen.from_pretrained` and the command line's `--model` accept
by name (any other audiocraft text-to-audio checkpoint converts too when its config is supported),
with the configs their conversion gives: AudioGen-medium (16 kHz codec, t5-large) and the MusicGen
family (32 kHz codec, t5-base; small, medium and large, mono and stereo). The configs are what the
converter reads from each release's own `xp.cfg` (`lm_params.py`, `encodec_params.py`,
`t5_params.py`); they are written out here for the documentation, the parameter counts and the
benchmarks, never used in place of a checkpoint's config. (`hub.UNSUPPORTED` names the released
checkpoints that need parts this package does not implement.)

`tiny-random` is a small random-weight AudioGen that runs the whole pipeline offline, quickly.
It has the real model's structure at toy widths: a 16 kHz EnCodec with the medium model's ratios
(hop 320, so 50 frames per second, like AudioGen) but 4 filters and 32-entry codebooks, a 2-layer
T5 with a sentencepiece tokenizer trained on the fly (`train_tiny_tokenizer`, no download; the tests
and the notebooks use it too), and a 2-layer LM (`LMConfig.tiny()`). The weights are random: it
makes noise. It exists so the CLI, the notebooks and the tests can run end to end without the
3.9 GB checkpoint. The model is written once as an ordinary converted directory (same files as
`convert_weights.py` produces) and reused from there.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sysconfig

import numpy as np
from flax import nnx

from audiogen_jax import checkpoint, t5
from audiogen_jax.config import MUSICGEN_SCALES, EncodecConfig, LMConfig, T5Config
from audiogen_jax.encodec import EncodecModel
from audiogen_jax.hub import TEXT_ENCODERS, TINY_RANDOM
from audiogen_jax.io import safetensors
from audiogen_jax.lm import DISK_LAYOUT, LAYOUT_KEY, LMModel


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A released checkpoint: its hub id, what it makes, and the configs its conversion gives."""

    name: str  # hub id
    summary: str  # one line for listings
    codec: EncodecConfig  # the mono codec (stereo checkpoints run it on each channel)
    t5: T5Config
    lm: LMConfig

    @property
    def t5_name(self) -> str:
        """The text encoder the LM's config names (downloaded from the hub too)."""
        return TEXT_ENCODERS[self.name]


def _musicgen(scale: str, stereo: bool) -> Checkpoint:
    kind = "stereo music" if stereo else "music"
    size = {"small": "300M", "medium": "1.5B", "large": "3.3B"}[scale]
    return Checkpoint(
        name=f"facebook/musicgen-{'stereo-' if stereo else ''}{scale}",
        summary=f"text to {kind}, 32 kHz (the release's {size} size)",
        codec=EncodecConfig.musicgen(),
        t5=T5Config.base(),
        lm=LMConfig.musicgen(scale, stereo=stereo),
    )


CHECKPOINTS = {
    c.name: c
    for c in (
        Checkpoint(
            name="facebook/audiogen-medium",
            summary="text to sound effects, 16 kHz (the release's 1.5B size)",
            codec=EncodecConfig.medium(),
            t5=T5Config.large(),
            lm=LMConfig.medium(),
        ),
        *(_musicgen(scale, stereo) for stereo in (False, True) for scale in MUSICGEN_SCALES),
    )
}

NOISE_WARNING = (
    "warning: 'tiny-random' is a small model with RANDOM weights, for trying the pipeline offline: "
    "it makes noise, not sound. Use --model facebook/audiogen-medium (or a converted directory) "
    "for audio."
)


def tiny_random_configs() -> tuple[EncodecConfig, T5Config, LMConfig]:
    """(codec, text encoder, LM) configs of the tiny random model."""
    codec = dataclasses.replace(EncodecConfig.tiny(), sample_rate=16000, ratios=(8, 5, 4, 2))
    text = T5Config.tiny()
    # top_k scaled to the small codebook (AudioGen keeps 250 of 2048 codes).
    lm = dataclasses.replace(
        LMConfig.tiny(), card=codec.bins, n_q=codec.n_q, condition_dim=text.d_model, top_k=8
    )
    return codec, text, lm


# --------------------------------------------------------------------------------------------------
# A tokenizer trained offline.


def _docstring_corpus() -> list[str]:
    """Paragraphs of the Python standard library's triple-quoted strings that read like prose."""
    root = sysconfig.get_paths()["stdlib"]
    skip = {"test", "tests", "site-packages", "dist-packages", "idlelib", "lib2to3", "__pycache__"}
    paragraphs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted(f for f in filenames if f.endswith(".py")):
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError):
                continue
            for block in re.findall(r'"""(.*?)"""', text, flags=re.S):
                for para in block.split("\n\n"):
                    para = " ".join(para.split())
                    if len(para) > 20 and sum(c.isalpha() for c in para) > 0.6 * len(para):
                        paragraphs.append(para)
    return paragraphs


def train_tiny_tokenizer(directory: str | os.PathLike, vocab_size: int = 8000) -> str:
    """Trains a small sentencepiece unigram model with T5's ids into DIR/spiece.model.

    pad 0, eos 1, unk 2, no bos, as T5's; `load_tokenizer(DIR)` adds T5's 100 `<extra_id_*>` tokens,
    so the default gives 8100 ids (`T5Config.tiny().vocab_size`). The corpus is the docstrings of
    the Python standard library, so it needs no download. Used by the tests, the notebooks and the
    offline tiny-random model.

    Returns:
      `directory`, as a string.
    """
    return t5.train_tokenizer(directory, _docstring_corpus(), vocab_size, "unigram", 2)


# --------------------------------------------------------------------------------------------------
# The tiny random model.


def _random_weights(path: str, factory, rng: np.random.Generator, metadata=None) -> None:
    """Writes random weights with the shapes `factory`'s module would have, without building it.

    Kernels and tables ~ N(0, 1/fan_in) with fan_in the product of all but the last axis; 1-D norm
    scales are ones and biases zeros. (Filling the file from the shapes alone skips running each
    module's own initialisers eagerly, which compiles a kernel per shape.)
    """
    tensors = {}
    for name, (shape, dtype) in checkpoint.param_specs(factory).items():
        leaf = name.rsplit(".", 1)[-1]
        if len(shape) <= 1 and "bias" in leaf:
            value = np.zeros(shape, np.float32)
        elif len(shape) <= 1:
            value = np.ones(shape, np.float32)
        else:
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)
        tensors[name] = value.astype(dtype)
    safetensors.save_file(path, tensors, metadata)


def build_tiny_random(directory: str | os.PathLike, seed: int = 0) -> str:
    """Writes the tiny random model as a converted directory (atomically) and returns its path.

    Args:
      directory: where to write it; created (replaced if it exists but is incomplete).
      seed: the random init seed.
    """
    directory = os.fspath(directory)
    # Built beside `directory` and swapped in whole, with its manifest; a second process building
    # the same directory waits for the first.
    with checkpoint.writing(directory, wait=True) as tmp:
        codec_cfg, t5_cfg, lm_cfg = tiny_random_configs()
        rng = np.random.default_rng(seed)
        weights = {
            checkpoint.WEIGHT_FILES["compression"]: lambda: EncodecModel(
                codec_cfg, rngs=nnx.Rngs(0)
            ),
            checkpoint.WEIGHT_FILES["lm"]: lambda: LMModel(
                lm_cfg, rngs=nnx.Rngs(0), layout=DISK_LAYOUT
            ),
            checkpoint.WEIGHT_FILES["t5"]: lambda: t5.T5EncoderModel(t5_cfg, rngs=nnx.Rngs(0)),
            t5.CONDITIONER_FILE: lambda: nnx.Linear(t5_cfg.d_model, lm_cfg.dim, rngs=nnx.Rngs(0)),
        }
        for filename, factory in weights.items():
            lm = filename == checkpoint.WEIGHT_FILES["lm"]
            metadata = {LAYOUT_KEY: DISK_LAYOUT} if lm else None
            _random_weights(os.path.join(tmp, filename), factory, rng, metadata)
        checkpoint.update_config(tmp, "compression", codec_cfg.to_dict())
        checkpoint.update_config(tmp, "lm", lm_cfg.to_dict())
        checkpoint.update_config(tmp, "t5", t5_cfg.to_dict())
        checkpoint.update_config(
            tmp,
            "conditioner",
            {"input_dim": t5_cfg.d_model, "output_dim": lm_cfg.dim, "name": TINY_RANDOM},
        )
        train_tiny_tokenizer(os.path.join(tmp, checkpoint.TOKENIZER_DIR))
    return directory
