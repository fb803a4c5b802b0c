"""Placement: a device mesh, the logical axes of every parameter, and one table mapping the two.

The same program runs on one CPU, one accelerator, a TPU slice or many hosts: JAX compiles it for a
mesh of devices (`jax.sharding`, GSPMD) once each array says how it is split. Following flax NNX
and MaxText, the split is said in two steps:

    parameter path --model table--> logical axes --RULES--> mesh axes --> NamedSharding
    "transformer.layers.3.linear1.kernel"  ("embed", "mlp")  ("fsdp", "tensor")

The mesh has three named axes, each a kind of parallelism:
  - `data`: each device group takes its own rows of the batch (descriptions, training segments);
  - `fsdp`: also splits the batch, and splits every weight's model width D too (fully sharded data
    parallelism: parameters, gradients, optimizer state and EMA live 1/fsdp per device and are
    all-gathered layer by layer when used);
  - `tensor`: splits attention heads, feed-forward width and the output codebook entries (Megatron
    tensor parallelism); the KV cache is split by heads to match.

Why tables of parameter paths here rather than `nnx.Param(..., out_sharding=...)` metadata in the
model files: flax 0.12 shards an annotated variable eagerly when it is created and refuses to create
one outside a mesh context (`flax_always_shard_variable`), so every single-device path would need a
mesh or an opt-out on each parameter; and an LM kernel's axis order depends on the dtype it is held
in (`lm.kernel_layout`), which the table resolves from the module instead of every constructor
spelling both orders. The tables key on the same dotted paths as the checkpoint files and the
`*_params.py` maps, and the model files stay free of placement.

Mesh axis types: `Auto` (jax 0.10's `jax.make_mesh` defaults to `Explicit`). With Auto axes the
existing model code runs unchanged: inputs and parameters carry their shardings, a few constraints
pin what matters (the KV cache, the train state), and XLA's GSPMD partitioner propagates the rest
and inserts the collectives. Explicit axes would put shardings in the types, and every einsum,
reshape and cache update of the model would need an `out_sharding` of its own.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from audiogen_jax import encodec, t5
from audiogen_jax import lm as lm_lib

MESH_AXES = ("data", "fsdp", "tensor")

Axes = tuple[str | None, ...]


class ShardingError(ValueError):
    """A mesh that cannot be built, or a model or batch that does not divide over it."""


# --------------------------------------------------------------------------------------------------
# Logical axes of each model's parameters, by path (regular expressions over the dotted paths of
# `nnx.to_flat_state`, the checkpoint keys). None: a dimension that is never split.

# The LM (lm.py). Its Linear projections, by module path: (input axis, output axis). A kernel is
# held [in, out] or, in 16-bit and int8, [out, in] (`lm.kernel_layout`); biases and int8 scales are
# [out]; LoRA adapters (lora.py) are [in, rank] and [rank, out].
LM_LINEARS: tuple[tuple[str, tuple[str, str]], ...] = (
    (r"transformer\.layers\.\d+\.(self_attn|cross_attention)\.[qkv]_proj", ("embed", "heads")),
    (r"transformer\.layers\.\d+\.(self_attn|cross_attention)\.out_proj", ("heads", "embed")),
    (r"transformer\.layers\.\d+\.linear1", ("embed", "mlp")),
    (r"transformer\.layers\.\d+\.linear2", ("mlp", "embed")),
    (r"linears\.\d+", ("embed", "vocab")),
)
# The LM's other parameters. A code embedding has card + 1 rows (the special token), which no even
# split fits, so its rows stay whole.
LM_PARAMS: tuple[tuple[str, Axes], ...] = (
    (r"emb\.\d+\.embedding", ("codes", "embed")),
    (r"(transformer\.layers\.\d+\.(norm1|norm_cross|norm2)|out_norm)\.(scale|bias)", ("embed",)),
)

# The text conditioner (t5.py): T5's kernels are always [in, out]; `relative_attention_bias` is
# [buckets, N] (one column per head); `output_proj` maps T5's width to the LM's.
T5_PARAMS: tuple[tuple[str, Axes], ...] = (
    (r"t5\.shared\.embedding", ("text_vocab", "embed")),
    (r"t5\.encoder\.block\.\d+\.layer\.0\.SelfAttention\.[qkv]\.kernel", ("embed", "heads")),
    (r"t5\.encoder\.block\.\d+\.layer\.0\.SelfAttention\.o\.kernel", ("heads", "embed")),
    (
        r"t5\.encoder\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.embedding",
        ("buckets", "heads"),
    ),
    (r"t5\.encoder\.block\.\d+\.layer\.1\.DenseReluDense\.wi(_0|_1)?\.kernel", ("embed", "mlp")),
    (r"t5\.encoder\.block\.\d+\.layer\.1\.DenseReluDense\.wo\.kernel", ("mlp", "embed")),
    (r"t5\.encoder\.(block\.\d+\.layer\.[01]\.layer_norm|final_layer_norm)\.weight", ("embed",)),
    (r"output_proj\.kernel", ("embed", None)),
    (r"output_proj\.bias", (None,)),
)

# EnCodec (encodec.py, quantization.py): conv kernels [width, in, out], LSTM input and recurrent
# matrices [in, 4 * hidden] and [4 * hidden, hidden], codebooks [bins, dim].
ENCODEC_PARAMS: tuple[tuple[str, Axes], ...] = (
    (r".*\.(conv|convtr)\.kernel", ("conv_width", "conv_in", "conv_out")),
    (r".*\.(conv|convtr)\.bias", ("conv_out",)),
    (r".*\.layers\.\d+\.kernel_ih", ("lstm_in", "lstm_gates")),
    (r".*\.layers\.\d+\.weight_hh", ("lstm_gates", "lstm_hidden")),
    (r".*\.layers\.\d+\.bias", ("lstm_gates",)),
    (r"quantizer\.layers\.\d+\.embed", ("codebook", "code_dim")),
)

# --------------------------------------------------------------------------------------------------
# The rules: logical axis -> mesh axes. A mesh axis serves at most one dimension of an array (the
# first that asks for it), and axes of size 1 are left out of the specs.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("batch", ("data", "fsdp")),  # rows of a batch (CFG rows [cond; null], training segments)
    # weights
    ("embed", "fsdp"),  # model width D of the LM and T5 (T5 only splits under fsdp > 1)
    ("heads", "tensor"),  # N * H of q/k/v, N of the KV cache and of T5's position bias
    ("mlp", "tensor"),  # feed-forward width F
    ("vocab", "tensor"),  # the LM's output codebook entries V
    ("codes", None),  # V + 1 rows of the code embeddings
    ("lora_rank", None),
    ("text_vocab", None),  # T5 token rows: one gather per generation, kept whole
    ("buckets", None),
    # EnCodec: 15 M parameters (58 MB), replicated; its batch rows are split instead.
    ("conv_width", None),
    ("conv_in", None),
    ("conv_out", None),
    ("lstm_in", None),
    ("lstm_gates", None),
    ("lstm_hidden", None),
    ("codebook", None),
    ("code_dim", None),
)


# --------------------------------------------------------------------------------------------------
# The mesh.


def parse_mesh(text: str) -> dict[str, int]:
    """`"data=2,tensor=4"` -> {"data": 2, "tensor": 4} (the CLI's --mesh); -1 means the rest."""
    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name not in MESH_AXES:
            raise ShardingError(
                f"--mesh {text!r}: expected AXIS=SIZE pairs with AXIS in {', '.join(MESH_AXES)} "
                "(e.g. data=2,tensor=4)"
            )
        if name in sizes:
            raise ShardingError(f"--mesh {text!r}: {name} is given twice")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ShardingError(f"--mesh {text!r}: {name}={value.strip()} is not an int") from None
    if not sizes:
        raise ShardingError(f"--mesh {text!r}: give at least one AXIS=SIZE")
    return sizes


def make_mesh(
    data: int = 1, fsdp: int = 1, tensor: int = 1, *, devices: Sequence[Any] | None = None
) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: every device of every process).

    One size may be -1: it takes the devices the others leave. The sizes must multiply to the
    number of devices. The axes are `AxisType.Auto` (module docstring).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for name, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or (n < 1 and n != -1):
            raise ShardingError(f"mesh axis {name} must be a positive int or -1, got {n!r}")
    rest = [name for name, n in sizes.items() if n == -1]
    if len(rest) > 1:
        raise ShardingError(f"only one mesh axis may be -1, got {', '.join(rest)}")
    known = math.prod(n for n in sizes.values() if n != -1)
    kind = devices[0].platform if devices else "none"
    if rest:
        if len(devices) % known:
            raise ShardingError(
                f"{len(devices)} {kind} devices do not split into {_describe(sizes)}: "
                f"{len(devices)} is not a multiple of {known}"
            )
        sizes[rest[0]] = len(devices) // known
    need = math.prod(sizes.values())
    if need > len(devices):
        raise ShardingError(
            f"the mesh {_describe(sizes)} needs {need} devices, but {len(devices)} {kind} "
            "devices exist"
        )
    if need < len(devices):
        raise ShardingError(
            f"the mesh {_describe(sizes)} uses {need} of the {len(devices)} {kind} devices; give "
            "sizes that use them all (one axis may be -1: the rest)"
        )
    shape = tuple(sizes[a] for a in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def parse_distributed(spec: str) -> tuple[str, int, int] | None:
    """`"HOST:PORT,N,I"` -> (coordinator address, processes, this process's index); None for
    "auto" (the CLI's --distributed)."""
    if spec == "auto":
        return None
    try:
        address, n, i = (p.strip() for p in spec.split(","))
        n, i = int(n), int(i)
    except ValueError:
        raise ShardingError(
            f"--distributed {spec!r}: expected HOST:PORT,NUM_PROCESSES,PROCESS_ID (or nothing, "
            "on a cluster JAX detects)"
        ) from None
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ShardingError(f"--distributed {spec!r}: the coordinator {address!r} is not HOST:PORT")
    if n < 1:
        raise ShardingError(f"--distributed {spec!r}: {n} processes; give at least 1")
    if not 0 <= i < n:
        raise ShardingError(f"--distributed {spec!r}: process id {i} is not in [0, {n})")
    return address, n, i


def initialize_distributed(spec: str = "auto") -> None:
    """Joins a multi-process run (`jax.distributed.initialize`): call before anything uses JAX.

    Args:
      spec: "auto" lets JAX find the cluster (Cloud TPU slices, SLURM, Open MPI, Kubernetes);
        "HOST:PORT,N,I" names the coordinator (process 0's address), the number of processes N
        and this process's index I. A loopback coordinator (127.0.0.1, localhost, ::1) listens on
        that address only; any other on every interface, as the other hosts must reach it.
    """
    parsed = parse_distributed(spec)
    if parsed is None:
        jax.distributed.initialize()
        return
    address, n, i = parsed
    host = address.rpartition(":")[0].strip("[]")
    bind = address if host in ("127.0.0.1", "localhost", "::1") else None
    jax.distributed.initialize(
        coordinator_address=address, num_processes=n, process_id=i, coordinator_bind_address=bind
    )


def _describe(sizes: Mapping[str, int]) -> str:
    return " x ".join(f"{a}={sizes[a]}" for a in MESH_AXES if a in sizes)


def describe(mesh: Mesh) -> str:
    """ "data=2 x fsdp=1 x tensor=4"."""
    return _describe(dict(mesh.shape))


# --------------------------------------------------------------------------------------------------
# Logical axes of a module's parameters.


def _dotted(path: Sequence[Any]) -> str:
    return ".".join(str(p) for p in path)


def _match(table, key: str, what: str):
    for pattern, axes in table:
        if re.fullmatch(pattern, key):
            return axes
    raise ShardingError(f"{what}: no logical axes for parameter {key!r} (sharding.py's tables)")


def _lm_axes(lm: lm_lib.LMModel, prefix: tuple = ()) -> dict[tuple, Axes]:
    modules = dict(nnx.iter_modules(lm))
    out = {}
    for path, _ in nnx.to_flat_state(nnx.state(lm, nnx.Param)):
        *owner, name = path
        rule_key = _dotted(p for p in owner if p != "base_module")  # LoRA wraps the Linear
        module = modules.get(tuple(owner))
        if isinstance(module, lm_lib.Linear) or name in ("lora_a", "lora_b"):
            d_in, d_out = _match(LM_LINEARS, rule_key, "LM")
            if name == "kernel":
                axes = (d_in, d_out) if module.layout == "in_out" else (d_out, d_in)
            else:
                axes = {
                    "bias": (d_out,),
                    "kernel_scale": (d_out,),
                    "lora_a": (d_in, "lora_rank"),
                    "lora_b": ("lora_rank", d_out),
                }[name]
        else:
            axes = _match(LM_PARAMS, _dotted(path), "LM")
        out[prefix + tuple(path)] = axes
    return out


def logical_axes(module: nnx.Module) -> dict[tuple, Axes]:
    """{parameter path: logical axes} for an LMModel, T5Conditioner, T5EncoderModel or
    EncodecModel (real or abstract, from `nnx.eval_shape`)."""
    if isinstance(module, lm_lib.LMModel):
        return _lm_axes(module)
    if isinstance(module, (t5.T5Conditioner, t5.T5EncoderModel)):
        prefix = () if isinstance(module, t5.T5Conditioner) else ("t5",)
        table, what = T5_PARAMS, "T5"
    elif isinstance(module, encodec.EncodecModel):
        prefix, table, what = (), ENCODEC_PARAMS, "EnCodec"
    else:
        raise ShardingError(f"no sharding table for {type(module).__name__}")
    return {
        tuple(path): _match(table, _dotted(prefix + tuple(path)), what)
        for path, _ in nnx.to_flat_state(nnx.state(module, nnx.Param))
    }


# --------------------------------------------------------------------------------------------------
# Placement: a mesh and the rules, turning logical axes into shardings.


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where arrays go: the mesh and the rules. Hashable: a static argument of the jitted programs.

    Attributes:
      mesh: from `make_mesh`.
      rules: logical axis -> mesh axes (default `RULES`).
    """

    mesh: Mesh
    rules: tuple[tuple[str, str | tuple[str, ...] | None], ...] = RULES

    def spec(self, axes: Axes) -> PartitionSpec:
        """The PartitionSpec of an array whose dimensions have these logical axes."""
        rules, used, out = dict(self.rules), set(), []
        for name in axes:
            if name is not None and name not in rules:
                raise ShardingError(f"logical axis {name!r} is not in the rules table")
            mesh_axes = rules.get(name) if name is not None else None
            mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
            mesh_axes = tuple(a for a in mesh_axes if a not in used and self.mesh.shape[a] > 1)
            used.update(mesh_axes)
            out.append(None if not mesh_axes else mesh_axes if len(mesh_axes) > 1 else mesh_axes[0])
        return PartitionSpec(*out)

    def sharding(self, axes: Axes = ()) -> NamedSharding:
        """The NamedSharding for these logical axes (() or none: replicated)."""
        return NamedSharding(self.mesh, self.spec(axes))

    def split(self, axes: Axes) -> tuple[int, ...]:
        """How many pieces each dimension is cut into."""
        spec = self.spec(axes)
        return tuple(
            math.prod(self.mesh.shape[a] for a in ((p,) if isinstance(p, str) else p or ()))
            for p in spec
        )

    @property
    def batch_devices(self) -> int:
        """The number of pieces a batch is cut into (data x fsdp)."""
        return self.split(("batch",))[0]

    def check(self, what: str, shape: Sequence[int], axes: Axes) -> NamedSharding:
        """The sharding of an array of `shape`, or a ShardingError naming the dimension that does
        not divide. Dimensions past `axes` are not split."""
        axes = tuple(axes) + (None,) * (len(shape) - len(axes))
        for size, name, n in zip(shape, axes, self.split(axes), strict=True):
            if size % n:
                mesh_axes = self.spec((name,))[0]
                mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
                sizes = " x ".join(f"{a}={self.mesh.shape[a]}" for a in mesh_axes)
                raise ShardingError(
                    f"{what}: its {name} dimension ({size}) does not divide over the mesh axis "
                    f"{sizes} ({n} pieces)"
                )
        return self.sharding(axes)

    def module_shardings(self, module: nnx.Module) -> dict[str, NamedSharding]:
        """{dotted parameter path: NamedSharding} of a module (real or abstract); a ShardingError
        when a model dimension does not divide over its mesh axes."""
        self.check_model(module)
        shapes = {p: v.get_value().shape for p, v in nnx.to_flat_state(nnx.state(module))}
        return {
            _dotted(path): self.check(_dotted(path), shapes[path], axes)
            for path, axes in logical_axes(module).items()
        }

    def check_model(self, module: nnx.Module) -> None:
        """Heads must divide over `tensor` as whole heads (a flattened N * H could split one)."""
        if isinstance(module, lm_lib.LMModel):
            heads = {"the LM's attention heads (num_heads)": module.config.num_heads}
        elif isinstance(module, (t5.T5Conditioner, t5.T5EncoderModel)):
            heads = {"T5's attention heads (num_heads)": module.config.num_heads}
        else:
            return
        tensor = self.split(("heads",))[0]
        for what, n in heads.items():
            if n % tensor:
                divisors = [d for d in range(1, n + 1) if n % d == 0]
                raise ShardingError(
                    f"the mesh axis tensor={tensor} does not divide {what}: {n}; choose tensor "
                    f"from {divisors}"
                )

    def put(self, x: Any, axes: Axes = ()) -> jax.Array:
        """x (numpy or a jax.Array; the same value on every process) placed with these axes."""
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            # Typed PRNG keys are placed through their raw data.
            return jax.random.wrap_key_data(self.put(jax.random.key_data(x), axes))
        return jax.device_put(x, self.check(f"an array of shape {np.shape(x)}", np.shape(x), axes))


def planned_bytes(
    module: nnx.Module, placement: Placement, keep: Callable[[str], bool] = lambda key: True
) -> int:
    """Bytes of `module`'s parameters (those whose dotted path `keep` accepts) that one device holds
    under `placement`, from shapes alone: an abstract module (`nnx.eval_shape`) and an abstract
    mesh (`jax.sharding.AbstractMesh`) of any size will do. docs/tpu.md is computed with it."""
    axes = logical_axes(module)
    total = 0
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        if not keep(_dotted(path)):
            continue
        value = var.get_value()
        pieces = placement.split(axes[tuple(path)])
        shard = math.prod(-(-n // p) for n, p in zip(value.shape, pieces, strict=True))
        total += shard * np.dtype(value.dtype).itemsize
    return total


def place_module(module: nnx.Module, placement: Placement) -> nnx.Module:
    """Moves every parameter of `module` (in place) to its sharding; those already there stay."""
    shardings = placement.module_shardings(module)
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        var.set_value(jax.device_put(var.get_value(), shardings[_dotted(path)]))
    return module


def loader(placement: Placement | None) -> Callable[[nnx.Module], dict[str, NamedSharding]] | None:
    """The `shardings` argument of the `from_pretrained` loaders: where each parameter of the
    (abstract) module goes; None without a placement (the default device)."""
    return None if placement is None else placement.module_shardings


# --------------------------------------------------------------------------------------------------
# Inside the programs: constraints that pin what GSPMD should not choose for itself.


def constrain(x: Any, axes: Axes, placement: Placement | None) -> Any:
    """`jax.lax.with_sharding_constraint` with logical axes; nothing without a placement."""
    if placement is None:
        return x
    axes = tuple(axes) + (None,) * (x.ndim - len(axes))
    return jax.lax.with_sharding_constraint(x, placement.sharding(axes))


def constrain_cache(cache: lm_lib.KVCache, placement: Placement | None) -> lm_lib.KVCache:
    """The KV cache [2B, N, M, H] split by rows over data x fsdp and by heads over tensor, as the
    q/k/v projections that fill it."""
    return jax.tree.map(lambda kv: constrain(kv, ("batch", "heads"), placement), cache)


# --------------------------------------------------------------------------------------------------
# Training state: parameters, gradients, optimizer state and EMA share the parameters' shardings.


def train_shardings(
    tree: Any, placement: Placement, lm: lm_lib.LMModel, output_proj: nnx.Module
) -> Any:
    """Shardings for a tree holding `train.split_model`'s {"lm", "output_proj"} variables (the
    trainable and frozen parts, a `TrainState` with its optimizer and EMA states).

    Each leaf whose key path ends in a parameter path of the LM or of the conditioner's
    `output_proj` gets that parameter's sharding; everything else (step counts, keys) is
    replicated.
    """
    proj_axes = {
        path[1:]: axes
        for path, axes in _conditioner_axes(output_proj).items()
        if path[0] == "output_proj"
    }
    axes_by_path = {("lm", *p): a for p, a in _lm_axes(lm).items()}
    axes_by_path |= {("output_proj", *p): a for p, a in proj_axes.items()}
    placement.check_model(lm)

    def leaf_sharding(key_path, leaf) -> NamedSharding:
        keys = []
        for k in reversed(key_path):
            if isinstance(k, jax.tree_util.DictKey):
                keys.append(k.key)
            elif keys:
                break
        for start in range(len(keys), 0, -1):
            path = tuple(reversed(keys[:start]))
            if path in axes_by_path:
                return placement.check(_dotted(path), leaf.shape, axes_by_path[path])
        return placement.sharding()

    return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def _conditioner_axes(output_proj: nnx.Module) -> dict[tuple, Axes]:
    return {
        ("output_proj", *path): _match(T5_PARAMS, _dotted(("output_proj", *path)), "T5")
        for path, _ in nnx.to_flat_state(nnx.state(output_proj, nnx.Param))
    }


def batch_shardings(batch: Any, placement: Placement) -> Any:
    """Every array of a training batch split by rows (its first dimension)."""
    return jax.tree.map(
        lambda x: placement.check(f"the batch {np.shape(x)}", np.shape(x), ("batch",)), batch
    )


# --------------------------------------------------------------------------------------------------
# Reading results and memory.


def to_host(x: jax.Array) -> np.ndarray:
    """A numpy copy of a (possibly multi-process) array: gathered across processes if needed."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def bytes_per_device(tree: Any) -> dict[int, int]:
    """{device id: bytes} of the shards of every array in `tree` that this process holds."""
    out: dict[int, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in getattr(leaf, "addressable_shards", ()):
            out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
    return out
