"""Memory per device and roofline step times of AudioGen-medium on device meshes (docs/tpu.md).

    python scripts/mesh_memory.py            # the tables of docs/tpu.md, in Markdown

Nothing is allocated: every module is built with `nnx.eval_shape` and every mesh is a
`jax.sharding.AbstractMesh`; `sharding.planned_bytes` applies the same tables and rules that place
real arrays (tests/test_sharding.py checks that it equals what each of 8 CPU devices holds). The
LM is measured at 1 and 2 layers and extrapolated (every layer has the same shapes), so the script
takes seconds.

Roofline: a decode step reads every LM weight a device holds and its whole KV cache once (attention
runs over the preallocated cache, masked), so its time is at least those bytes over the memory
bandwidth. A training step is at least the larger of its FLOPs (6 x parameters x positions) over
peak compute and its weight and optimizer traffic over the bandwidth. Collectives, the T5 and
EnCodec calls (once per clip) and activations are left out: these are lower bounds.
"""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
from flax import nnx
from jax.sharding import AbstractMesh

from audiogen_jax import lora, sharding, t5
from audiogen_jax.config import EncodecConfig, LMConfig, T5Config
from audiogen_jax.encodec import EncodecModel
from audiogen_jax.lm import LMModel

GiB = 2**30
LORA_RANK = 16
WINDOW = 10.0  # seconds: the released model's window (its max_duration)

# Vendor figures per chip / GPU: memory (GiB), bandwidth (GB/s), dense bf16 peak (TFLOP/s).
HARDWARE = {
    "TPU v5e": (16, 819, 197),
    "TPU v4": (32, 1228, 275),
    "A100 80GB SXM": (80, 2039, 312),
    "H100 SXM": (80, 3350, 989),
    "H200 SXM": (141, 4800, 989),
}


def placement(data: int, fsdp: int, tensor: int) -> sharding.Placement:
    return sharding.Placement(AbstractMesh((data, fsdp, tensor), sharding.MESH_AXES))


def per_step(key: str) -> bool:
    """Weights a decode step reads: not the code embeddings (a few rows are gathered) nor the
    cross-attention keys/values (computed once per window, `lm.init_cache`)."""
    return not re.match(r"emb\.|.*cross_attention\.[kv]_proj", key)


def lm_bytes(
    cfg: LMConfig, where: sharding.Placement, dtype, rank: int = 0, keep=lambda key: True
) -> int:
    """Per-device bytes of the LM's parameters in `dtype` (those `keep` accepts), with LoRA
    adapters of `rank` (float32, as `nnx.LoRA` makes them) when rank > 0."""

    def at(layers: int) -> int:
        def build():
            lm = LMModel(
                dataclasses.replace(cfg, num_layers=layers), param_dtype=dtype, rngs=nnx.Rngs(0)
            )
            if rank:
                lora.add_lora(lm, rank, rngs=nnx.Rngs(0))
            return lm

        return sharding.planned_bytes(nnx.eval_shape(build), where, keep)

    one, two = at(1), at(2)
    return one + (cfg.num_layers - 1) * (two - one)


