"""The toy tokenizer: T5's id layout, deterministic training, every caption (held-out ones too)
tokenized without unknown pieces and decoded back; and the small T5 config runs."""

from __future__ import annotations

import hashlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from audiogen_jax import t5
from audiogen_jax.toy import text, world


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return text.train_tokenizer(tmp_path_factory.mktemp("toy_tok"))


def test_tokenizer_has_t5_layout_and_fits_the_t5_config(tokenizer_dir):
    tok = t5.load_tokenizer(tokenizer_dir)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert len(tok) == text.VOCAB_SIZE + 100 == text.TOY_T5.vocab_size
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1


def test_training_is_deterministic(tokenizer_dir, tmp_path):
    again = text.train_tokenizer(tmp_path / "again")
    digest = [
        hashlib.sha256(open(f"{d}/spiece.model", "rb").read()).hexdigest()
        for d in (tokenizer_dir, again)
    ]
    assert digest[0] == digest[1]


def test_every_caption_tokenizes_without_unknowns_and_decodes_back(tokenizer_dir):
    tok = t5.load_tokenizer(tokenizer_dir)
    captions = text.captions(7, 300) + text.captions(7, 50, "heldout")
    lengths = []
    for caption in captions:
        ids = tok(caption)["input_ids"]
        assert tok.unk_token_id not in ids and ids[-1] == tok.eos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == caption
        lengths.append(len(ids))
    # Whole words are pieces: a caption is a handful of tokens (measured: mean ~8, max 16).
    assert np.mean(lengths) < 10 and max(lengths) <= 20


def test_captions_match_the_world(tokenizer_dir):
    for caption in text.captions(3, 100, "heldout"):
        assert world.parse_caption(caption) in world.HELD_OUT


def test_toy_t5_encodes_captions(tokenizer_dir):
    tok = t5.load_tokenizer(tokenizer_dir)
    ids, mask = t5.tokenize(tok, ["a low beep then a rising chirp", "three clicks"])
    model = t5.T5EncoderModel(text.TOY_T5, rngs=nnx.Rngs(0))
    out = model(jnp.asarray(ids), jnp.asarray(mask))
    assert out.shape == (2, ids.shape[1], text.TOY_T5.d_model)
    assert np.isfinite(np.asarray(out)).all()
