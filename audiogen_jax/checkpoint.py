"""The converted-model directory: one `config.json` and one safetensors file per component.

    DIR/
      config.json               {"format": "audiogen-jax", "version": 2,
                                 "compression": {...}, "lm": {...}, "t5": {...},
                                 "conditioner": {...}}              (each section optional)
      compression.safetensors   EnCodec weights, keys = our NNX parameter paths
                                ("encoder.model.0.conv.kernel")
      lm.safetensors            LM weights (fp32 or bf16, as converted; kernels [in, out])
      conditioner.safetensors   the text conditioner's projection (written with the LM)
      t5.safetensors            T5 encoder weights
      tokenizer/spiece.model    the T5 sentencepiece model (and any tokenizer files that came with
                                it)

Keys are the dotted paths of `nnx.to_flat_state(nnx.state(module))`, so loading is: build the
module's *shapes* from its config (`nnx.eval_shape`, no random init, no memory), then fill each
parameter from the file. Missing, unexpected or mis-shaped keys raise one error that lists all of
them.

Versions: 2 stores every LM kernel [in, out] whatever the dtype (version 1 stored 16-bit kernels
[out, in]); the LM file says so in its header (`lm.py`), and the hub cache re-converts entries of
an older version.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from audiogen_jax.io import safetensors
from audiogen_jax.io.errors import FormatError, short_list

FORMAT = "audiogen-jax"
VERSION = 2
CONFIG_FILE = "config.json"
WEIGHT_FILES = {
    "compression": "compression.safetensors",
    "lm": "lm.safetensors",
    "t5": "t5.safetensors",
}
TOKENIZER_DIR = "tokenizer"
CONVERT_HELP = "python convert_weights.py --compression ... --lm ... --t5 ... --out DIR"

M = TypeVar("M", bound=nnx.Module)
# Where each parameter of a module goes: {key: jax Sharding}, or a function of the abstract module.
Shardings = Mapping[str, Any] | Callable[[Any], Mapping[str, Any]]


class CheckpointError(FormatError):
    """A converted directory that is missing, incomplete, or does not match its config."""


def read_config(directory: str | os.PathLike, section: str | None = None) -> dict[str, Any]:
    """DIR/config.json, or one section of it.

    Raises:
      CheckpointError: no or unreadable config.json, a newer format, or no such section (saying
        which `convert` flag writes it).
    """
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{directory} is not a converted audiogen-jax directory (no {CONFIG_FILE}); "
            f"create one with `{CONVERT_HELP}`"
        )
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise CheckpointError(f"{path}: not an audiogen-jax config (format={found!r})")
    if not isinstance(cfg.get("version"), int) or cfg["version"] > VERSION:
        raise CheckpointError(
            f"{path}: format version {cfg.get('version')!r}; this audiogen-jax reads up to "
            f"{VERSION} (upgrade it, or convert again with this one)"
        )
    if section is None:
        return cfg
    if not isinstance(cfg.get(section), dict):
        raise CheckpointError(
            f"{directory} has no '{section}' model; convert it with "
            f"`convert_weights.py --{_flag(section)} ...`"
        )
    return cfg[section]


def _flag(section: str) -> str:
    # The conditioner's projection lives in the LM checkpoint, so `--lm` writes it.
    flags = {"compression": "compression", "lm": "lm", "t5": "t5", "conditioner": "lm"}
    return flags.get(section, section)


def is_current(directory: str | os.PathLike) -> bool:
    """Whether DIR holds a config.json of this format version (the conversion caches use this)."""
    try:
        return read_config(directory)["version"] == VERSION
    except CheckpointError:
        return False


def update_config(directory: str | os.PathLike, section: str, values: Mapping[str, Any]) -> None:
    """Adds or replaces one section of DIR/config.json, keeping the others (atomic rename)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CONFIG_FILE)
    cfg = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    cfg.update({"format": FORMAT, "version": VERSION, section: dict(values)})
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def path_key(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def abstract_module(factory: Callable[[], M]) -> M:
    """The module with `jax.ShapeDtypeStruct`s in place of arrays: shapes from the config, no
    allocation."""
    return nnx.eval_shape(factory)


def param_specs(factory: Callable[[], nnx.Module]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{parameter path: (shape, dtype)} of the module `factory` builds, without building it."""
    _, state = nnx.split(abstract_module(factory))
    return {
        path_key(p): (tuple(v.get_value().shape), np.dtype(v.get_value().dtype))
        for p, v in nnx.to_flat_state(state)
    }


def open_weights(weights_path: str | os.PathLike) -> safetensors.SafetensorsFile:
    """A converted weights file opened for reading (its header read and checked)."""
    if not os.path.isfile(weights_path):
        raise CheckpointError(f"{weights_path}: no such weights file")
    try:
        return safetensors.SafetensorsFile(weights_path)
    except FormatError as e:
        raise CheckpointError(
            f"{e}; it looks incomplete or corrupt: convert it again (`{CONVERT_HELP}`)"
        ) from e


def load_module(
    factory: Callable[[], M],
    weights_path: str | os.PathLike,
    dtype: Any | None = None,
    transposed: Callable[[str], bool] = lambda key: False,
    shardings: Shardings | None = None,
) -> M:
    """Builds the module from its factory's shapes and fills every parameter from a weights file.

    Tensors are read one at a time and placed on the default device, so peak host memory stays near
    the size of the largest tensor plus the model itself.

    Args:
      factory: builds the module (called under `nnx.eval_shape`, so it costs nothing).
      weights_path: a safetensors file whose keys are the module's parameter paths.
      dtype: cast floating-point weights to this dtype; default keeps the file's dtype.
      transposed: which keys the module holds transposed from the file (2-D kernels whose layout
        is chosen at load time, see `lm.py`).
      shardings: {key: jax Sharding} for the module, or a function of the abstract module giving
        it (`sharding.loader`): each device then receives only its own shard of each tensor, cut
        on the host, so no device ever holds a whole model it was not meant to.
    """
    abstract = abstract_module(factory)
    if callable(shardings):
        shardings = shardings(abstract)
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    f = open_weights(weights_path)
    want = {path_key(p): v for p, v in flat}
    missing = sorted(set(want) - set(f))
    unexpected = sorted(set(f) - set(want))
    misshaped = []
    for key in sorted(set(want) & set(f)):
        shape = f[key].shape[::-1] if transposed(key) else f[key].shape
        if shape != tuple(want[key].get_value().shape):
            misshaped.append(f"{key}: file {shape} vs config {tuple(want[key].get_value().shape)}")
    if missing or unexpected or misshaped:
        lines = []
        if missing:
            lines.append(f"missing ({len(missing)}): {short_list(missing)}")
        if unexpected:
            lines.append(f"unexpected ({len(unexpected)}): {short_list(unexpected)}")
        if misshaped:
            lines.append(f"mis-shaped ({len(misshaped)}): {'; '.join(misshaped[:20])}")
        raise CheckpointError(f"{weights_path} does not match its config:\n  " + "\n  ".join(lines))
    for path, var in flat:
        key = path_key(path)
        try:
            arr = f.read(key)
        except FormatError as e:
            raise CheckpointError(f"{e}; the file looks incomplete: convert it again") from e
        if shardings is not None:
            var.set_value(_put_shards(arr, shardings[key], transposed(key), dtype))
            continue
        value = jnp.asarray(arr)
        del arr
        cast = dtype is not None and jnp.issubdtype(value.dtype, jnp.floating)
        if transposed(key) or (cast and value.dtype != dtype):
            value = _relayout(value, transposed(key), jnp.dtype(dtype) if cast else value.dtype)
        var.set_value(value)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _put_shards(arr: np.ndarray, sharding, transpose: bool, dtype) -> jax.Array:
    """A global array with each addressable device's shard cut (and cast) from the host copy."""
    host = arr.T if transpose else arr
    if dtype is not None and jnp.issubdtype(host.dtype, jnp.floating):
        dtype = np.dtype(dtype)
    else:
        dtype = host.dtype
    return jax.make_array_from_callback(
        host.shape, sharding, lambda index: np.ascontiguousarray(host[index], dtype=dtype)
    )


@functools.partial(jax.jit, static_argnums=(1, 2))
def _relayout(x: jax.Array, transpose: bool, dtype: jnp.dtype) -> jax.Array:
    # On the device: XLA's tiled transpose took about half the time of numpy's strided copy of a
    # bf16 kernel (docs/performance.md); one compile per distinct shape.
    return (x.T if transpose else x).astype(dtype)


def return_freed_memory() -> None:
    """Hands freed heap pages back to the OS after a whole model was replaced (glibc only).

    glibc serves blocks under 32 MB from its heap and keeps them when freed, so after a model is
    converted to another dtype the process would otherwise stay at the size of both models.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def save_module(
    module: nnx.Module,
    weights_path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    transposed: Callable[[str], bool] = lambda key: False,
) -> None:
    """Writes every parameter of `module` to a safetensors file (tests, saving a loaded model).

    Args:
      module: the module.
      weights_path: the file to write (atomically).
      metadata: string key/values for the file's header.
      transposed: which keys to write transposed (the inverse of `load_module`'s).
    """
    _, state = nnx.split(module)
    tensors = {}
    for p, v in nnx.to_flat_state(state):
        arr = np.asarray(jax.device_get(v.get_value()))
        tensors[path_key(p)] = arr.T if transposed(path_key(p)) else arr
    safetensors.save_file(weights_path, tensors, metadata)
