"""The LM's weight map: audiocraft `state_dict.bin` exports onto `lm.LMModel`.

Reading this file beside `lm.py` is reading the port: the `LMConfig` the checkpoint's `xp.cfg`
describes (refusing every setting the port does not implement), the `Rule` table from its
state-dict keys to our parameter paths, and the entry point that writes DIR/lm.safetensors. The
module names mirror the checkpoint, so the table is renames, the packed q/k/v split in three, and
every kernel transposed from torch's [out, in] to the [in, out] stored on disk (`lm.DISK_LAYOUT`;
the runtime layout is chosen when loading).

References: audiocraft 1.3.0 `models/builders.py` (`get_lm_model`), `models/loaders.py`
(`load_lm_model`), `modules/transformer.py` (`StreamingMultiheadAttention`'s packed `in_proj`).
"""

from __future__ import annotations

import os
import re

import numpy as np
from flax import nnx

from audiogen_jax import checkpoint
from audiogen_jax.config import LMConfig
from audiogen_jax.io.audiocraft import YamlConfig, load_audiocraft_package
from audiogen_jax.io.errors import ConversionError
from audiogen_jax.io.rules import Rule, as_numpy, convert_state, plan_conversion
from audiogen_jax.io.safetensors import DTYPES, write_file
from audiogen_jax.lm import DISK_LAYOUT, LAYOUT_KEY, LMModel
from audiogen_jax.t5 import CONDITIONER_FILE

# audiocraft `T5Conditioner.MODELS_DIMS`: the text encoder's width, by name.
LM_T5_DIMS = {
    "t5-small": 512,
    "t5-base": 768,
    "t5-large": 1024,
    "t5-3b": 1024,
    "t5-11b": 1024,
    "google/flan-t5-small": 512,
    "google/flan-t5-base": 768,
    "google/flan-t5-large": 1024,
    "google/flan-t5-3b": 1024,
    "google/flan-t5-11b": 1024,
}
LM_OUTPUT_PROJ = "condition_provider.conditioners.description.output_proj"
# The reference classes' own defaults, which no checkpoint stores: the duration their `__init__`
# sets and the stride of `set_generation_params` (audiocraft `models/audiogen.py`,
# `models/musicgen.py`), by the training config's `solver`.
FAMILY_DEFAULTS = {
    "audiogen": {"duration": 5.0, "extend_stride": 2.0},
    "musicgen": {"duration": 15.0, "extend_stride": 18.0},
}
# Keys audiocraft's `load_lm_model` deletes from old configs before building the model.
_LM_OBSOLETE_KEYS = (
    "conditioners.self_wav.chroma_stem.cache_path",
    "conditioners.args.merge_text_conditions_p",
    "conditioners.args.drop_desc_p",
)


