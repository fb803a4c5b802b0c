"""`torch.save` files read without torch, through a restricted unpickler.

Since torch 1.6, `torch.save` writes a zip archive: `<prefix>/data.pkl` pickles the object, and each
tensor storage is a raw little-endian member `<prefix>/data/<key>`. The pickle names a few torch
functions (`torch._utils._rebuild_tensor_v2`) and storage classes (`torch.FloatStorage`); the
unpickler here answers only those and a short allow-list of plain containers, and refuses any other
global, so a checkpoint cannot run code. Tensors come back as `LazyTensor`s that read their bytes
only when asked, so a 3.7 GB checkpoint is converted one tensor at a time.

Legacy (pre-zip) pickles fall back to `torch.load(weights_only=True)` when torch is installed.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import zipfile
from collections import OrderedDict
from typing import Any

import ml_dtypes
import numpy as np

from audiogen_jax.io.errors import ConversionError

# torch storage class name -> numpy dtype.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("bool"),
}


@dataclasses.dataclass(frozen=True)
class _Storage:
    key: str  # name of the archive member under `data/` holding the raw bytes
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """A tensor inside a torch zip archive; `.numpy()` reads exactly its bytes."""

    archive: TorchArchive
    storage: _Storage
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return self.storage.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def numpy(self) -> np.ndarray:
        return self.archive.read(self)


_TORCH_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): "rebuild_tensor",
    ("torch._utils", "_rebuild_parameter"): "rebuild_parameter",
}


class TorchArchive:
    """A `torch.save` zip archive opened for lazy, torch-free reading."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile as e:
            raise ConversionError(
                f"{self.path} is not a torch zip checkpoint (torch.save since 1.6 writes zip "
                "archives); legacy pickles can be read with `torch.load(..., weights_only=True)`"
            ) from e
        names = self._zip.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ConversionError(f"{self.path}: expected one data.pkl in the archive, found {pkl}")
        self._prefix = pkl[0][: -len("data.pkl")]
        byteorder = self._prefix + "byteorder"
        if byteorder in names and self._zip.read(byteorder).decode().strip() != "little":
            raise ConversionError(f"{self.path}: big-endian checkpoints are not supported")
        self._pickle_name = pkl[0]

    def load(self) -> Any:
        """Unpickles the archive's object, with tensors as `LazyTensor`s."""
        archive = self

        class _Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if module == "torch" and name in STORAGE_DTYPES:
                    return name
                target = _TORCH_GLOBALS.get((module, name))
                if target is None:
                    raise ConversionError(
                        f"{archive.path}: refusing to unpickle global {module}.{name} "
                        "(only tensors, dicts and plain values are allowed in a checkpoint)"
                    )
                if target == "rebuild_tensor":
                    return archive._rebuild_tensor
                if target == "rebuild_parameter":
                    return lambda data, requires_grad, hooks: data
                return target

            def persistent_load(self, pid: Any) -> Any:
                if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
                    raise ConversionError(f"{archive.path}: unknown persistent id {pid!r}")
                _, storage_type, key, _location, _numel = pid
                return _Storage(key=str(key), dtype=STORAGE_DTYPES[storage_type])

        with self._zip.open(self._pickle_name) as f:
            return _Unpickler(io.BytesIO(f.read())).load()

    def _rebuild_tensor(self, storage, offset, size, stride, *_ignored) -> LazyTensor:
        return LazyTensor(self, storage, int(offset), tuple(size), tuple(stride))

    def read(self, t: LazyTensor) -> np.ndarray:
        member = f"{self._prefix}data/{t.storage.key}"
        item = t.dtype.itemsize
        n = int(np.prod(t.shape, dtype=np.int64))
        contiguous = _contiguous_strides(t.shape) == t.stride
        with self._zip.open(member) as f:
            if contiguous:
                f.seek(t.offset * item)
                buf = f.read(n * item)
                return np.frombuffer(buf, dtype=t.dtype).reshape(t.shape).copy()
            raw = np.frombuffer(f.read(), dtype=t.dtype)
        view = np.lib.stride_tricks.as_strided(
            raw[t.offset :], shape=t.shape, strides=[s * item for s in t.stride]
        )
        return np.ascontiguousarray(view)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Loads a `torch.save` file without torch (tensors as `LazyTensor`s).

    A legacy (pre-zip) pickle falls back to `torch.load(weights_only=True)`, which needs torch.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        return TorchArchive(path).load()
    try:
        import torch  # optional: only legacy pickles need it
    except ImportError as e:
        raise ConversionError(
            f"{path} is not a torch zip archive; reading a legacy pickle needs torch installed"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise ConversionError(f"{path}: could not be read as a torch checkpoint: {e}") from e
    return _torch_to_numpy(obj, torch)


def _torch_to_numpy(obj: Any, torch) -> Any:
    if isinstance(obj, torch.Tensor):
        if obj.dtype == torch.bfloat16:
            return obj.float().numpy().astype(ml_dtypes.bfloat16)
        return obj.numpy()
    if isinstance(obj, dict):
        return type(obj)((k, _torch_to_numpy(v, torch)) for k, v in obj.items())
    return obj
