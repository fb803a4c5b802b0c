"""audiogen-jax: a readable JAX/Flax (NNX) reimplementation of Meta's AudioGen (text-to-audio).

    from audiogen_jax import AudioGen
    model = AudioGen.from_pretrained("facebook/audiogen-medium")  # or a converted dir, tiny-random
    model.set_generation_params(duration=5.0)
    wav = model.generate(["dog barking"], seed=0)  # [B, 1, W] float32 at model.sample_rate

The MusicGen checkpoints load the same way (`facebook/musicgen-small`, ..., `-stereo-*`: [B, 2, W]);
`MusicGen` is `AudioGen` with MusicGen's default model.

Dimension key, used in names and docstrings across the package:
  B batch (classifier-free guidance doubles it: 2B), K codebooks, T codec frames, S LM steps in the
  delayed layout, L text tokens, D model width, F feed-forward width, N heads, H head width, V
  codebook size, C conv channels, W waveform samples.

The names below are imported lazily, so `import audiogen_jax` stays cheap (no JAX compilation, no
torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AudioGen": "audiogen_jax.audiogen",
    "MusicGen": "audiogen_jax.audiogen",
    "EncodecModel": "audiogen_jax.encodec",
    "LMModel": "audiogen_jax.lm",
    "KVCache": "audiogen_jax.lm",
    "T5Conditioner": "audiogen_jax.t5",
    "T5EncoderModel": "audiogen_jax.t5",
    "SamplingParams": "audiogen_jax.sampling",
    "generate_codes": "audiogen_jax.generate",
    "GenerationSettings": "audiogen_jax.generate",
    "audio_write": "audiogen_jax.audio",
    "EncodecConfig": "audiogen_jax.config",
    "LMConfig": "audiogen_jax.config",
    "T5Config": "audiogen_jax.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'audiogen_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