def lm_config_from_audiocraft(
    xp: YamlConfig, output_proj_shape: tuple[int, ...] | None
) -> tuple[LMConfig, dict]:
    """Reads an audiocraft `xp.cfg` into an `LMConfig` and the conditioner section of config.json.

    Raises one ValueError listing every setting this port does not implement.

    Args:
      xp: the checkpoint's training config.
      output_proj_shape: shape of the T5 output projection weight [D, C] in the checkpoint, if
        present.

    Returns:
      (LMConfig, {"input_dim": C, "output_dim": D, "name": t5 name}).
    """
    for dotted in _LM_OBSOLETE_KEYS:
        *parents, leaf = dotted.split(".")
        node = xp.tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)

    def tl(key, default=None):
        return xp.get(f"transformer_lm.{key}", default)

    conditioners = {k: v for k, v in (xp.get("conditioners", {}) or {}).items() if k != "args"}
    melody = sorted(k for k, v in conditioners.items() if (v or {}).get("model") == "chroma_stem")
    if melody:
        raise ValueError(
            f"this is a MusicGen-melody checkpoint: its conditioner {melody[0]!r} (model "
            "chroma_stem: a chromagram of a melody waveform, prepended to the LM input) is not "
            "implemented in audiogen-jax. Supported: text-only AudioGen and MusicGen checkpoints "
            "(facebook/audiogen-medium, facebook/musicgen-{small,medium,large}, "
            "facebook/musicgen-stereo-{small,medium,large})."
        )

    problems = []

    def want(what, value, ok):
        if not ok:
            problems.append(f"{what} = {value!r}")

    lm_model = xp.get("lm_model", "transformer_lm")
    want("lm_model (only 'transformer_lm')", lm_model, lm_model == "transformer_lm")
    want(
        "transformer_lm.norm (only 'layer_norm')",
        tl("norm", "layer_norm"),
        tl("norm", "layer_norm") == "layer_norm",
    )
    want(
        "transformer_lm.norm_first (only true: pre-norm)",
        tl("norm_first", False),
        tl("norm_first", False) is True,
    )
    pos = tl("positional_embedding", "sin")
    want("transformer_lm.positional_embedding (only 'sin')", pos, pos == "sin")
    act = tl("activation", "gelu")
    want("transformer_lm.activation (only 'gelu')", act, act == "gelu")
    for key in ("qk_layer_norm", "qk_layer_norm_cross"):
        want(f"transformer_lm.{key} (only false)", tl(key, False), not tl(key, False))
    want("transformer_lm.layer_scale (only null)", tl("layer_scale"), tl("layer_scale") is None)
    want("transformer_lm.kv_repeat (only 1)", tl("kv_repeat", 1), tl("kv_repeat", 1) == 1)
    want("transformer_lm.past_context (only null)", tl("past_context"), tl("past_context") is None)
    want("transformer_lm.causal (only true)", tl("causal", False), tl("causal", False) is True)
    # The builder forces cross-attention on when the fuser routes a condition to it.
    fuser = {
        m: list(xp.get(f"fuser.{m}", []) or [])
        for m in ("sum", "prepend", "cross", "input_interpolate")
    }
    want(
        "fuser (only cross: [description])",
        fuser,
        fuser["cross"] == ["description"]
        and not (fuser["sum"] or fuser["prepend"] or fuser["input_interpolate"]),
    )
    want(
        "fuser.cross_attention_pos_emb (only false)",
        xp.get("fuser.cross_attention_pos_emb", False),
        not xp.get("fuser.cross_attention_pos_emb", False),
    )
    # The builder falls back to transformer_lm.q_modeling when no pattern is configured.
    modeling = xp.get("codebooks_pattern.modeling", None) or tl("q_modeling")
    want("codebooks_pattern.modeling (only 'delay')", modeling, modeling == "delay")
    for key in ("flatten_first", "empty_initial"):
        v = xp.get(f"codebooks_pattern.delay.{key}", 0)
        want(f"codebooks_pattern.delay.{key} (only 0)", v, v == 0)
    want(
        "conditioners (only a t5 'description')",
        sorted(conditioners),
        list(conditioners) == ["description"] and conditioners["description"].get("model") == "t5",
    )
    solver = xp.get("solver", None)
    want(
        f"solver (the reference class: one of {sorted(FAMILY_DEFAULTS)})",
        solver,
        solver in FAMILY_DEFAULTS,
    )
    # Stereo: the generation model wraps the mono codec (audiocraft
    # `builders.get_wrapped_compression_model`, from these keys of the LM's config).
    stereo = bool(xp.get("interleave_stereo_codebooks.use", False))
    per_timestep = xp.get("interleave_stereo_codebooks.per_timestep", False)
    want(
        "interleave_stereo_codebooks.per_timestep (only false: codebook interleaving)",
        per_timestep,
        not per_timestep,
    )
    channels = xp.get("channels", 1)
    want(
        f"channels (interleave_stereo_codebooks.use={str(stereo).lower()} needs "
        f"{2 if stereo else 1})",
        channels,
        channels == (2 if stereo else 1),
    )
    n_active = xp.get("compression_model_n_q", None)
    want("compression_model_n_q (only null: every codebook)", n_active, n_active is None)
    if problems:
        raise ValueError("unsupported LM checkpoint settings:\n  " + "\n  ".join(problems))

    n_q = int(tl("n_q"))
    dim = int(tl("dim"))
    t5_name = xp.get("conditioners.description.t5.name")
    condition_dim = LM_T5_DIMS.get(t5_name)
    if output_proj_shape is not None:
        if tuple(output_proj_shape)[:1] != (dim,) or len(output_proj_shape) != 2:
            raise ValueError(
                f"{LM_OUTPUT_PROJ}.weight has shape {tuple(output_proj_shape)}, expected [{dim}, C]"
            )
        if condition_dim is not None and output_proj_shape[1] != condition_dim:
            raise ValueError(
                f"{LM_OUTPUT_PROJ}.weight has input width {output_proj_shape[1]}, but {t5_name} "
                f"has width {condition_dim}"
            )
        condition_dim = int(output_proj_shape[1])
    if condition_dim is None:
        raise ValueError(
            f"unknown T5 model {t5_name!r} and no {LM_OUTPUT_PROJ}.weight to read its width from"
        )
    delays = xp.get("codebooks_pattern.delay.delays", None)
    delays = tuple(range(n_q)) if delays is None else tuple(int(d) for d in delays)

    def gen(key, default):
        return xp.get(f"generate.lm.{key}", default)

    cfg = LMConfig(
        dim=dim,
        num_heads=int(tl("num_heads")),
        num_layers=int(tl("num_layers")),
        hidden_scale=float(tl("hidden_scale", 4)),
        n_q=n_q,
        card=int(tl("card")),
        delays=delays,
        condition_dim=condition_dim,
        max_period=float(tl("max_period", 10000.0)),
        positional_scale=float(tl("positional_scale", 1.0)),
        bias_ff=bool(tl("bias_ff", True)),
        bias_attn=bool(tl("bias_attn", True)),
        bias_proj=bool(tl("bias_proj", True)),
        cfg_coef=float(xp.get("classifier_free_guidance.inference_coef", 3.0)),
        max_duration=float(xp.get("dataset.segment_duration", 10.0)),
        use_sampling=bool(gen("use_sampling", True)),
        top_k=int(gen("top_k", 250)),
        top_p=float(gen("top_p", 0.0)),
        temperature=float(gen("temp", 1.0)),
        family=solver,
        interleave_stereo=stereo,
        **FAMILY_DEFAULTS[solver],
    )
    conditioner = {"input_dim": condition_dim, "output_dim": dim, "name": t5_name}
    return cfg, conditioner


