"""LoRA: low-rank adapters on the LM's attention and feed-forward projections (Hu et al. 2021).

Each projection y = x W of the transformer layers (self- and cross-attention q/k/v/out, `linear1`,
`linear2`) becomes y = x W + x A B with A [in, r] random and B [r, out] zero, so the adapted model
starts equal to the base model. Only A and B train (`nnx.LoRAParam`, selected by
`train.split_model(..., lora=True)`); W stays frozen and may stay in bfloat16. After training,
`merge_lora` folds x A B into W and removes the adapters, so the exported model is an ordinary
`LMModel` that `from_pretrained` loads with no trace of LoRA.

The adapter is flax's `nnx.LoRA` with our `Linear` as its `base_module`. The embeddings, norms
and output heads get no adapters. Beyond the reference: audiocraft has no LoRA.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from audiogen_jax import lm as lm_lib


def _child(obj: Any, key: Any) -> Any:
    return obj[key] if isinstance(key, int) else getattr(obj, key)


def _set_child(obj: Any, key: Any, value: Any) -> None:
    if isinstance(key, int):
        obj[key] = value
    else:
        setattr(obj, key, value)


def _parent(root: nnx.Module, path: tuple) -> Any:
    obj = root
    for key in path[:-1]:
        obj = _child(obj, key)
    return obj


def _features(linear: lm_lib.Linear) -> tuple[int, int]:
    """(in, out) of a Linear, whichever layout its kernel is stored in."""
    a, b = linear.kernel.shape
    return (a, b) if linear.layout == "in_out" else (b, a)


def _projections(lm: lm_lib.LMModel) -> list[tuple[tuple, lm_lib.Linear]]:
    """Every Linear inside the transformer layers (attention and feed-forward), by path."""
    return [
        (path, module)
        for path, module in nnx.iter_modules(lm)
        if isinstance(module, lm_lib.Linear) and path and path[0] == "transformer"
    ]


def add_lora(lm: lm_lib.LMModel, rank: int, *, rngs: nnx.Rngs) -> list[str]:
    """Wraps every attention and feed-forward projection of `lm` in an `nnx.LoRA` (in place).

    Args:
      lm: the model (its weights become the frozen base).
      rank: r, the adapters' inner width (>= 1).
      rngs: draws the A matrices (B starts at zero).

    Returns:
      The dotted paths of the adapted projections.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive int, got {rank!r}")
    if any(isinstance(m, nnx.LoRA) for _, m in nnx.iter_modules(lm)):
        raise ValueError("this model already has LoRA adapters")
    if lm.dtype == jnp.int8:
        raise ValueError("LoRA needs float base weights, not an int8 model")
    done = []
    for path, linear in _projections(lm):
        d_in, d_out = _features(linear)
        adapter = nnx.LoRA(d_in, rank, d_out, base_module=linear, rngs=rngs)
        _set_child(_parent(lm, path), path[-1], adapter)
        done.append(".".join(str(p) for p in path))
    return done


def merge_lora(lm: lm_lib.LMModel) -> lm_lib.LMModel:
    """Folds every adapter into its base weight, W <- W + A B, and removes the adapters (in place).

    The product is formed in float32 and rounded once to the kernel's dtype.

    Returns:
      `lm`, now a plain `LMModel`.
    """
    adapters = [(p, m) for p, m in nnx.iter_modules(lm) if isinstance(m, nnx.LoRA)]
    for path, adapter in adapters:
        base: lm_lib.Linear = adapter.base_module
        delta_IO = adapter.lora_a[...].astype(jnp.float32) @ adapter.lora_b[...].astype(jnp.float32)
        kernel = base.kernel[...]
        delta = delta_IO if base.layout == "in_out" else delta_IO.T
        base.kernel.set_value((kernel.astype(jnp.float32) + delta).astype(kernel.dtype))
        _set_child(_parent(lm, path), path[-1], base)
    return lm


def lora_rank(lm: lm_lib.LMModel) -> int:
    """The rank of the model's adapters, 0 when it has none."""
    for _, m in nnx.iter_modules(lm):
        if isinstance(m, nnx.LoRA):
            return int(m.lora_a.shape[1])
    return 0
