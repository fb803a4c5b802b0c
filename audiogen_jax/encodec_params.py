"""EnCodec's weight maps: audiocraft compression checkpoints onto `encodec.EncodecModel`.

Reading this file beside `encodec.py` is reading the port: the config the checkpoint's `xp.cfg`
describes, the `Rule` table from its state-dict keys to our parameter paths, and the entry point
that writes DIR/compression.safetensors. Torch keys -> our parameter paths (X = encoder or decoder;
biases keep their names):

    X.model.i[.block.j|.shortcut].conv.conv.weight_{g,v} -> X.model.i[...].conv.kernel [k, Ci, Co]
    decoder.model.i.convtr.convtr.weight_{g,v}      -> decoder.model.i.convtr.kernel [k, Ci, Co]
    X.model.i.lstm.weight_ih_l{n} / weight_hh_l{n}  -> X.model.i.layers.n.kernel_ih / weight_hh
    X.model.i.lstm.bias_{ih,hh}_l{n}                -> X.model.i.layers.n.bias (the two summed)
    quantizer.vq.layers.q._codebook.embed           -> quantizer.layers.q.embed

A compression export may instead point to a pretrained codec by name (`{'pretrained':
'facebook/encodec_32khz'}`, audiocraft's `export_pretrained_compression_model`): a transformers
`EncodecModel` on the hub, the same SEANet under other names (`X.layers.i...` for `X.model.i...`,
`quantizer.layers.q.codebook.embed`, weight norm as `weight_g/v` or
`parametrizations.weight.original0/1`), which audiocraft runs through `HFEncodecCompressionModel`.
`convert_hf_encodec` maps it onto the same `EncodecModel`.

References: audiocraft 1.3.0 `models/builders.py` (`get_compression_model`), `modules/seanet.py`
and `modules/conv.py` (the weight-norm parametrisation folded here), `models/encodec.py`
(`CompressionModel.get_pretrained`, `HFEncodecCompressionModel`); transformers 5.24
`models/encodec/configuration_encodec.py` and `modeling_encodec.py`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flax import nnx

from audiogen_jax import checkpoint, hub
from audiogen_jax.config import EncodecConfig
from audiogen_jax.encodec import EncodecModel
from audiogen_jax.io.audiocraft import YamlConfig, load_audiocraft_package, pretrained_pointer
from audiogen_jax.io.errors import ConversionError, DownloadError, short_list
from audiogen_jax.io.rules import Rule, as_numpy, convert_state, plan_conversion
from audiogen_jax.io.safetensors import SafetensorsFile, write_file
from audiogen_jax.io.torch_pickle import load_torch_checkpoint

# SEANet constructor defaults (audiocraft `SEANetEncoder.__init__`), used where xp.cfg omits a key.
_SEANET_DEFAULTS = {
    "n_residual_layers": 3,
    "ratios": [8, 5, 4, 2],
    "activation": "ELU",
    "activation_params": {"alpha": 1.0},
    "norm": "none",
    "kernel_size": 7,
    "last_kernel_size": 7,
    "residual_kernel_size": 3,
    "dilation_base": 2,
    "causal": False,
    "pad_mode": "reflect",
    "true_skip": True,
    "compress": 2,
    "lstm": 0,
}


# --------------------------------------------------------------------------------------------------
# Source config -> our config.


def encodec_config_from_xp(cfg: YamlConfig, src: str = "checkpoint") -> EncodecConfig:
    """Reads an `EncodecConfig` from a compression xp.cfg (`encodec.*`, `seanet.*`, `rvq.*`).

    Raises ConversionError for anything the JAX codec does not implement (renormalize, other
    autoencoders/quantizers/activations/norms, encoder and decoder overrides that change the shared
    architecture), listing every problem at once.
    """
    if cfg.get("compression_model", "encodec") != "encodec":
        raise ConversionError(
            f"{src}: compression_model is {cfg.get('compression_model')!r}, not 'encodec'"
        )
    for section in ("encodec", "seanet", "rvq"):
        if not cfg.has(section):
            raise ConversionError(
                f"{src}: xp.cfg has no '{section}' section; not an EnCodec checkpoint"
            )
    enc = cfg.get("encodec")
    seanet = {**_SEANET_DEFAULTS, **cfg.get("seanet")}
    overrides = {
        "encoder": seanet.pop("encoder", None) or {},
        "decoder": seanet.pop("decoder", None) or {},
    }
    rvq = cfg.get("rvq")
    problems = []
    if enc.get("autoencoder", "seanet") != "seanet":
        problems.append(f"encodec.autoencoder={enc.get('autoencoder')!r} (only 'seanet')")
    if enc.get("quantizer", "rvq") != "rvq":
        problems.append(f"encodec.quantizer={enc.get('quantizer')!r} (only 'rvq')")
    if enc.get("renormalize", False) or enc.get("renorm", False):
        problems.append(
            "encodec.renormalize=true (per-item volume renormalisation not implemented)"
        )
    for name, values in overrides.items():
        allowed = (
            {"trim_right_ratio", "final_activation", "final_activation_params"}
            if name == "decoder"
            else set()
        )
        changed = sorted(k for k, v in values.items() if k not in allowed and seanet.get(k) != v)
        if changed:
            problems.append(
                f"seanet.{name} overrides {changed} (encoder and decoder must share them)"
            )
    if seanet["activation"] != "ELU":
        problems.append(f"seanet.activation={seanet['activation']!r} (only 'ELU')")
    if seanet["norm"] not in ("weight_norm", "none"):
        problems.append(f"seanet.norm={seanet['norm']!r} (only 'weight_norm' or 'none')")
    final = overrides["decoder"].get("final_activation")
    if final not in (None, "Tanh"):
        problems.append(f"seanet.decoder.final_activation={final!r} (only null or 'Tanh')")
    channels = enc.get("channels", seanet.get("channels", 1))
    if seanet.get("channels", channels) != channels:
        problems.append(f"seanet.channels={seanet.get('channels')} but encodec.channels={channels}")
    if "dimension" in rvq and rvq["dimension"] != seanet.get("dimension"):
        problems.append(
            f"rvq.dimension={rvq['dimension']} but seanet.dimension={seanet.get('dimension')}"
        )
    for key, where in (
        ("sample_rate", enc),
        ("dimension", seanet),
        ("n_filters", seanet),
        ("n_q", rvq),
        ("bins", rvq),
    ):
        if key not in where:
            problems.append(f"missing key {key!r}")
    if problems:
        raise ConversionError(f"{src}: unsupported EnCodec config:\n  " + "\n  ".join(problems))
    try:
        return EncodecConfig(
            sample_rate=int(enc["sample_rate"]),
            channels=int(channels),
            dimension=int(seanet["dimension"]),
            n_filters=int(seanet["n_filters"]),
            n_residual_layers=int(seanet["n_residual_layers"]),
            ratios=tuple(int(r) for r in seanet["ratios"]),
            kernel_size=int(seanet["kernel_size"]),
            last_kernel_size=int(seanet["last_kernel_size"]),
            residual_kernel_size=int(seanet["residual_kernel_size"]),
            dilation_base=int(seanet["dilation_base"]),
            causal=bool(seanet["causal"]),
            pad_mode=str(seanet["pad_mode"]),
            true_skip=bool(seanet["true_skip"]),
            compress=int(seanet["compress"]),
            lstm=int(seanet["lstm"]),
            elu_alpha=float((seanet["activation_params"] or {}).get("alpha", 1.0)),
            trim_right_ratio=float(overrides["decoder"].get("trim_right_ratio", 1.0)),
            final_activation=final,
            n_q=int(rvq["n_q"]),
            bins=int(rvq["bins"]),
        )
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{src}: bad EnCodec config: {e}") from e


# --------------------------------------------------------------------------------------------------
# The weight map.

# RVQ training buffers (k-means init flag, EMA statistics): not needed for inference.
ENCODEC_IGNORE = [r"quantizer\.vq\.layers\.\d+\._codebook\.(?:inited|cluster_size|embed_avg)"]


def _fold_weight_norm(srcs: dict[str, np.ndarray]) -> np.ndarray:
    """torch weight (plain, or weight-norm g and v) -> the effective weight w = g * v / |v|.

    The norm runs over every axis but 0 (torch `weight_norm(dim=0)`); for a ConvTranspose1d, whose
    weight is [C_in, C_out, k], g is therefore per *input* channel.
    """
    by_suffix = {k.rsplit(".", 1)[1]: v for k, v in srcs.items()}
    if set(by_suffix) == {"weight"}:
        return by_suffix["weight"]
    if set(by_suffix) != {"weight_g", "weight_v"}:
        raise ConversionError(f"expected weight_g and weight_v (or weight), got {sorted(srcs)}")
    g = by_suffix["weight_g"].astype(np.float64)
    v = by_suffix["weight_v"].astype(np.float64)
    norm = np.sqrt(np.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
    return (v * (g / norm)).astype(np.float32)


def _conv_kernel(srcs):  # Conv1d [C_out, C_in, k] -> [k, C_in, C_out]
    return _fold_weight_norm(srcs).transpose(2, 1, 0)


def _convtr_kernel(srcs):  # ConvTranspose1d [C_in, C_out, k] -> [k, C_in, C_out]
    return _fold_weight_norm(srcs).transpose(2, 0, 1)


def _transpose(srcs):  # LSTM input weights [4H, C] -> kernel [C, 4H]
    return next(iter(srcs.values())).T


def _sum_sources(srcs):  # the LSTM's two biases act only as their sum
    return sum(v.astype(np.float32) for v in srcs.values())


_SEANET = r"(?P<m>(?:encoder|decoder)\.model\.\d+(?:\.block\.\d+|\.shortcut)?)"
_LSTM = r"(?P<m>(?:encoder|decoder)\.model\.\d+)\.lstm"
ENCODEC_RULES = [
    Rule(_SEANET + r"\.conv\.conv\.weight(?:_g|_v)?", r"\g<m>.conv.kernel", _conv_kernel),
    Rule(_SEANET + r"\.conv\.conv\.bias", r"\g<m>.conv.bias"),
    Rule(
        r"(?P<m>decoder\.model\.\d+)\.convtr\.convtr\.weight(?:_g|_v)?",
        r"\g<m>.convtr.kernel",
        _convtr_kernel,
    ),
    Rule(r"(?P<m>decoder\.model\.\d+)\.convtr\.convtr\.bias", r"\g<m>.convtr.bias"),
    Rule(_LSTM + r"\.weight_ih_l(?P<n>\d+)", r"\g<m>.layers.\g<n>.kernel_ih", _transpose),
    # The recurrent matrix keeps torch's [4H, H]: the per-step product reads it fastest that way.
    Rule(_LSTM + r"\.weight_hh_l(?P<n>\d+)", r"\g<m>.layers.\g<n>.weight_hh"),
    Rule(_LSTM + r"\.bias_(?:ih|hh)_l(?P<n>\d+)", r"\g<m>.layers.\g<n>.bias", _sum_sources),
    Rule(r"quantizer\.vq\.layers\.(?P<q>\d+)\._codebook\.embed", r"quantizer.layers.\g<q>.embed"),
]


# --------------------------------------------------------------------------------------------------
# transformers' EnCodec: what a `{'pretrained': name}` codec export points to.

# transformers `EncodecConfig` defaults, for the keys a config.json omits.
_HF_DEFAULTS = {
    "target_bandwidths": [1.5, 3.0, 6.0, 12.0, 24.0],
    "sampling_rate": 24000,
    "audio_channels": 1,
    "normalize": False,
    "chunk_length_s": None,
    "hidden_size": 128,
    "num_filters": 32,
    "num_residual_layers": 1,
    "upsampling_ratios": [8, 5, 4, 2],
    "norm_type": "weight_norm",
    "kernel_size": 7,
    "last_kernel_size": 7,
    "residual_kernel_size": 3,
    "dilation_growth_rate": 2,
    "use_causal_conv": True,
    "pad_mode": "reflect",
    "compress": 2,
    "num_lstm_layers": 2,
    "trim_right_ratio": 1.0,
    "codebook_size": 1024,
    "codebook_dim": None,
    "use_conv_shortcut": True,
}
HF_CODEC_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def encodec_config_from_hf(hf: Mapping[str, Any], src: str = "config.json") -> EncodecConfig:
    """An `EncodecConfig` from a transformers EnCodec `config.json` (absent keys: its defaults).

    The codebooks are those of the highest target bandwidth, which audiocraft's
    `HFEncodecCompressionModel` selects: `bandwidth * 1000 / (frame_rate * log2(codebook_size))`.
    Refuses, listing every problem, what the JAX codec does not implement: per-item volume
    normalisation, chunked encoding, group norm, codebooks narrower than the latents.
    """
    if hf.get("model_type", "encodec") != "encodec":
        raise ConversionError(f"{src}: not an EnCodec config (model_type={hf.get('model_type')!r})")
    c = {**_HF_DEFAULTS, **hf}
    problems = []
    if c["normalize"]:
        problems.append("normalize=true (per-item volume renormalisation not implemented)")
    if c["chunk_length_s"] is not None:
        problems.append(f"chunk_length_s={c['chunk_length_s']} (chunked encoding not implemented)")
    if c["norm_type"] != "weight_norm":
        problems.append(f"norm_type={c['norm_type']!r} (only 'weight_norm')")
    if c["codebook_dim"] not in (None, c["hidden_size"]):
        problems.append(f"codebook_dim={c['codebook_dim']} differs from hidden_size")
    hop = math.prod(c["upsampling_ratios"])
    if c["sampling_rate"] % hop:
        problems.append(f"sampling_rate {c['sampling_rate']} is not a multiple of the hop {hop}")
    bits = math.log2(c["codebook_size"])
    n_q = max(bw * 1000 / (c["sampling_rate"] / hop * bits) for bw in c["target_bandwidths"])
    if abs(n_q - round(n_q)) > 1e-3:
        problems.append(f"target_bandwidths {c['target_bandwidths']} give {n_q:g} codebooks")
    if problems:
        raise ConversionError(f"{src}: unsupported EnCodec config:\n  " + "\n  ".join(problems))
    try:
        return EncodecConfig(
            sample_rate=int(c["sampling_rate"]),
            channels=int(c["audio_channels"]),
            dimension=int(c["hidden_size"]),
            n_filters=int(c["num_filters"]),
            n_residual_layers=int(c["num_residual_layers"]),
            ratios=tuple(int(r) for r in c["upsampling_ratios"]),
            kernel_size=int(c["kernel_size"]),
            last_kernel_size=int(c["last_kernel_size"]),
            residual_kernel_size=int(c["residual_kernel_size"]),
            dilation_base=int(c["dilation_growth_rate"]),
            causal=bool(c["use_causal_conv"]),
            pad_mode=str(c["pad_mode"]),
            true_skip=not c["use_conv_shortcut"],
            compress=int(c["compress"]),
            lstm=int(c["num_lstm_layers"]),
            trim_right_ratio=float(c["trim_right_ratio"]),
            n_q=round(n_q),
            bins=int(c["codebook_size"]),
        )
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{src}: bad EnCodec config: {e}") from e


def _hf_weight_norm(srcs):
    """transformers' weight-norm names (old `weight_g/v`, or the parametrisation's `original0/1`)
    as the fold above reads them."""
    names = {"original0": "weight_g", "original1": "weight_v"}
    leaves = (k.rsplit(".", 1)[1] for k in srcs)
    return {f"w.{names.get(leaf, leaf)}": v for leaf, v in zip(leaves, srcs.values(), strict=True)}


def _hf_conv_kernel(srcs):
    return _conv_kernel(_hf_weight_norm(srcs))


def _hf_convtr_kernel(srcs):
    return _convtr_kernel(_hf_weight_norm(srcs))


_HF_WN = r"\.conv\.(?:weight_[gv]|parametrizations\.weight\.original[01]|weight)"


def hf_encodec_rules(expected: Iterable[str], n_q: int) -> tuple[list[Rule], list[str]]:
    """(rules, ignored patterns) mapping a transformers EnCodec state dict onto `EncodecModel`.

    transformers names every convolution `conv`, transposed ones included; which decoder layers are
    transposed is read from the parameters the config implies (`expected`). Codebooks past the
    `n_q` the bandwidth uses, and the k-means training buffers, are ignored.
    """
    convtr = re.compile(r"decoder\.model\.(\d+)\.convtr\.kernel")
    tr = sorted({m.group(1) for k in expected if (m := convtr.fullmatch(k))})
    used = "|".join(str(q) for q in range(n_q))
    rules = []
    # Plain convolutions (layers, residual blocks, shortcuts): every encoder layer, and the decoder
    # layers that are not transposed.
    not_tr = rf"(?!(?:{'|'.join(tr)})\.)\d+" if tr else r"\d+"
    for x, index in (("encoder", r"\d+"), ("decoder", not_tr)):
        block = rf"{x}\.layers\.(?P<i>{index}(?:\.block\.\d+|\.shortcut)?)"
        rules += [
            Rule(block + _HF_WN, rf"{x}.model.\g<i>.conv.kernel", _hf_conv_kernel),
            Rule(block + r"\.conv\.bias", rf"{x}.model.\g<i>.conv.bias"),
        ]
    rules += [
        Rule(
            r"(?P<x>encoder|decoder)\.layers\.(?P<i>\d+)\.lstm\.weight_ih_l(?P<n>\d+)",
            r"\g<x>.model.\g<i>.layers.\g<n>.kernel_ih",
            _transpose,
        ),
        Rule(
            r"(?P<x>encoder|decoder)\.layers\.(?P<i>\d+)\.lstm\.weight_hh_l(?P<n>\d+)",
            r"\g<x>.model.\g<i>.layers.\g<n>.weight_hh",
        ),
        Rule(
            r"(?P<x>encoder|decoder)\.layers\.(?P<i>\d+)\.lstm\.bias_(?:ih|hh)_l(?P<n>\d+)",
            r"\g<x>.model.\g<i>.layers.\g<n>.bias",
            _sum_sources,
        ),
        Rule(
            rf"quantizer\.layers\.(?P<q>{used})\.codebook\.embed",
            r"quantizer.layers.\g<q>.embed",
        ),
    ]
    if tr:
        index = "|".join(tr)
        rules += [
            Rule(
                rf"decoder\.layers\.(?P<i>{index}){_HF_WN}",
                r"decoder.model.\g<i>.convtr.kernel",
                _hf_convtr_kernel,
            ),
            Rule(
                rf"decoder\.layers\.(?P<i>{index})\.conv\.bias", r"decoder.model.\g<i>.convtr.bias"
            ),
        ]
    ignore = [
        r"quantizer\.layers\.\d+\.codebook\.(?:inited|cluster_size|embed_avg)",
        rf"quantizer\.layers\.(?!(?:{used})\.)\d+\.codebook\.embed",
    ]
    return rules, ignore


def _hf_codec_files(src: str, via: str | None) -> tuple[str, str]:
    """(config.json, weights) of a transformers EnCodec: in directory `src` (when not `via` a
    pointer), or downloaded from hub repo `src` (only those two files)."""
    if via is None and os.path.isdir(src):
        config = os.path.join(src, "config.json")
        weights = [p for n in HF_CODEC_WEIGHTS if os.path.isfile(p := os.path.join(src, n))]
        if not os.path.isfile(config) or not weights:
            raise ConversionError(
                f"{src}: a transformers EnCodec directory needs config.json and one of "
                f"{', '.join(HF_CODEC_WEIGHTS)}"
            )
        return config, weights[0]
    # A name read from a downloaded file is only ever a hub id, never a local path.
    if not hub.looks_like_hub_id(src) or len(src) > 96:
        raise ConversionError(f"{via or src}: {src[:100]!r} is not a hub id (owner/name)")

    def fetch(name: str) -> str | None:
        try:
            return hub.download(src, name)
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, HTTP errors: one message
            raise DownloadError(
                f"could not download {src!r} ({name}) from the Hugging Face hub"
                + (f", the codec {via} names" if via else "")
                + f" ({type(e).__name__}: {e}). Offline, download "
                f"config.json and {HF_CODEC_WEIGHTS[0]} from https://huggingface.co/{src} into a "
                "directory DIR and convert with `audiogen-jax convert --compression DIR ...`."
            ) from e

    config = fetch("config.json")
    if config is None:
        raise ConversionError(f"{src} on the hub has no config.json: not a transformers EnCodec")
    for name in HF_CODEC_WEIGHTS:
        if (weights := fetch(name)) is not None:
            return config, weights
    raise ConversionError(f"{src}: no EnCodec weights ({', '.join(HF_CODEC_WEIGHTS)}) on the hub")


def convert_hf_encodec(
    src: str | os.PathLike, out_dir: str | os.PathLike, via: str | None = None
) -> None:
    """A transformers EnCodec (a directory, or a hub id such as facebook/encodec_32khz) ->
    DIR/compression.safetensors + config['compression'], as `convert_compression` writes them.

    Args:
      src: the directory (config.json + model.safetensors or pytorch_model.bin) or hub id.
      out_dir: the converted directory to create or update.
      via: the export that pointed here, for messages.
    """
    src = os.fspath(src)
    config_path, weights_path = _hf_codec_files(src, via)
    with open(config_path, encoding="utf-8") as f:
        cfg = encodec_config_from_hf(json.load(f), f"{src} (config.json)")
    if weights_path.endswith(".safetensors"):
        state = SafetensorsFile(weights_path)
    else:
        state = load_torch_checkpoint(weights_path)
    specs = checkpoint.param_specs(lambda: EncodecModel(cfg, rngs=nnx.Rngs(0)))
    expected = {k: shape for k, (shape, _) in specs.items()}
    rules, ignore = hf_encodec_rules(expected, cfg.n_q)
    try:
        plan = plan_conversion(state, rules, expected, ignore)
    except ConversionError as e:
        raise ConversionError(f"{src}: {e}") from e
    os.makedirs(out_dir, exist_ok=True)
    write_file(
        os.path.join(out_dir, checkpoint.WEIGHT_FILES["compression"]),
        convert_state(state, plan, dtype=np.dtype("float32")),
        specs,
        metadata={"source": src},
    )
    checkpoint.update_config(out_dir, "compression", cfg.to_dict())


# --------------------------------------------------------------------------------------------------
# Entry point.


def convert_compression(src: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """audiocraft `compression_state_dict.bin` -> DIR/compression.safetensors + its config section.

    Folds weight norm into plain kernels, transposes to channels-last layouts, sums the LSTM biases
    and drops the RVQ training buffers. Refuses a codebook that was never initialised (`inited` 0:
    with k-means init its codewords are all zeros, so every frame would get code 0). Every key and
    shape problem is reported before anything is written.

    `src` may also be an export that points to a pretrained codec (`{'pretrained': name}`), which
    is then converted from the hub (or from directory `name`) by `convert_hf_encodec`; or such a
    directory itself.
    """
    if os.path.isdir(src):
        return convert_hf_encodec(src, out_dir)
    obj = load_torch_checkpoint(src)
    pointer = pretrained_pointer(obj)
    if pointer is not None:
        if pointer.startswith("dac_"):  # audiocraft's other named codecs
            raise ConversionError(f"{src} points to the DAC codec {pointer!r}: not implemented")
        return convert_hf_encodec(pointer, out_dir, via=os.fspath(src))
    pkg = load_audiocraft_package(src, "compression (EnCodec)", obj)
    keys = list(pkg.state.keys())
    if not any(k.startswith("encoder.model.") for k in keys) or not any(
        k.startswith("quantizer.") for k in keys
    ):
        raise ConversionError(
            f"{src} is not an EnCodec compression checkpoint: its weights have no encoder.model.* "
            f"/ quantizer.* keys (first keys: {short_list(keys, 3)}); an LM state_dict.bin goes "
            "to --lm"
        )
    cfg = encodec_config_from_xp(pkg.cfg, os.fspath(src))
    uninit = sorted(
        k for k in keys if k.endswith("._codebook.inited") and not np.all(as_numpy(pkg.state[k]))
    )
    if uninit:
        raise ConversionError(
            f"{src}: codebooks never initialised (inited == 0, all-zero k-means codewords): "
            f"{short_list(uninit)}"
        )
    specs = checkpoint.param_specs(lambda: EncodecModel(cfg, rngs=nnx.Rngs(0)))
    expected = {k: shape for k, (shape, _) in specs.items()}
    try:
        plan = plan_conversion(pkg.state, ENCODEC_RULES, expected, ENCODEC_IGNORE)
    except ConversionError as e:
        raise ConversionError(f"{src}: {e}") from e
    os.makedirs(out_dir, exist_ok=True)
    write_file(
        os.path.join(out_dir, checkpoint.WEIGHT_FILES["compression"]),
        convert_state(pkg.state, plan, dtype=np.dtype("float32")),
        specs,
        metadata={"source": os.path.basename(os.fspath(src))},
    )
    checkpoint.update_config(out_dir, "compression", cfg.to_dict())