# --------------------------------------------------------------------------------------------------
# The weight map.


def _kernel(srcs):  # torch nn.Linear weight [out, in] -> kernel [in, out]
    (w,) = srcs.values()
    return w.T


def _split_qkv(srcs):  # packed in_proj rows [q; k; v] -> three kernels [in, out] (or biases)
    (w,) = srcs.values()
    return tuple(p.T for p in np.split(w, 3, axis=0))


_LAYER = r"transformer\.layers\.(\d+)"
_ATTN = _LAYER + r"\.(self_attn|cross_attention)\.(?:mha\.)?"


def _qkv(leaf: str) -> tuple[str, str, str]:
    return tuple(rf"transformer.layers.\1.\2.{p}_proj.{leaf}" for p in "qkv")


LM_RULES = [
    Rule(r"emb\.(\d+)\.weight", r"emb.\1.embedding"),
    Rule(_ATTN + r"in_proj_weight", _qkv("kernel"), _split_qkv),
    Rule(_ATTN + r"in_proj_bias", _qkv("bias"), _split_qkv),
    Rule(_ATTN + r"out_proj\.weight", r"transformer.layers.\1.\2.out_proj.kernel", _kernel),
    Rule(_ATTN + r"out_proj\.bias", r"transformer.layers.\1.\2.out_proj.bias"),
    Rule(_LAYER + r"\.(linear1|linear2)\.weight", r"transformer.layers.\1.\2.kernel", _kernel),
    Rule(_LAYER + r"\.(linear1|linear2)\.bias", r"transformer.layers.\1.\2.bias"),
    Rule(_LAYER + r"\.(norm1|norm2|norm_cross)\.weight", r"transformer.layers.\1.\2.scale"),
    Rule(_LAYER + r"\.(norm1|norm2|norm_cross)\.bias", r"transformer.layers.\1.\2.bias"),
    Rule(r"out_norm\.weight", "out_norm.scale"),
    Rule(r"out_norm\.bias", "out_norm.bias"),
    Rule(r"linears\.(\d+)\.weight", r"linears.\1.kernel", _kernel),
    Rule(r"linears\.(\d+)\.bias", r"linears.\1.bias"),
]


