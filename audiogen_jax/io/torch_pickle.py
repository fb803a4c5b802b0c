"""`torch.save` files read without torch, through a restricted unpickler.

Since torch 1.6, `torch.save` writes a zip archive: `<prefix>/data.pkl` pickles the object, and each
tensor storage is a raw little-endian member `<prefix>/data/<key>`, stored uncompressed. The pickle
names a few torch functions (`torch._utils._rebuild_tensor_v2`) and storage classes
(`torch.FloatStorage`); the unpickler here answers only those and a short allow-list of plain
containers, and refuses any other global, so a checkpoint cannot run code. Tensors come back as
`LazyTensor`s that read their bytes only when asked, so a 3.7 GB checkpoint is converted one tensor
at a time.

A checkpoint is untrusted input, so nothing in it is believed before it is checked (all in Python
integers, which cannot overflow), and every failure is a `ConversionError` naming the file and key:
  - data.pkl is read with a size cap (`MAX_PICKLE_BYTES`), so a compressed bomb cannot expand,
    and its opcodes are scanned (`pickletools`, which executes nothing) before it is unpickled: a
    length past the end of the data, or a memo index beyond the opcodes so far, would make the
    unpickler allocate gigabytes from a few bytes (a 9-byte pickle asking for a memo of 2^28
    entries takes 4 GB);
  - a storage must be an uncompressed member (as torch writes them) whose size is its element count
    times its dtype's size, so reading one never allocates more than the file holds;
  - a tensor's dtype is known, its offset, sizes and strides are non-negative integers, the largest
    element index it can reach lies inside its storage, and it has no more elements than its storage
    (which refuses expanded, stride-0 views that would multiply memory).

Legacy (pre-zip) pickles fall back to `torch.load(weights_only=True)` when torch is installed.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
import pickletools
import warnings
import zipfile
from collections import OrderedDict
from typing import Any

import ml_dtypes
import numpy as np

from audiogen_jax.io.errors import ConversionError, short_list

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
# The pickle holds only the state dict's structure and the training config (a few hundred KB for
# AudioGen-medium); a bigger one is refused. Unpickling builds at most a few dozen bytes of Python
# objects per byte of pickle, so this also bounds its memory.
MAX_PICKLE_BYTES = 8 * 2**20
# Objects walked after unpickling to name the tensors.
MAX_OBJECTS = 2_000_000
# What zipfile raises for a damaged or unusual archive (encrypted members raise RuntimeError).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    RuntimeError,
    ValueError,
    EOFError,
    OSError,
)


@dataclasses.dataclass(frozen=True)
class _Storage:
    key: str  # name of the archive member under `data/` holding the raw bytes
    dtype: np.dtype
    numel: int  # elements


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """A tensor inside a torch zip archive; `.numpy()` reads exactly its bytes.

    Its fields are checked when the archive is loaded (`TorchArchive.load`), before any read.
    """

    archive: TorchArchive
    storage: _Storage
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]  # in elements

    @property
    def dtype(self) -> np.dtype:
        return self.storage.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def numpy(self) -> np.ndarray:
        return self.archive.read(self)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _show(x: Any) -> str:
    """A short description of an untrusted value (huge integers have no repr in Python 3.11+)."""
    if _is_int(x):
        return str(x) if x.bit_length() <= 64 else f"<{x.bit_length()}-bit integer>"
    if isinstance(x, (tuple, list)) and len(x) <= 8:
        inner = ", ".join(_show(v) for v in x)
        return f"({inner}{',' if len(x) == 1 else ''})" if isinstance(x, tuple) else f"[{inner}]"
    if isinstance(x, str):
        return repr(x[:80])
    return f"a {type(x).__name__}"


def _check_tensor(t: LazyTensor) -> str | None:
    """Why the tensor `t` cannot be read safely, or None."""
    if not isinstance(t.storage, _Storage):
        return f"its storage is a {type(t.storage).__name__}, not a tensor storage"
    if not (_is_int(t.offset) and t.offset >= 0):
        return f"storage offset {_show(t.offset)} is not a non-negative integer"
    shape, stride = t.shape, t.stride
    if not (isinstance(shape, tuple) and all(_is_int(n) and n >= 0 for n in shape)):
        return f"size {_show(shape)} is not a tuple of non-negative integers"
    if not (isinstance(stride, tuple) and all(_is_int(s) and s >= 0 for s in stride)):
        return f"stride {_show(stride)} is not a tuple of non-negative integers"
    if len(stride) != len(shape):
        return f"size {_show(shape)} and stride {_show(stride)} have different lengths"
    if math.prod(n for n in shape if n) * t.storage.dtype.itemsize >= 2**63:
        return f"size {_show(shape)} is too large for any array"
    numel = math.prod(shape)
    if numel == 0:
        return None
    last = t.offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
    if last >= t.storage.numel:
        return (
            f"size {_show(shape)}, stride {_show(stride)} and offset {_show(t.offset)} reach "
            f"element {_show(last)}, past its storage of {t.storage.numel} elements"
        )
    if numel > t.storage.numel:
        return (
            f"{_show(numel)} elements from a storage of {t.storage.numel} (overlapping strides, "
            "as an expanded view has, are not read)"
        )
    return None


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
            infos = {i.filename: i for i in self._zip.infolist()}
        except _ZIP_ERRORS as e:
            raise ConversionError(
                f"{self.path} is not a readable torch zip checkpoint ({e}); torch.save since 1.6 "
                "writes zip archives, and legacy pickles need torch installed"
            ) from e
        pkl = [n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ConversionError(
                f"{self.path}: expected one data.pkl in the archive, found {short_list(pkl, 3)}"
            )
        self._infos = infos
        self._prefix = pkl[0][: -len("data.pkl")]
        self._pickle_name = pkl[0]
        if self._prefix + "byteorder" in infos:
            order = self._read_member(self._prefix + "byteorder", 16).decode(errors="replace")
            if order.strip() != "little":
                raise ConversionError(f"{self.path}: big-endian checkpoints are not supported")

    def _read_member(self, name: str, cap: int) -> bytes:
        """At most `cap` bytes of a member, whatever its header claims; more is an error."""
        try:
            with self._zip.open(name) as f:
                data = f.read(cap + 1)
        except _ZIP_ERRORS as e:
            raise ConversionError(f"{self.path}: archive member {name} is unreadable ({e})") from e
        if len(data) > cap:
            raise ConversionError(
                f"{self.path}: archive member {name} expands to more than {cap} bytes; refusing"
            )
        return data

    def load(self) -> Any:
        """Unpickles the archive's object, with tensors as checked `LazyTensor`s."""
        archive, storages, tensors = self, {}, []

        class _Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if module == "torch" and name in STORAGE_DTYPES:
                    return name
                target = _TORCH_GLOBALS.get((module, name))
                if target is None:
                    raise ConversionError(
                        f"{archive.path}: refusing to unpickle global {module[:100]}.{name[:100]} "
                        "(only tensors, dicts and plain values are allowed in a checkpoint)"
                    )
                if target == "rebuild_tensor":
                    return archive._rebuild_tensor(tensors)
                if target == "rebuild_parameter":
                    return lambda data, requires_grad, hooks: data
                return target

            def persistent_load(self, pid: Any) -> Any:
                return archive._storage(pid, storages)

        data = self._read_member(self._pickle_name, MAX_PICKLE_BYTES)
        try:
            _scan_opcodes(data)
            obj = _Unpickler(io.BytesIO(data)).load()
        except ConversionError:
            raise
        except Exception as e:  # noqa: BLE001 - a corrupt pickle raises almost any type
            raise ConversionError(
                f"{self.path}: data.pkl is not a valid checkpoint pickle "
                f"({type(e).__name__}: {str(e)[:200]})"
            ) from e
        problems = [(t, p) for t in tensors if (p := _check_tensor(t))]
        if problems:
            t, problem = problems[0]
            name = _tensor_names(obj, self.path).get(id(t), "(not reachable from the root)")
            raise ConversionError(f"{self.path}: tensor {name}: {problem}")
        return obj

    def _storage(self, pid: Any, storages: dict[str, _Storage]) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ConversionError(f"{self.path}: unknown persistent id {_show(pid)}")
        _, storage_type, key, _location, numel = pid
        if not (isinstance(storage_type, str) and storage_type in STORAGE_DTYPES):
            raise ConversionError(f"{self.path}: unknown storage type {_show(storage_type)}")
        if not (isinstance(key, str) and _is_int(numel) and numel >= 0):
            raise ConversionError(
                f"{self.path}: malformed storage {_show(key)} of {_show(numel)} elements"
            )
        dtype = STORAGE_DTYPES[storage_type]
        storage = _Storage(key=key, dtype=dtype, numel=numel)
        if storages.setdefault(key, storage) != storage:
            raise ConversionError(f"{self.path}: storage {key} is declared twice, differently")
        info = self._infos.get(f"{self._prefix}data/{key}")
        if info is None:
            raise ConversionError(f"{self.path}: storage {key} has no archive member")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ConversionError(
                f"{self.path}: storage {key} is compressed (torch.save stores storages as they are)"
            )
        if info.file_size != numel * dtype.itemsize:
            raise ConversionError(
                f"{self.path}: storage {key} holds {info.file_size} bytes, but {numel} "
                f"{dtype.name} elements need {numel * dtype.itemsize}"
            )
        return storage

    def _rebuild_tensor(self, tensors: list[LazyTensor]):
        def rebuild(storage, offset, size, stride, *_ignored) -> LazyTensor:
            t = LazyTensor(self, storage, offset, size, stride)
            tensors.append(t)
            return t

        return rebuild

    def read(self, t: LazyTensor) -> np.ndarray:
        """The tensor's values; reads only the span of its storage the tensor covers."""
        problem = _check_tensor(t)  # (checked at load already; cheap, and keeps reads safe)
        if problem:
            raise ConversionError(f"{self.path}: {problem}")
        item, numel = t.dtype.itemsize, math.prod(t.shape)
        if numel == 0:
            return np.zeros(t.shape, t.dtype)
        last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride, strict=True))
        member = f"{self._prefix}data/{t.storage.key}"
        try:
            with self._zip.open(member) as f:
                f.seek(t.offset * item)
                buf = f.read((last + 1 - t.offset) * item)
        except _ZIP_ERRORS as e:
            raise ConversionError(
                f"{self.path}: storage {t.storage.key} is unreadable ({e})"
            ) from e
        if len(buf) != (last + 1 - t.offset) * item:
            raise ConversionError(f"{self.path}: storage {t.storage.key} is truncated")
        span = np.frombuffer(buf, dtype=t.dtype)
        # A stride along a dimension of size 1 is never used and may be anything; the others are
        # below the storage's length (checked), so their byte strides fit numpy's integers.
        strides = [s * item if n > 1 else 0 for n, s in zip(t.shape, t.stride, strict=True)]
        view = np.lib.stride_tricks.as_strided(span, t.shape, strides, writeable=False)
        return np.array(view)  # a contiguous copy of exactly the tensor's elements


