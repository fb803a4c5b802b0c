"""EnCodec's weight map: audiocraft compression checkpoints onto `encodec.EncodecModel`.

Reading this file beside `encodec.py` is reading the port: the config the checkpoint's `xp.cfg`
describes, the `Rule` table from its state-dict keys to our parameter paths, and the entry point
that writes DIR/compression.safetensors. Torch keys -> our parameter paths (X = encoder or decoder;
biases keep their names):

    X.model.i[.block.j|.shortcut].conv.conv.weight_{g,v} -> X.model.i[...].conv.kernel [k, Ci, Co]
    decoder.model.i.convtr.convtr.weight_{g,v}      -> decoder.model.i.convtr.kernel [k, Ci, Co]
    X.model.i.lstm.weight_ih_l{n} / weight_hh_l{n}  -> X.model.i.layers.n.kernel_ih / weight_hh
    X.model.i.lstm.bias_{ih,hh}_l{n}                -> X.model.i.layers.n.bias (the two summed)
    quantizer.vq.layers.q._codebook.embed           -> quantizer.layers.q.embed

References: audiocraft 1.3.0 `models/builders.py` (`get_compression_model`), `modules/seanet.py`
and `modules/conv.py` (the weight-norm parametrisation folded here).
"""

from __future__ import annotations

import os

import numpy as np
from flax import nnx

from audiogen_jax import checkpoint
from audiogen_jax.config import EncodecConfig
from audiogen_jax.encodec import EncodecModel
from audiogen_jax.io.audiocraft import YamlConfig, load_audiocraft_package
from audiogen_jax.io.errors import ConversionError, short_list
from audiogen_jax.io.rules import Rule, as_numpy, convert_state, plan_conversion
from audiogen_jax.io.safetensors import write_file

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
# Entry point.


def convert_compression(src: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """audiocraft `compression_state_dict.bin` -> DIR/compression.safetensors + its config section.

    Folds weight norm into plain kernels, transposes to channels-last layouts, sums the LSTM biases
    and drops the RVQ training buffers. Refuses a codebook that was never initialised (`inited` 0:
    with k-means init its codewords are all zeros, so every frame would get code 0). Every key and
    shape problem is reported before anything is written.
    """
    pkg = load_audiocraft_package(src, "compression (EnCodec)")
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