# --------------------------------------------------------------------------------------------------
# Entry point.


def convert_lm(src: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "float32") -> None:
    """audiocraft `state_dict.bin` -> DIR/lm.safetensors + config['lm'] (streams; needs no torch).

    Also writes the text conditioner's projection (`LM_OUTPUT_PROJ`) to DIR/conditioner.safetensors
    (`kernel` [C, D] = weight.T, `bias` [D], float32) + config['conditioner']. Every key and shape
    problem is reported before anything is written; then tensors are read, converted and written
    one group at a time, so peak memory stays near one layer's worth.

    Args:
      src: the audiocraft export.
      out_dir: the converted directory to create or update.
      dtype: "float32" or "bfloat16", the dtype of the stored weights (kernels are [in, out] in
        both).
    """
    if dtype not in ("float32", "bfloat16"):
        raise ConversionError(f"LM dtype must be float32 or bfloat16, got {dtype!r}")
    np_dtype = DTYPES["F32" if dtype == "float32" else "BF16"]
    pkg = load_audiocraft_package(src, "LM")
    proj_w, proj_b = LM_OUTPUT_PROJ + ".weight", LM_OUTPUT_PROJ + ".bias"
    if proj_w not in pkg.state or proj_b not in pkg.state:
        raise ConversionError(
            f"{src}: no text-conditioner projection ({proj_w} / {proj_b}) in best_state"
        )
    try:
        cfg, conditioner = lm_config_from_audiocraft(pkg.cfg, tuple(pkg.state[proj_w].shape))
    except ValueError as e:
        raise ConversionError(f"{src}: {e}") from e
    D, C = cfg.dim, cfg.condition_dim
    if tuple(pkg.state[proj_b].shape) != (D,):
        raise ConversionError(
            f"{src}: {proj_b} has shape {tuple(pkg.state[proj_b].shape)}, config wants ({D},)"
        )
    specs = checkpoint.param_specs(
        lambda: LMModel(cfg, rngs=nnx.Rngs(0), param_dtype=np_dtype, layout=DISK_LAYOUT)
    )
    expected = {k: shape for k, (shape, _) in specs.items()}
    ignore = [re.escape(proj_w), re.escape(proj_b)]
    try:
        plan = plan_conversion(pkg.state, LM_RULES, expected, ignore)
    except ConversionError as e:
        raise ConversionError(f"{src}: {e}") from e
    os.makedirs(out_dir, exist_ok=True)
    write_file(
        os.path.join(out_dir, checkpoint.WEIGHT_FILES["lm"]),
        convert_state(pkg.state, plan, dtype=np_dtype),
        specs,
        metadata={
            "source": os.path.basename(os.fspath(src)),
            "dtype": dtype,
            LAYOUT_KEY: DISK_LAYOUT,
        },
    )
    weight = as_numpy(pkg.state[proj_w]).astype(np.float32)
    bias = as_numpy(pkg.state[proj_b]).astype(np.float32)
    write_file(
        os.path.join(out_dir, CONDITIONER_FILE),
        iter([("kernel", weight.T), ("bias", bias)]),
        {"kernel": ((C, D), np.dtype("float32")), "bias": ((D,), np.dtype("float32"))},
    )
    checkpoint.update_config(out_dir, "lm", cfg.to_dict())
    checkpoint.update_config(out_dir, "conditioner", conditioner)
