"""Generation and training on a device mesh: what tests/test_sharding.py compares with one device.

The number of CPU devices is fixed when JAX starts and the rest of the suite must see one, so the
sharded runs happen in subprocesses running this file:

    python tests/sharding_worker.py MODEL_DIR OUT_DIR --devices 8 --meshes 8x1x1,2x1x4,1x8x1,2x2x2
    python tests/sharding_worker.py MODEL_DIR OUT_DIR --devices 4 --meshes 2x2x2 \
        --coordinator 127.0.0.1:PORT --num-processes 2 --process-id 0      (and 1, at once)

Each mesh (data x fsdp x tensor) runs a greedy generation with `AudioGen.from_pretrained(...,
mesh=)` and TRAIN_STEPS sharded train steps; OUT_DIR/MESH.npz holds the codes, audio, losses and
parameters, OUT_DIR/MESH.json what the arrays' shardings and per-device bytes were. The 8-device
run also saves an orbax checkpoint on 1x8x1 and restores it onto 2 devices, and records the errors
of meshes that cannot fit. The test process calls `generation` and `training` with no placement for
the single-device reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

TEXTS = ["dog barking", "rain on a roof", "sirens", "wind in the trees"]
DURATION = 0.5  # seconds: 25 frames of the tiny model's 50 Hz codec
TRAIN_STEPS = 3
BATCH, FRAMES, TEXT_LEN = 8, 12, 5


def generation(model_dir: str, mesh=None):
    """Greedy codes [B, K, T] and audio [B, 1, W] of TEXTS, and the model."""
    from audiogen_jax import AudioGen

    model = AudioGen.from_pretrained(model_dir, mesh=mesh)
    model.set_generation_params(duration=DURATION, use_sampling=False)
    wav, codes = model.generate(TEXTS, seed=0, return_tokens=True)
    return codes, wav, model


def train_batch(lm_cfg, text_dim: int):
    """A fixed batch: random codes, random text states, texts of two lengths."""
    from audiogen_jax import train

    rng = np.random.default_rng(0)
    mask = np.ones((BATCH, TEXT_LEN), np.int32)
    mask[1::2, 3:] = 0
    return train.Batch(
        rng.integers(0, lm_cfg.card, (BATCH, lm_cfg.n_q, FRAMES)).astype(np.int32),
        rng.standard_normal((BATCH, TEXT_LEN, text_dim)).astype(np.float32),
        mask,
    )


def train_config():
    from audiogen_jax import train

    return train.TrainConfig.audiogen(warmup_steps=2, cfg_dropout=0.0)


def training(model_dir: str, placement=None):
    """TRAIN_STEPS updates of the LM and output_proj loaded from `model_dir`.

    Returns:
      (losses, the final TrainState, lm, output_proj, parts): the modules hold the loaded weights.
    """
    import jax
    import jax.numpy as jnp

    from audiogen_jax import sharding, t5, train
    from audiogen_jax.lm import LMModel

    shardings = sharding.loader(placement)
    lm = LMModel.from_pretrained(model_dir, shardings=shardings)
    proj = t5.T5Conditioner.from_pretrained(
        model_dir, with_tokenizer=False, shardings=shardings
    ).output_proj
    cfg = train_config()
    parts, trainable, frozen = train.split_model(lm, proj)
    state = train.init_state(cfg, trainable, seed=0)
    batch = train_batch(lm.config, proj.in_features)
    if placement is None:
        batch = jax.tree.map(jnp.asarray, batch)
    else:
        state = jax.device_put(state, sharding.train_shardings(state, placement, lm, proj))
        frozen = jax.device_put(frozen, sharding.train_shardings(frozen, placement, lm, proj))
        batch = jax.device_put(batch, sharding.batch_shardings(batch, placement))
    losses = []
    for _ in range(TRAIN_STEPS):
        state, metrics = train.train_step(state, frozen, batch, parts, cfg)
        losses.append(float(metrics["ce"]))
    return losses, state, lm, proj, parts


def flat_params(state) -> dict[str, np.ndarray]:
    """{key path: numpy} of the trained parameters (gathered across processes)."""
    import jax

    from audiogen_jax import sharding

    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    return {jax.tree_util.keystr(k): sharding.to_host(v) for k, v in leaves}


# --------------------------------------------------------------------------------------------------
# What the sharded runs record.


def _shard_facts(x) -> dict:
    return {
        "spec": str(x.sharding.spec),
        "shape": list(x.shape),
        "shard": list(x.addressable_shards[0].data.shape),
        "devices": len(x.sharding.device_set),
    }


def _program_facts(model, placement) -> dict:
    """The compiled generation program: its per-device memory and the KV cache's local shape."""
    import jax

    from audiogen_jax import generate as gen
    from audiogen_jax import t5

    ids, mask = t5.tokenize(model.tokenizer, TEXTS + [None] * len(TEXTS))
    settings = model.settings
    compiled = (
        gen.trace_program(
            model.lm,
            model.conditioner,
            ids,
            mask,
            settings,
            key=jax.random.key(0),
            placement=placement,
        )
        .lower()
        .compile()
    )
    cfg = model.lm.config
    frames_b = gen.bucket_frames(settings.num_frames, settings.frame_bucket, settings.max_frames)
    full = (len(ids), cfg.num_heads, frames_b + cfg.max_delay + 1, cfg.head_dim)
    split = placement.split(("batch", "heads"))
    local = (full[0] // split[0], full[1] // split[1], *full[2:])
    hlo = compiled.as_text()
    memory = compiled.memory_analysis()
    return {
        "cache_full": list(full),
        "cache_local": list(local),
        "hlo_has_local_cache": "f32[{}]".format(",".join(map(str, local))) in hlo,
        "hlo_has_full_cache": "f32[{}]".format(",".join(map(str, full))) in hlo,
        "argument_bytes": int(memory.argument_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
    }


def run_mesh(model_dir: str, out_dir: str, shape: tuple[int, int, int], writer: bool) -> None:
    from flax import nnx

    from audiogen_jax import sharding, t5

    name = "x".join(map(str, shape))
    mesh = sharding.make_mesh(*shape)
    placement = sharding.Placement(mesh)
    codes, wav, model = generation(model_dir, mesh)
    layer = model.lm.transformer.layers[0]
    t5_cfg = model.conditioner.config
    facts = {
        "mesh": dict(mesh.shape),
        "lm_q_kernel": _shard_facts(layer.self_attn.q_proj.kernel[...]),
        "lm_linear1_kernel": _shard_facts(layer.linear1.kernel[...]),
        "lm_head_kernel": _shard_facts(model.lm.linears[0].kernel[...]),
        "t5_q_kernel": _shard_facts(
            model.conditioner.t5.encoder.block[0].layer[0].SelfAttention.q.kernel[...]
        ),
        "weights_bytes_per_device": max(
            sharding.bytes_per_device(
                (
                    nnx.state(model.lm),
                    nnx.state(model.conditioner),
                    nnx.state(model.compression_model),
                )
            ).values()
        ),
        "weights_bytes_planned": sum(
            sharding.planned_bytes(m, placement)
            for m in (model.lm, model.conditioner, model.compression_model)
        ),
        "program": _program_facts(model, placement),
    }
    del model
    losses, state, lm, proj, _ = training(model_dir, placement)
    conditioner = nnx.eval_shape(lambda: t5.T5Conditioner(t5_cfg, lm.config.dim, rngs=nnx.Rngs(0)))
    kernel = ("lm", "transformer", "layers", 0, "linear1", "kernel")

    def pick(tree):
        for key in kernel:
            tree = tree[key]
        return tree[...]

    facts["train"] = {
        "param": _shard_facts(pick(state.params)),
        "adam_mu": _shard_facts(pick(state.opt_state[1][0].mu)),
        "adam_nu": _shard_facts(pick(state.opt_state[1][0].nu)),
        "ema": _shard_facts(pick(state.ema_state.ema)),
        "state_bytes_per_device": max(sharding.bytes_per_device(state).values()),
        # parameters, both Adam moments and the EMA: four float32 copies of what trains
        "state_bytes_planned": 4
        * (
            sharding.planned_bytes(lm, placement)
            + sharding.planned_bytes(conditioner, placement, lambda k: k.startswith("output_proj."))
        ),
    }
    params = flat_params(state)
    if writer:
        arrays = {"codes": codes, "wav": wav, "losses": np.asarray(losses)}
        arrays |= {f"param:{k}": v for k, v in params.items()}
        np.savez(os.path.join(out_dir, f"{name}.npz"), **arrays)
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(facts, f, indent=1)
    if shape == (1, 8, 1):
        restore_elsewhere(model_dir, out_dir, state, lm, proj)


def restore_elsewhere(model_dir: str, out_dir: str, state, lm, proj) -> None:
    """Saves the 8-device state with the trainer's orbax manager and restores it onto 2 devices,
    then onto a mesh that cannot hold it."""
    import jax

    from audiogen_jax import sharding, train, trainer

    saved = flat_params(state)
    run_dir = os.path.join(out_dir, "run")
    manager = trainer._checkpoint_manager(run_dir)
    trainer._save(manager, state)
    manager.close()

    two = sharding.Placement(sharding.make_mesh(fsdp=2, devices=jax.devices()[:2]))
    _, trainable, _ = train.split_model(lm, proj)
    fresh = train.init_state(train_config(), trainable, seed=0)
    fresh = jax.device_put(fresh, sharding.train_shardings(fresh, two, lm, proj))
    manager = trainer._checkpoint_manager(run_dir)
    restored = trainer._restore(manager, fresh)
    manager.close()
    back = flat_params(restored)
    leaf = restored.params["lm"]["transformer"]["layers"][0]["linear1"]["kernel"][...]
    result = {
        "step": int(restored.step),
        "max_abs_diff": max(float(np.abs(back[k] - saved[k]).max()) for k in saved),
        "same_keys": sorted(back) == sorted(saved),
        "param": _shard_facts(leaf),
    }
    three = sharding.Placement(sharding.make_mesh(fsdp=3, devices=jax.devices()[:3]))
    try:
        sharding.train_shardings(fresh, three, lm, proj)
        result["three_devices_error"] = None
    except sharding.ShardingError as e:
        result["three_devices_error"] = str(e)
    with open(os.path.join(out_dir, "restore.json"), "w") as f:
        json.dump(result, f, indent=1)


def bad_meshes(model_dir: str, out_dir: str) -> None:
    """The one-line errors of meshes and batches that do not fit."""
    import dataclasses

    import jax
    from flax import nnx

    from audiogen_jax import AudioGen, sharding
    from audiogen_jax.lm import LMModel

    errors = {}

    def attempt(name, fn):
        try:
            fn()
            errors[name] = None
        except sharding.ShardingError as e:
            errors[name] = str(e)

    attempt("too_many_devices", lambda: sharding.make_mesh(data=16))
    attempt("rest_does_not_divide", lambda: sharding.make_mesh(data=3, tensor=-1))
    attempt("heads", lambda: AudioGen.from_pretrained(model_dir, mesh=sharding.make_mesh(tensor=8)))
    model = AudioGen.from_pretrained(model_dir, mesh=sharding.make_mesh(data=8))
    model.set_generation_params(duration=0.1, use_sampling=False)
    attempt("batch", lambda: model.generate(TEXTS[:3], seed=0))
    cfg = dataclasses.replace(model.lm.config, card=30)
    lm = nnx.eval_shape(lambda: LMModel(cfg, rngs=nnx.Rngs(0)))
    attempt(
        "vocab",
        lambda: sharding.Placement(sharding.make_mesh(data=2, tensor=4)).module_shardings(lm),
    )
    batch = train_batch(model.lm.config, 32)
    batch = jax.tree.map(lambda x: x[:6], batch)
    attempt(
        "train_batch",
        lambda: sharding.batch_shardings(batch, sharding.Placement(sharding.make_mesh(data=8))),
    )
    with open(os.path.join(out_dir, "errors.json"), "w") as f:
        json.dump(errors, f, indent=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("out_dir")
    p.add_argument("--devices", type=int, required=True, help="CPU devices of this process")
    p.add_argument("--meshes", required=True, help="data x fsdp x tensor, comma-separated")
    p.add_argument("--coordinator", default=None, help="127.0.0.1:PORT for a multi-process run")
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--bad-input", action="store_true", help="record the errors of bad meshes")
    args = p.parse_args(argv)

    import jax

    # Before JAX starts its backend: this process's CPU devices.
    jax.config.update("jax_num_cpu_devices", args.devices)
    if args.coordinator:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
            coordinator_bind_address=args.coordinator,  # localhost only, not every interface
        )
    os.makedirs(args.out_dir, exist_ok=True)
    for text in args.meshes.split(","):
        shape = tuple(int(n) for n in text.split("x"))
        run_mesh(args.model_dir, args.out_dir, shape, writer=jax.process_index() == 0)
    if args.bad_input:
        bad_meshes(args.model_dir, args.out_dir)
    if args.coordinator:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
