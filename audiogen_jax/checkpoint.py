"""The converted-model directory: one `config.json` and one safetensors file per component.

    DIR/
      config.json            {"format": "audiogen-jax", "version": 1,
                              "compression": {...}, "lm": {...}, "t5": {...}}   (each section optional)
      compression.safetensors   EnCodec weights, keys = our NNX parameter paths ("encoder.model.0.conv.kernel")
      lm.safetensors            LM weights (fp32 or bf16, as converted)
      t5.safetensors            T5 encoder weights
      tokenizer/spiece.model    the T5 sentencepiece model (plus any tokenizer files that came with it)

Keys are the dotted paths of `nnx.to_flat_state(nnx.state(module))`, so loading is: build the module's
*shapes* from its config (`nnx.eval_shape`, no random init, no memory), then fill each parameter from the
file. Missing, unexpected or mis-shaped keys raise one error that lists all of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FORMAT = "audiogen-jax"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHT_FILES = {
    "compression": "compression.safetensors",
    "lm": "lm.safetensors",
    "t5": "t5.safetensors",
}
TOKENIZER_DIR = "tokenizer"

M = TypeVar("M", bound=nnx.Module)


class CheckpointError(ValueError):
    """A converted directory that is missing, incomplete, or does not match its config."""


def read_config(directory: str | os.PathLike, section: str | None = None) -> dict[str, Any]:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{directory} is not a converted audiogen-jax directory (no {CONFIG_FILE}); "
            "create one with `python convert_weights.py --compression ... --lm ... --t5 ... --out DIR`"
        )
    with open(path) as f:
        cfg = json.load(f)
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an audiogen-jax config (format={cfg.get('format')!r})")
    if section is None:
        return cfg
    if section not in cfg:
        raise CheckpointError(
            f"{directory} has no '{section}' model; convert it with `convert_weights.py --{_flag(section)} ...`"
        )
    return cfg[section]


def _flag(section: str) -> str:
    # The conditioner's projection lives in the LM checkpoint, so `--lm` writes it.
    flags = {"compression": "compression", "lm": "lm", "t5": "t5", "conditioner": "lm"}
    return flags.get(section, section)


def update_config(directory: str | os.PathLike, section: str, values: Mapping[str, Any]) -> None:
    """Adds or replaces one section of DIR/config.json, keeping the others (atomic rename)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CONFIG_FILE)
    cfg = {"format": FORMAT, "version": VERSION}
    if os.path.isfile(path):
        with open(path) as f:
            cfg.update(json.load(f))
    cfg[section] = dict(values)
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def path_key(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def abstract_module(factory: Callable[[], M]) -> M:
    """The module with `jax.ShapeDtypeStruct`s in place of arrays: shapes from the config, no allocation."""
    return nnx.eval_shape(factory)


def param_specs(factory: Callable[[], nnx.Module]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{parameter path: (shape, dtype)} of the module `factory` builds, without building it."""
    _, state = nnx.split(abstract_module(factory))
    return {
        path_key(p): (tuple(v.get_value().shape), np.dtype(v.get_value().dtype))
        for p, v in nnx.to_flat_state(state)
    }


def load_module(
    factory: Callable[[], M],
    weights_path: str | os.PathLike,
    dtype: Any | None = None,
) -> M:
    """Builds the module from its factory's shapes and fills every parameter from a safetensors file.

    Tensors are read one at a time and placed on the default device, so peak host memory stays near the
    size of the largest tensor plus the model itself.

    Args:
      factory: builds the module (called under `nnx.eval_shape`, so it costs nothing).
      weights_path: a safetensors file whose keys are the module's parameter paths.
      dtype: cast floating-point weights to this dtype; default keeps the file's dtype.
    """
    from safetensors import safe_open

    if not os.path.isfile(weights_path):
        raise CheckpointError(f"{weights_path}: no such weights file")
    graphdef, state = nnx.split(abstract_module(factory))
    flat = nnx.to_flat_state(state)
    try:
        f = safe_open(os.fspath(weights_path), framework="numpy")
    except Exception as e:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({e})") from e
    with f:
        file_keys = set(f.keys())
        want = {path_key(p): v for p, v in flat}
        missing = sorted(set(want) - file_keys)
        unexpected = sorted(file_keys - set(want))
        misshaped = []
        for key in sorted(set(want) & file_keys):
            shape = tuple(f.get_slice(key).get_shape())
            if shape != tuple(want[key].get_value().shape):
                misshaped.append(
                    f"{key}: file {shape} vs config {tuple(want[key].get_value().shape)}"
                )
        if missing or unexpected or misshaped:
            lines = []
            if missing:
                lines.append(f"missing ({len(missing)}): {', '.join(missing[:20])}")
            if unexpected:
                lines.append(f"unexpected ({len(unexpected)}): {', '.join(unexpected[:20])}")
            if misshaped:
                lines.append(f"mis-shaped ({len(misshaped)}): {'; '.join(misshaped[:20])}")
            raise CheckpointError(
                f"{weights_path} does not match its config:\n  " + "\n  ".join(lines)
            )
        # Read the bytes with plain file reads, not through safetensors' memory map: the mapped file
        # pages count in this process's RSS until the file is closed, which made loading peak at about
        # twice the model's size (measured in docs/performance.md).
        offsets = _tensor_offsets(weights_path)
        fd = os.open(weights_path, os.O_RDONLY)
        for path, var in flat:
            try:
                arr = _read_tensor(fd, *offsets[path_key(path)])
            except BaseException:
                os.close(fd)
                raise
            if dtype is not None and np.issubdtype(arr.dtype, np.floating):
                var.set_value(jnp.asarray(arr, dtype=dtype))
            else:
                var.set_value(jnp.asarray(arr))
            del arr
        os.close(fd)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _tensor_offsets(weights_path) -> dict[str, tuple[int, int, np.dtype, tuple[int, ...]]]:
    """{key: (file offset, byte count, dtype, shape)} from a safetensors header."""
    import struct

    import ml_dtypes

    with open(weights_path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        name = _SAFETENSORS_DTYPES[info["dtype"]]
        dt = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
        start, end = info["data_offsets"]
        out[key] = (8 + n + start, end - start, dt, tuple(info["shape"]))
    return out


def _read_tensor(
    fd: int, offset: int, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]
) -> np.ndarray:
    buf = np.empty(nbytes, np.uint8)
    view, done = memoryview(buf), 0
    while done < nbytes:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise CheckpointError(
                f"unexpected end of file reading {nbytes} bytes at offset {offset}"
            )
        done += got
    return buf.view(dtype).reshape(shape)


def save_module(module: nnx.Module, weights_path: str | os.PathLike) -> None:
    """Writes every parameter of `module` to a safetensors file (used by tests and the tiny preset)."""
    from safetensors.numpy import save_file

    _, state = nnx.split(module)
    tensors = {
        path_key(p): np.asarray(jax.device_get(v.get_value())) for p, v in nnx.to_flat_state(state)
    }
    tmp = os.fspath(weights_path) + ".partial"
    save_file(tensors, tmp)
    os.replace(tmp, weights_path)
