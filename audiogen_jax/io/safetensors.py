"""safetensors files: one reader, one streaming writer, one dtype table.

The format (huggingface/safetensors): an 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}`,
then the data section, which the offsets index from its start.

Why not the `safetensors` package: its numpy API knows no bfloat16, reads whole files at once, and
memory-maps them (the mapped pages count in the process's memory until the file is closed, which
made loading peak at twice the model's size). Here a tensor is read with plain reads when asked
for, and written as soon as a conversion has produced it, so peak memory stays near one tensor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from audiogen_jax.io.errors import FormatError, short_list

# safetensors dtype code -> numpy dtype (bfloat16 from ml_dtypes, a jax dependency). Little-endian,
# as the format is.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
_CODES = {dtype.name: code for code, dtype in DTYPES.items()}
METADATA = "__metadata__"
# As the safetensors library: a longer header is refused before it is read.
MAX_HEADER_BYTES = 100_000_000


def _is_size(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key appears twice")
    return out


# --------------------------------------------------------------------------------------------------
# Reading.


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors file: its header entry; `.numpy()` reads exactly its bytes."""

    file: SafetensorsFile
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    nbytes: int

    def numpy(self) -> np.ndarray:
        return self.file.read(self.name)


class SafetensorsFile(Mapping):
    """A safetensors file opened for lazy reading: {name: StoredTensor}, and its `metadata`.

    The header is read and checked when the file is opened, as strictly as the safetensors library
    checks it: its length within the file (and at most `MAX_HEADER_BYTES`), a JSON object of
    entries each with a known dtype, non-negative integer sizes and offsets, a byte count that
    matches its shape, and offsets that tile the data section exactly (no gap, no overlap, nothing
    past its end). Anything else raises `FormatError` naming the file and the key. Tensor data is
    read only when a tensor is asked for.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                head = f.read(8)
                n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
                if n is None or n > min(size - 8, MAX_HEADER_BYTES):
                    raise FormatError(
                        f"{self.path}: not a safetensors file (header length "
                        f"{'missing' if n is None else n} for a file of {size} bytes)"
                    )
                raw = f.read(n)
        except OSError as e:
            raise FormatError(f"{self.path}: cannot be read ({e})") from e
        try:
            header = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise FormatError(f"{self.path}: not a safetensors file (bad header: {e})") from e
        if not isinstance(header, dict):
            raise FormatError(f"{self.path}: not a safetensors file (header is not a JSON object)")
        metadata = header.pop(METADATA, {})
        if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
            raise FormatError(f"{self.path}: {METADATA} must map strings to strings")
        self.metadata: dict[str, str] = metadata
        self._tensors = {name: self._entry(name, info, 8 + n) for name, info in header.items()}
        end = 0
        for t in sorted(self._tensors.values(), key=lambda t: (t.start, t.nbytes)):
            if t.start != 8 + n + end:
                raise FormatError(
                    f"{self.path}: {t.name[:200]}: data offsets leave a gap or overlap another "
                    "tensor"
                )
            end += t.nbytes
        if 8 + n + end != size:
            raise FormatError(
                f"{self.path}: the tensors cover {end} bytes of a {size - 8 - n}-byte data section"
            )

    def _entry(self, name: str, info: Any, data_start: int) -> StoredTensor:
        def bad(why: str) -> FormatError:
            return FormatError(f"{self.path}: {name[:200]}: {why}")

        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise bad("an entry needs exactly dtype, shape and data_offsets")
        dtype = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise bad(f"unknown dtype {str(info['dtype'])[:20]!r}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and all(_is_size(d) for d in shape)):
            raise bad("shape is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_size, offsets))):
            raise bad("data_offsets is not a pair of non-negative integers")
        if math.prod(d for d in shape if d) * dtype.itemsize >= 2**63:
            raise bad("shape is too large for any array")
        begin, end = offsets
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            raise bad(f"data_offsets span {end - begin} bytes, its shape and dtype need {nbytes}")
        return StoredTensor(self, name, dtype, tuple(shape), data_start + begin, nbytes)

    def __getitem__(self, name: str) -> StoredTensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def read(self, name: str) -> np.ndarray:
        """The tensor `name` as a numpy array (plain reads, no memory map)."""
        t = self._tensors[name]
        buf = np.empty(t.nbytes, np.uint8)
        view, done = memoryview(buf), 0
        with open(self.path, "rb") as f:
            f.seek(t.start)
            while done < t.nbytes:
                got = f.readinto(view[done:])
                if not got:
                    raise FormatError(
                        f"{self.path}: {name}: the file ends {t.nbytes - done} bytes early"
                    )
                done += got
        return buf.view(t.dtype).reshape(t.shape)


# --------------------------------------------------------------------------------------------------
# Writing: the header is known from the shapes up front, tensors are written as they come, so peak
# memory is one tensor, not the whole model.


class SafetensorsWriter:
    """Writes a safetensors file tensor by tensor, in any order, given every name/shape/dtype up
    front. The file appears under its name only once every tensor was written."""

    def __init__(
        self,
        path: str | os.PathLike,
        specs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
        metadata: Mapping[str, str] | None = None,
    ):
        self.path = os.fspath(path)
        header: dict[str, Any] = {}
        self._slots: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}
        pos = 0
        for name in sorted(specs):
            shape, dtype = specs[name]
            shape, dtype = tuple(int(d) for d in shape), np.dtype(dtype)
            n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[name] = {
                "dtype": _CODES[dtype.name],
                "shape": list(shape),
                "data_offsets": [pos, pos + n],
            }
            self._slots[name] = (pos, shape, dtype)
            pos += n
        if metadata:
            header[METADATA] = dict(metadata)
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the data section starts 8-aligned, as the format advises
        self._data_start = 8 + len(blob)
        self._tmp = self.path + ".partial"
        self._f = open(self._tmp, "wb")
        self._f.write(struct.pack("<Q", len(blob)))
        self._f.write(blob)
        self._f.truncate(self._data_start + pos)
        self._written: set[str] = set()

    def write(self, name: str, arr: np.ndarray) -> None:
        start, shape, dtype = self._slots[name]
        arr = np.asarray(arr, dtype=dtype, order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
        if tuple(arr.shape) != shape:
            raise FormatError(f"{self.path}: {name} has shape {arr.shape}, the header says {shape}")
        self._f.seek(self._data_start + start)
        self._f.write(arr.tobytes())
        self._written.add(name)

    def close(self) -> None:
        """Renames the file into place if every tensor was written (never a half-written file)."""
        self._f.close()
        missing = set(self._slots) - self._written
        if missing:
            os.remove(self._tmp)
            raise FormatError(f"{self.path}: tensors never written: {short_list(sorted(missing))}")
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)


def write_file(
    path: str | os.PathLike,
    tensors: Iterable[tuple[str, np.ndarray]],
    specs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Streams (name, array) pairs into a safetensors file; removes the partial file on error.

    Args:
      path: the file to write.
      tensors: every name of `specs` once, in any order (e.g. a conversion's output).
      specs: {name: (shape, dtype)} of the file's tensors.
      metadata: string key/values stored in the header.
    """
    writer = SafetensorsWriter(path, specs, metadata)
    try:
        for name, arr in tensors:
            writer.write(name, arr)
    except BaseException:
        writer.abort()
        raise
    writer.close()


def save_file(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Writes arrays already in memory (tests, the tiny random model)."""
    arrays = {k: np.asarray(v) for k, v in tensors.items()}
    specs = {k: (v.shape, v.dtype) for k, v in arrays.items()}
    write_file(path, arrays.items(), specs, metadata)
