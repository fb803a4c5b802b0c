"""The toy model's text side: a sentencepiece tokenizer trained on the world's captions, in T5's
layout, and the small T5 encoder's config.

The tokenizer is an ordinary `spiece.model` with T5's ids (pad 0, eos 1, unk 2, no bos), so
`t5.load_tokenizer` reads it and adds T5's 100 `<extra_id_*>` tokens as for t5-large. Its corpus
is captions drawn from the training split. It is BPE rather than T5's unigram: the world has about
50 words, and unigram training on so few keeps at most 67 pieces, most of them single letters;
128 BPE pieces hold every word whole (a caption is about 8 tokens) and still spell out any word
letter by letter.

The small T5 is trained, not frozen. AudioGen freezes a T5 that learned language on C4; there is
no such model offline, and a frozen random T5 passes the LM little more than which tokens occur:
cross-attention has no positions on its keys, so "a click then a hiss" and "a hiss then a click"
reach the LM as nearly the same set of vectors (measured in docs/toy.md). Training T5 (2 layers,
width 64, ~90k parameters) with the LM lets its relative-position attention write the order into
the vectors, for little compute: captions are about 10 tokens.
"""

from __future__ import annotations

import os

import numpy as np

from audiogen_jax import t5
from audiogen_jax.config import T5Config
from audiogen_jax.toy import world

VOCAB_SIZE = 128  # sentencepiece pieces; the tokenizer has VOCAB_SIZE + 100 ids with extra ids
CORPUS_CAPTIONS = 20_000

TOY_T5 = T5Config(
    vocab_size=VOCAB_SIZE + 100,
    d_model=64,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=16,
    relative_attention_max_distance=32,
)


def captions(seed: int, count: int, split: str = "train") -> list[str]:
    """`count` captions of `split` scenes, drawn without rendering audio."""
    rng = np.random.default_rng((seed, world.SPLITS.index(split)))
    return [world.caption(world.sample_scene(rng, split), rng) for _ in range(count)]


def train_tokenizer(directory: str | os.PathLike, seed: int = 0) -> str:
    """Trains DIR/spiece.model on the world's training captions (about a second); returns DIR.
    One thread: the piece table does not depend on thread timing."""
    return t5.train_tokenizer(directory, captions(seed, CORPUS_CAPTIONS), VOCAB_SIZE, "bpe", 1)
