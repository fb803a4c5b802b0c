"""T5's weight map: Hugging Face T5 checkpoints onto `t5.T5EncoderModel`.

Reading this file beside `t5.py` is reading the port: the `T5Config` a Hugging Face `config.json`
describes, the `Rule` table from transformers' state-dict keys to our parameter paths (the same
names, kernels transposed from torch's [out, in] to flax's [in, out]), and the entry point that
writes DIR/t5.safetensors and DIR/tokenizer/. A checkpoint comes from a local directory or, by hub
id, from the Hugging Face hub (only the files needed: the config, the weights holding encoder keys,
the tokenizer).

References: transformers 5.24 `models/t5/configuration_t5.py` (`T5Config` defaults) and
`models/t5/modeling_t5.py` (the state-dict keys).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flax import nnx

from audiogen_jax import checkpoint, hub, t5
from audiogen_jax.config import T5Config
from audiogen_jax.io.errors import ConversionError
from audiogen_jax.io.rules import Rule, convert_state, plan_conversion
from audiogen_jax.io.safetensors import SafetensorsFile, write_file
from audiogen_jax.io.torch_pickle import load_torch_checkpoint

# Where a Hugging Face checkpoint keeps its weights, in the order they are looked for.
HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# transformers' `T5Config` defaults for the keys old config.json files (t5-large's) may omit.
_HF_DEFAULTS = {
    "vocab_size": 32128,
    "d_model": 512,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 6,
    "num_heads": 8,
}


# --------------------------------------------------------------------------------------------------
# Source config -> our config.


def t5_config_from_hf(hf: Mapping[str, Any]) -> T5Config:
    """A `T5Config` from a Hugging Face `config.json`; absent keys take transformers' defaults.

    Old configs (t5-large's) lack `feed_forward_proj` and `relative_attention_max_distance`, so they
    get transformers' defaults "relu" and 128, exactly as `T5EncoderModel.from_pretrained` would.
    """
    model_type = hf.get("model_type", "t5")
    if model_type not in ("t5", "mt5"):
        raise ConversionError(f"not a T5 config.json (model_type={model_type!r})")
    kwargs = {
        f.name: hf.get(f.name, _HF_DEFAULTS.get(f.name, f.default))
        for f in dataclasses.fields(T5Config)
    }
    try:
        return T5Config(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"unsupported T5 config.json: {e}") from e


# --------------------------------------------------------------------------------------------------
# The weight map.


def _transpose(srcs: dict[str, np.ndarray]) -> np.ndarray:
    return next(iter(srcs.values())).T  # torch Linear [out, in] -> nnx kernel [in, out]


def t5_rules(source_keys: Iterable[str]) -> tuple[list[Rule], list[str]]:
    """(rules, ignored patterns) mapping a transformers T5 state dict onto `T5EncoderModel`.

    The token embedding is tied: checkpoints store it as `shared.weight`,
    `encoder.embed_tokens.weight`, or both; `shared.weight` wins when both are there. The decoder
    and LM head of a full encoder-decoder checkpoint are ignored.
    """
    keys = set(source_keys)
    blk = r"encoder\.block\.(\d+)\.layer"
    ignore = [r"decoder\..*", r"lm_head\..*"]
    if "shared.weight" in keys:
        embed = Rule(r"shared\.weight", "shared.embedding")
        ignore.append(r"encoder\.embed_tokens\.weight")
    else:
        embed = Rule(r"encoder\.embed_tokens\.weight", "shared.embedding")
    rules = [
        embed,
        Rule(
            blk + r"\.0\.SelfAttention\.([qkvo])\.weight",
            r"encoder.block.\1.layer.0.SelfAttention.\2.kernel",
            _transpose,
        ),
        Rule(
            r"encoder\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.embedding",
        ),
        Rule(blk + r"\.([01])\.layer_norm\.weight", r"encoder.block.\1.layer.\2.layer_norm.weight"),
        Rule(
            blk + r"\.1\.DenseReluDense\.(wi|wi_0|wi_1|wo)\.weight",
            r"encoder.block.\1.layer.1.DenseReluDense.\2.kernel",
            _transpose,
        ),
        Rule(r"encoder\.final_layer_norm\.weight", "encoder.final_layer_norm.weight"),
    ]
    return rules, ignore


# --------------------------------------------------------------------------------------------------
# Finding the files: a local directory, or a hub id.


def _hf_file(src: str, name: str, local: bool, required: bool = True) -> str | None:
    """DIR/name for a local checkpoint; otherwise downloads that one file of hub repo `src`."""
    if local:
        path = os.path.join(src, name)
        return path if os.path.isfile(path) else None
    try:
        return hub.download(src, name)
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, HTTP errors: one clear message
        if not required:
            return None
        raise ConversionError(
            f"{src!r} is not a local directory, and downloading {name} from the Hugging Face hub "
            f"failed ({type(e).__name__}: {e}). Offline, convert from a directory holding "
            "config.json, model.safetensors (or pytorch_model.bin) and spiece.model."
        ) from e


def _hf_t5_state(src: str, local: bool) -> Mapping[str, Any]:
    """The encoder's tensors of a HF checkpoint: one file, or only the shards that hold encoder
    keys."""
    for name in HF_WEIGHTS:
        path = _hf_file(src, name, local)
        if path is None:
            continue
        if name.endswith(".index.json"):
            with open(path) as f:
                weight_map = json.load(f)["weight_map"]
            shards = sorted(
                {v for k, v in weight_map.items() if not k.startswith(("decoder.", "lm_head."))}
            )
            paths = [_hf_file(src, shard, local) for shard in shards]
            if None in paths:
                raise ConversionError(
                    f"{src}: shard {shards[paths.index(None)]} listed in {name} is missing"
                )
        else:
            paths = [path]
        maps = [
            SafetensorsFile(p) if p.endswith(".safetensors") else load_torch_checkpoint(p)
            for p in paths
        ]
        return collections.ChainMap(*maps)
    raise ConversionError(f"{src}: no T5 weights found (looked for {', '.join(HF_WEIGHTS)})")


# --------------------------------------------------------------------------------------------------
# Entry point.


def convert_t5(src: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """A Hugging Face T5 checkpoint (dir or hub id) -> DIR/t5.safetensors + DIR/tokenizer/ +
    config['t5'].

    `src` is a directory holding config.json, model.safetensors (or pytorch_model.bin, or their
    sharded index) and spiece.model; or a hub id such as "t5-large", from which only those files are
    downloaded. The decoder and LM head of a full encoder-decoder checkpoint are skipped; weights
    are stored as float32. Every key and shape problem is reported before anything is written.
    """
    src, out_dir = os.fspath(src), os.fspath(out_dir)
    local = os.path.isdir(src)
    if not local and os.path.exists(src):
        raise ConversionError(f"--t5 {src}: expected a directory (or a hub id), got a file")
    config_path = _hf_file(src, "config.json", local)
    if config_path is None:
        raise ConversionError(f"{src}: no config.json")
    with open(config_path) as f:
        cfg = t5_config_from_hf(json.load(f))
    spiece = _hf_file(src, t5.SPIECE, local)
    if spiece is None:
        raise ConversionError(
            f"{src}: no {t5.SPIECE} (the T5 tokenizer is needed next to the weights)"
        )
    state = _hf_t5_state(src, local)

    specs = checkpoint.param_specs(lambda: t5.T5EncoderModel(cfg, rngs=nnx.Rngs(0)))
    specs = {k: (shape, np.dtype("float32")) for k, (shape, _) in specs.items()}
    rules, ignore = t5_rules(state.keys())
    plan = plan_conversion(state, rules, {k: s for k, (s, _) in specs.items()}, ignore)
    os.makedirs(out_dir, exist_ok=True)
    write_file(
        os.path.join(out_dir, checkpoint.WEIGHT_FILES["t5"]),
        convert_state(state, plan, np.dtype("float32")),
        specs,
        metadata={"source": src},
    )

    tok_dir = os.path.join(out_dir, checkpoint.TOKENIZER_DIR)
    tmp = tok_dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in t5.TOKENIZER_FILES:
        path = spiece if name == t5.SPIECE else _hf_file(src, name, local, required=False)
        if path is not None:
            shutil.copyfile(path, os.path.join(tmp, name))
    n_ids = len(t5.load_tokenizer(tmp))
    if n_ids > cfg.vocab_size:
        shutil.rmtree(tmp)
        raise ConversionError(
            f"{src}: the tokenizer has {n_ids} ids but the model only {cfg.vocab_size}"
        )
    shutil.rmtree(tok_dir, ignore_errors=True)
    os.replace(tmp, tok_dir)
    checkpoint.update_config(out_dir, "t5", cfg.to_dict())
