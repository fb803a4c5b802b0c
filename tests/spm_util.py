"""A small T5-layout sentencepiece tokenizer for tests and scripts (no download).

A thin wrapper over `audiogen_jax.presets.train_tiny_tokenizer`, which the notebooks and the offline
tiny-random model use too: an 8000-piece unigram model trained on Python standard-library
docstrings, with T5's ids (pad 0, eos 1, unk 2, no bos);
`transformers.T5Tokenizer.from_pretrained(dir)` adds 100 `<extra_id_*>`.
"""

from __future__ import annotations

import os

from audiogen_jax.presets import train_tiny_tokenizer


def make_spiece_dir(directory: str | os.PathLike, vocab_size: int = 8000) -> str:
    """Trains DIR/spiece.model (about 1 s) and returns DIR."""
    return train_tiny_tokenizer(directory, vocab_size=vocab_size)
