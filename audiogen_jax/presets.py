"""`tiny-random`: a small random-weight AudioGen that runs the whole pipeline offline, in seconds.

It has the real model's structure at toy widths: a 16 kHz EnCodec with the medium model's ratios
(hop 320, so 50 frames per second, like AudioGen) but 4 filters and 32-entry codebooks, a 2-layer T5
with a sentencepiece tokenizer trained on the fly (`t5.train_tiny_tokenizer`, no download), and a
2-layer LM (`LMConfig.tiny()`). The weights are random: it makes noise. It exists so the CLI, the
notebooks and the tests can run end to end without the 3.9 GB checkpoint.

The model is written once as an ordinary converted directory (same files as `convert_weights.py`
produces) and reused from there.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
from flax import nnx

from audiogen_jax import checkpoint
from audiogen_jax.config import EncodecConfig, LMConfig, T5Config

TINY_RANDOM = "tiny-random"
NOISE_WARNING = (
    "warning: 'tiny-random' is a small model with RANDOM weights, for trying the pipeline offline: "
    "it makes noise, not sound. Use --model facebook/audiogen-medium (or a converted directory) "
    "for audio."
)


def tiny_random_configs() -> tuple[EncodecConfig, T5Config, LMConfig]:
    """(codec, text encoder, LM) configs of the tiny random model."""
    codec = dataclasses.replace(EncodecConfig.tiny(), sample_rate=16000, ratios=(8, 5, 4, 2))
    t5 = T5Config.tiny()
    # top_k scaled to the small codebook (AudioGen keeps 250 of 2048 codes).
    lm = dataclasses.replace(
        LMConfig.tiny(), card=codec.bins, n_q=codec.n_q, condition_dim=t5.d_model, top_k=8
    )
    return codec, t5, lm


def _random_weights(path: str, factory, rng: np.random.Generator) -> None:
    """Writes random weights with the shapes `factory`'s module would have, without building it.

    Kernels and tables ~ N(0, 1/fan_in) with fan_in the product of all but the last axis; 1-D norm
    scales are ones and biases zeros. (Filling the file from the shapes alone takes milliseconds;
    running each module's own initialisers eagerly takes far longer for the codec.)
    """
    from safetensors.numpy import save_file

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
    save_file(tensors, path)


def build_tiny_random(directory: str | os.PathLike, seed: int = 0) -> str:
    """Writes the tiny random model as a converted directory (atomically) and returns its path.

    Args:
      directory: where to write it; created (replaced if it exists but is incomplete).
      seed: the random init seed.
    """
    from audiogen_jax import t5 as t5lib
    from audiogen_jax.encodec import EncodecModel
    from audiogen_jax.lm import LMModel

    directory = os.fspath(directory)
    tmp = f"{directory}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        codec_cfg, t5_cfg, lm_cfg = tiny_random_configs()
        rng = np.random.default_rng(seed)
        weights = {
            checkpoint.WEIGHT_FILES["compression"]: lambda: EncodecModel(
                codec_cfg, rngs=nnx.Rngs(0)
            ),
            checkpoint.WEIGHT_FILES["lm"]: lambda: LMModel(lm_cfg, rngs=nnx.Rngs(0)),
            checkpoint.WEIGHT_FILES["t5"]: lambda: t5lib.T5EncoderModel(t5_cfg, rngs=nnx.Rngs(0)),
            t5lib.CONDITIONER_FILE: lambda: nnx.Linear(
                t5_cfg.d_model, lm_cfg.dim, rngs=nnx.Rngs(0)
            ),
        }
        for filename, factory in weights.items():
            _random_weights(os.path.join(tmp, filename), factory, rng)
        checkpoint.update_config(tmp, "compression", codec_cfg.to_dict())
        checkpoint.update_config(tmp, "lm", lm_cfg.to_dict())
        checkpoint.update_config(tmp, "t5", t5_cfg.to_dict())
        checkpoint.update_config(
            tmp,
            "conditioner",
            {"input_dim": t5_cfg.d_model, "output_dim": lm_cfg.dim, "name": TINY_RANDOM},
        )
        t5lib.train_tiny_tokenizer(os.path.join(tmp, checkpoint.TOKENIZER_DIR))
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