def main() -> int:
    lm_cfg, t5_cfg, codec_cfg = LMConfig.medium(), T5Config.large(), EncodecConfig.medium()
    conditioner = nnx.eval_shape(lambda: t5.T5Conditioner(t5_cfg, lm_cfg.dim, rngs=nnx.Rngs(0)))
    codec = nnx.eval_shape(lambda: EncodecModel(codec_cfg, rngs=nnx.Rngs(0)))
    frames = int(WINDOW * codec_cfg.frame_rate)
    slots = frames + lm_cfg.max_delay + 1
    # Keys and values, float32, of every layer, for the 2 rows ([cond; null]) of one description.
    cache = 2 * 2 * lm_cfg.num_layers * slots * lm_cfg.dim * 4

    print("### Inference: what one device holds (GiB)\n")
    print(
        "| mesh (data x fsdp x tensor) | devices | LM fp32 | LM bf16 | T5 + output_proj | EnCodec "
        "| KV cache per description |"
    )
    print("|---|---|---|---|---|---|---|")
    for data, fsdp, tensor in [(1, 1, 1), (8, 1, 1), (2, 1, 4), (1, 8, 1), (4, 1, 4), (8, 1, 4)]:
        where = placement(data, fsdp, tensor)
        row = [
            lm_bytes(lm_cfg, where, jnp.float32),
            lm_bytes(lm_cfg, where, jnp.bfloat16),
            sharding.planned_bytes(conditioner, where),
            sharding.planned_bytes(codec, where),
            cache // tensor,
        ]
        cells = " | ".join(f"{b / GiB:.2f}" for b in row)
        print(f"| {data} x {fsdp} x {tensor} | {data * fsdp * tensor} | {cells} |")
    print(
        f"\nKV cache: {WINDOW:g} s window = {slots} slots; a device holding d descriptions holds "
        "d times the last column.\n"
    )

    print("### Fine-tuning: what one device holds (GiB), before activations\n")
    print(
        "| mesh (data x fsdp x tensor) | devices | full: weights + grads + Adam m, v + EMA (fp32) "
        f"| LoRA rank {LORA_RANK}: bf16 base + adapters x 5 (fp32) |"
    )
    print("|---|---|---|---|")
    for data, fsdp, tensor in [(1, 1, 1), (1, 8, 1), (1, 4, 2), (1, 16, 1), (2, 16, 1), (1, 32, 1)]:
        where = placement(data, fsdp, tensor)
        proj = sharding.planned_bytes(conditioner, where, lambda k: k.startswith("output_proj."))
        full = 5 * (lm_bytes(lm_cfg, where, jnp.float32) + proj)
        base = lm_bytes(lm_cfg, where, jnp.bfloat16)
        adapters = lm_bytes(lm_cfg, where, jnp.bfloat16, rank=LORA_RANK) - base
        lora_total = base + 5 * adapters + proj  # output_proj stays frozen (float32)
        print(
            f"| {data} x {fsdp} x {tensor} | {data * fsdp * tensor} | {full / GiB:.2f} | "
            f"{lora_total / GiB:.2f} |"
        )

    n_params = lm_bytes(lm_cfg, placement(1, 1, 1), jnp.float32) // 4
    weights = lm_bytes(lm_cfg, placement(1, 1, 1), jnp.bfloat16, keep=per_step)
    print("\n### Roofline: lower bounds on step time\n")
    print(
        f"Decode step (bf16 LM weights: {weights / 1e9:.2f} GB read per step; float32 KV cache: "
        f"{cache / 2**20:.0f} MiB per description, read whole at every step), per device, for b "
        "descriptions per data-parallel group:\n"
    )
    print("| hardware | tensor | b = 1 | b = 8 | 10 s clip, b = 8 (504 steps) |")
    print("|---|---|---|---|---|")
    for name, (_, bandwidth, _) in HARDWARE.items():
        for tensor in (1, 4):
            times = [(weights + b * cache) / tensor / (bandwidth * 1e9) for b in (1, 8)]
            print(
                f"| {name} | {tensor} | {times[0] * 1e3:.1f} ms | {times[1] * 1e3:.1f} ms | "
                f"{times[1] * slots:.1f} s |"
            )
    positions = 8 * (frames + 1 + min(lm_cfg.delays))  # batch 8 of 10 s segments
    flops = 6 * n_params * positions
    print(
        f"\nFull fine-tuning step (float32), batch 8 x {WINDOW:g} s ({positions:,} positions, "
        f"{flops / 1e12:.0f} TFLOP), over n devices with fsdp = n. Per device: the forward pass "
        "and the two backward products each read every weight, gathered (3 x 4 B per "
        "parameter); the update reads parameters, gradients, m, v and EMA and writes four of "
        "them for its 1/n of the parameters (9 x 4 B):\n"
    )
    print("| hardware | n | compute bound | bandwidth bound |")
    print("|---|---|---|---|")
    for name, (_, bandwidth, peak) in HARDWARE.items():
        for n in (8, 32):
            compute = flops / n / (peak * 1e12)
            traffic = n_params * (3 * 4 + 9 * 4 / n)
            memory = traffic / (bandwidth * 1e9)
            print(f"| {name} | {n} | {compute * 1e3:.0f} ms | {memory * 1e3:.0f} ms |")
    print(f"\nLM parameters: {n_params:,}; cache per description: {cache / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
