"""Parameters, bytes and cache sizes of a model, computed from its configs (nothing is allocated).

    python scripts/model_sizes.py             # AudioGen-medium (the configs' medium presets)
    python scripts/model_sizes.py facebook/musicgen-small   # a released checkpoint's configs
    python scripts/model_sizes.py DIR         # a converted directory's own configs
    python scripts/model_sizes.py --family    # every released checkpoint side by side (Markdown)

Every module is built with `nnx.eval_shape`, so its parameters are shapes and dtypes only; the
counts and byte sizes below are sums over those. This is what docs/hardware.md's computed rows come
from. Download sizes assume the release's formats: the LM and its `output_proj` in fp16
(`state_dict.bin`), EnCodec in fp32 (`compression_state_dict.bin`) and the whole T5 checkpoint,
encoder and decoder, in fp32 (`model.safetensors`; the decoder is counted from the config with
T5's layer formula, since this project has no T5 decoder).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from audiogen_jax import presets
from audiogen_jax.config import EncodecConfig, LMConfig, T5Config
from audiogen_jax.encodec import EncodecModel
from audiogen_jax.lm import LMModel
from audiogen_jax.t5 import T5EncoderModel

GB = 1e9
GiB = 2**30


def _arrays(factory) -> list[jax.ShapeDtypeStruct]:
    return jax.tree.leaves(nnx.state(nnx.eval_shape(factory), nnx.Param))


def count(factory) -> int:
    """Parameters of the module `factory` builds."""
    return sum(int(np.prod(a.shape)) for a in _arrays(factory))


def nbytes(factory) -> int:
    """Bytes of its parameters, each in its own dtype (int8 kernels carry float32 scales)."""
    return sum(int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize for a in _arrays(factory))


def lm_total(measure, cfg: LMConfig, dtype) -> int:
    """`measure` (count or nbytes) of the LM, from abstract models of 1 and 2 layers.

    Every layer has the same shapes, so this is exact, and it spares tracing all 48 of them.
    """

    def at(n):
        return measure(
            lambda: LMModel(
                dataclasses.replace(cfg, num_layers=n), param_dtype=dtype, rngs=nnx.Rngs(0)
            )
        )

    one, two = at(1), at(2)
    return one + (cfg.num_layers - 1) * (two - one)


def size(b: float) -> str:
    return f"{b / GB:6.2f} GB ({b / GiB:5.2f} GiB)" if b >= 1e8 else f"{b / 1e6:6.2f} MB"


def t5_decoder_params(cfg: T5Config) -> int:
    """A T5 decoder with the encoder's widths: self- and cross-attention, FF, 3 norms per layer.

    The embedding is shared with the encoder (t5-large ties it to the output head too).
    """
    inner = cfg.num_heads * cfg.d_kv
    ff = (3 if cfg.feed_forward_proj == "gated-gelu" else 2) * cfg.d_model * cfg.d_ff
    per_layer = 2 * 4 * cfg.d_model * inner + ff + 3 * cfg.d_model
    bias = cfg.relative_attention_num_buckets * cfg.num_heads
    return cfg.num_layers * per_layer + bias + cfg.d_model


def configs(directory: str | None) -> tuple[EncodecConfig, T5Config, LMConfig]:
    if directory is None:
        return EncodecConfig.medium(), T5Config.large(), LMConfig.medium()
    if directory in presets.CHECKPOINTS:
        c = presets.CHECKPOINTS[directory]
        return c.codec, c.t5, c.lm
    from audiogen_jax import checkpoint

    return (
        EncodecConfig.from_dict(checkpoint.read_config(directory, "compression")),
        T5Config.from_dict(checkpoint.read_config(directory, "t5")),
        LMConfig.from_dict(checkpoint.read_config(directory, "lm")),
    )


def family_table() -> str:
    """The released checkpoints side by side, as a Markdown table."""
    rows = []
    for c in presets.CHECKPOINTS.values():
        lm, codec = c.lm, c.codec
        n_lm = lm_total(count, lm, jnp.float32)
        n_t5 = count(lambda c=c: T5EncoderModel(c.t5, rngs=nnx.Rngs(0)))
        n_codec = count(lambda c=c: EncodecModel(c.codec, rngs=nnx.Rngs(0)))
        n_proj = c.t5.d_model * lm.dim + lm.dim
        channels = "2 (interleaved)" if lm.interleave_stereo else "1"
        rows.append(
            [
                f"`{c.name}`",
                f"{codec.sample_rate // 1000} kHz, hop {codec.hop_length}, {codec.frame_rate} Hz",
                channels,
                f"{lm.n_q} x {lm.card}",
                str(list(lm.delays)).replace(" ", ""),
                f"{lm.dim} / {lm.num_heads} / {lm.num_layers}",
                f"{c.t5_name} ({c.t5.d_model} x {c.t5.num_layers})",
                f"{lm.max_duration:g} s",
                f"{lm.duration:g} s / {lm.extend_stride:g} s",
                f"{n_lm + n_proj:,}",
                f"{n_t5:,}",
                f"{n_codec:,}",
                f"{n_lm + n_proj + n_t5 + n_codec:,}",
            ]
        )
    head = [
        "checkpoint",
        "codec",
        "channels",
        "streams K x V",
        "delays",
        "LM D / heads / layers",
        "text encoder",
        "window",
        "default duration / stride",
        "LM params (+ output_proj)",
        "T5 encoder params",
        "EnCodec params",
        "total",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "directory", nargs="?", help="a converted directory or a hub id (default: medium)"
    )
    parser.add_argument(
        "--family", action="store_true", help="every released checkpoint side by side"
    )
    args = parser.parse_args(argv)
    if args.family:
        print(family_table())
        return 0
    codec_cfg, t5_cfg, lm_cfg = configs(args.directory)

    def t5():
        return T5EncoderModel(t5_cfg, rngs=nnx.Rngs(0))

    def codec():
        return EncodecModel(codec_cfg, rngs=nnx.Rngs(0))

    n_lm, n_t5, n_codec = lm_total(count, lm_cfg, jnp.float32), count(t5), count(codec)
    n_proj = t5_cfg.d_model * lm_cfg.dim + lm_cfg.dim
    print("parameters")
    for name, n in [
        ("LM", n_lm),
        ("output_proj", n_proj),
        ("T5 encoder", n_t5),
        ("EnCodec", n_codec),
        ("total", n_lm + n_proj + n_t5 + n_codec),
    ]:
        print(f"  {name:12} {n:>15,}")

    others = 4 * (n_proj + n_t5 + n_codec)  # always float32
    print("weights held in memory (LM in the given dtype; T5, output_proj, EnCodec float32)")
    for name, dtype in [("float32", jnp.float32), ("bfloat16", jnp.bfloat16), ("int8", jnp.int8)]:
        b = lm_total(nbytes, lm_cfg, dtype)
        print(f"  {name:9} LM {size(b)}   all {size(b + others)}")

    n_dec = t5_decoder_params(t5_cfg)
    download = {
        "state_dict.bin (fp16)": 2 * (n_lm + n_proj),
        "compression_state_dict.bin (fp32)": 4 * n_codec,
        f"T5 model.safetensors (fp32, {n_t5 + n_dec:,} params)": 4 * (n_t5 + n_dec),
    }
    print("download (release formats)")
    for name, b in download.items():
        print(f"  {name:48} {size(b)}")
    print(f"  {'total':48} {size(sum(download.values()))}")
    print("converted directory on disk")
    for name, lm_bytes in [("float32", 4 * n_lm), ("bfloat16", 2 * n_lm)]:
        print(f"  --dtype {name:9} {size(lm_bytes + others)}")

    frames = int(lm_cfg.max_duration * codec_cfg.frame_rate)
    steps = frames + lm_cfg.max_delay + 1
    row = 2 * lm_cfg.num_layers * steps * lm_cfg.dim * 4  # keys and values, float32
    print(
        f"self-attention cache, float32, one {lm_cfg.max_duration:g} s window ({steps} slots): "
        f"{row / 2**20:.1f} MiB per LM row, {2 * row / 2**20:.1f} MiB per description with "
        "guidance (2 rows)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
