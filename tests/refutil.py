"""Helpers that build checkpoints in audiocraft's real export format from reference models."""

from __future__ import annotations

import os


def save_audiocraft_package(
    path: str | os.PathLike, state_dict, cfg_yaml: str, half: bool = False
) -> None:
    """Writes a checkpoint package with torch.save, as audiocraft's export does.

    The package is the dict {'best_state', 'xp.cfg', 'version', 'exported'}.

    Args:
      state_dict: the reference model's state dict (tensors).
      cfg_yaml: the training config as a YAML string (interpolations may stay unresolved, as in
        the release).
      half: store floating tensors as float16 (the released LM `state_dict.bin` is fp16).
    """
    import torch

    best = {}
    for k, v in state_dict.items():
        v = v.detach().cpu().clone()
        if half and v.is_floating_point():
            v = v.half()
        best[k] = v
    torch.save({"best_state": best, "xp.cfg": cfg_yaml, "version": "1.3.0", "exported": True}, path)


def reference_lm(cfg, condition_provider=None, **extra):
    """audiocraft's `LMModel` for an `LMConfig`: AudioGen's architecture with the config's numbers.

    Pre-norm LayerNorm, sinusoidal positions, GELU, causal custom attention (memory-efficient
    path), cross-attention fed by the `description` condition. Build it under
    `torch.device("meta")` to skip the random init when every weight comes from a checkpoint.

    Args:
      cfg: the `LMConfig` (widths, depth, card, delays, biases, positions).
      condition_provider: the reference's `ConditioningProvider`; default an empty one
        (conditions are then passed to `forward` as `condition_tensors`).
      **extra: further `LMModel` arguments (init scheme, `cfg_coef`, `two_step_cfg`, ...).
    """
    from audiocraft.models.lm import LMModel
    from audiocraft.modules.codebooks_patterns import DelayedPatternProvider
    from audiocraft.modules.conditioners import ConditionFuser, ConditioningProvider

    if condition_provider is None:
        condition_provider = ConditioningProvider({})
    return LMModel(
        pattern_provider=DelayedPatternProvider(cfg.n_q, delays=list(cfg.delays)),
        condition_provider=condition_provider,
        fuser=ConditionFuser(
            {"cross": ["description"], "prepend": [], "sum": [], "input_interpolate": []}
        ),
        n_q=cfg.n_q,
        card=cfg.card,
        dim=cfg.dim,
        num_heads=cfg.num_heads,
        num_layers=cfg.num_layers,
        hidden_scale=cfg.hidden_scale,
        norm="layer_norm",
        norm_first=True,
        bias_ff=cfg.bias_ff,
        bias_attn=cfg.bias_attn,
        bias_proj=cfg.bias_proj,
        causal=True,
        cross_attention=True,
        memory_efficient=True,
        positional_embedding="sin",
        max_period=cfg.max_period,
        positional_scale=cfg.positional_scale,
        activation="gelu",
        dropout=0.0,
        **extra,
    )