_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _scan_opcodes(data: bytes) -> None:
    """Parses every opcode without executing any; refuses what would make the unpickler allocate
    more than the data warrants. Raises ValueError (turned into a ConversionError by the caller)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # bad escapes in a text STRING opcode
        for count, (op, arg, _) in enumerate(pickletools.genops(data)):
            # The pickler numbers its memo entries 0, 1, 2, ... as it writes them.
            if op.name in _MEMO_PUTS and not 0 <= int(arg) <= count:
                raise ValueError(f"memo index {arg} at opcode {count}")


def _tensor_names(obj: Any, path: str) -> dict[int, str]:
    """{id(LazyTensor): its dotted key in `obj`}, for error messages. Iterative (no recursion), and
    paths are built only for tensors, from parent links, so a deep or wide pickle costs little."""
    parents: dict[int, tuple[int, str]] = {id(obj): (0, "")}
    names, todo = {}, [obj]
    while todo:
        if len(parents) > MAX_OBJECTS:
            raise ConversionError(f"{path}: data.pkl holds more than {MAX_OBJECTS} objects")
        node = todo.pop()
        if isinstance(node, LazyTensor):
            parts, i = [], id(node)
            while i in parents and parents[i][0] and len(parts) < 32:
                i, key = parents[i]
                parts.append(key)
            names[id(node)] = ".".join(reversed(parts)) or "<root>"
            continue
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, (list, tuple))
            else ()
        )
        for key, child in items:
            if id(child) not in parents:
                parents[id(child)] = (id(node), key[:200] if isinstance(key, str) else _show(key))
                todo.append(child)
    return names


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
