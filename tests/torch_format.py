"""Writes `torch.save` zip archives byte by byte, without torch, for crafted and fuzzed inputs.

The layout is torch's own (`archive/data.pkl`, `archive/data/<key>` stored uncompressed,
`archive/byteorder`, `archive/version`), and the pickle is written opcode by opcode (protocol 2,
the opcodes torch's pickler emits), so a test can put any value into any field: negative or huge
offsets, sizes and strides, storages that do not match their members, unknown storage types.
`tests/test_io.py::test_crafted_archive_is_what_torch_writes` checks against torch itself that a
valid archive written here loads to the same tensors.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import struct
import zipfile
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Storage:
    type_name: str  # "FloatStorage", ...: the `torch.<name>` global
    numel: Any  # declared element count (any value, to craft bad ones)
    data: bytes  # the archive member's bytes


@dataclasses.dataclass(frozen=True)
class Tensor:
    storage: str  # key of a Storage
    offset: Any
    size: Any  # a tuple (or anything, to craft bad ones)
    stride: Any


def _int(n: int) -> bytes:
    raw = pickle.encode_long(n)
    if len(raw) < 256:
        return pickle.LONG1 + bytes([len(raw)]) + raw
    return pickle.LONG4 + struct.pack("<i", len(raw)) + raw


def _str(s: str) -> bytes:
    raw = s.encode("utf-8", "surrogatepass")
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _value(v: Any, storages: dict[str, Storage]) -> bytes:
    if isinstance(v, bool):
        return pickle.NEWTRUE if v else pickle.NEWFALSE
    if isinstance(v, int):
        return _int(v)
    if isinstance(v, float):
        return pickle.BINFLOAT + struct.pack(">d", v)
    if isinstance(v, str):
        return _str(v)
    if v is None:
        return pickle.NONE
    if isinstance(v, tuple):
        return pickle.MARK + b"".join(_value(x, storages) for x in v) + pickle.TUPLE
    if isinstance(v, list):
        return pickle.EMPTY_LIST + b"".join(_value(x, storages) + pickle.APPEND for x in v)
    if isinstance(v, dict):
        items = b"".join(
            _value(k, storages) + _value(x, storages) + pickle.SETITEM for k, x in v.items()
        )
        return pickle.EMPTY_DICT + items
    if isinstance(v, Tensor):
        s = storages[v.storage]
        pid = (
            pickle.MARK
            + _str("storage")
            + _global("torch", s.type_name)
            + _str(v.storage)
            + _str("cpu")
            + _value(s.numel, storages)
            + pickle.TUPLE
            + pickle.BINPERSID
        )
        hooks = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
        args = (
            pid
            + _value(v.offset, storages)
            + _value(v.size, storages)
            + _value(v.stride, storages)
            + pickle.NEWFALSE
            + hooks
        )
        return (
            _global("torch._utils", "_rebuild_tensor_v2")
            + pickle.MARK
            + args
            + pickle.TUPLE
            + pickle.REDUCE
        )
    raise TypeError(f"cannot write {type(v).__name__}")


def pickle_bytes(obj: Any, storages: dict[str, Storage]) -> bytes:
    """The data.pkl bytes of `obj` (dicts, lists, tuples, scalars, `Tensor`s)."""
    return pickle.PROTO + b"\x02" + _value(obj, storages) + pickle.STOP


def archive_bytes(
    obj: Any,
    storages: dict[str, Storage],
    *,
    data_pkl: bytes | None = None,
    compress_pickle: bool = False,
    compress_storages: bool = False,
    omit: tuple[str, ...] = (),
) -> bytes:
    """A whole torch zip archive; `data_pkl` replaces the pickle written from `obj`, and the
    storages named in `omit` get no member."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        pkl_type = zipfile.ZIP_DEFLATED if compress_pickle else zipfile.ZIP_STORED
        z.writestr("archive/data.pkl", data_pkl or pickle_bytes(obj, storages), pkl_type)
        z.writestr("archive/byteorder", "little")
        for key, s in storages.items():
            if key in omit:
                continue
            st_type = zipfile.ZIP_DEFLATED if compress_storages else zipfile.ZIP_STORED
            z.writestr(f"archive/data/{key}", s.data, st_type)
        z.writestr("archive/version", "3\n")
    return out.getvalue()


def storage_of(arr: np.ndarray) -> Storage:
    """A storage holding `arr`'s elements (little-endian, C order)."""
    names = {
        "float32": "FloatStorage",
        "float64": "DoubleStorage",
        "float16": "HalfStorage",
        "bfloat16": "BFloat16Storage",
        "int64": "LongStorage",
        "int32": "IntStorage",
        "int16": "ShortStorage",
        "int8": "CharStorage",
        "uint8": "ByteStorage",
        "bool": "BoolStorage",
    }
    arr = np.ascontiguousarray(arr)
    return Storage(names[arr.dtype.name], arr.size, arr.tobytes())
