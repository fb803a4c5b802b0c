"""Helpers that build checkpoints in audiocraft's real export format from reference models."""

from __future__ import annotations

import os


def save_audiocraft_package(path: str | os.PathLike, state_dict, cfg_yaml: str, half: bool = False) -> None:
    """Writes {'best_state', 'xp.cfg', 'version', 'exported'} with torch.save, as audiocraft's export does.

    Args:
      state_dict: the reference model's state dict (tensors).
      cfg_yaml: the training config as a YAML string (interpolations may stay unresolved, as in the release).
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
