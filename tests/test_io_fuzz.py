"""Property-based fuzzing of the readers of untrusted files (`audiogen_jax/io/`), with hypothesis.

For torch archives, safetensors files and xp.cfg texts, crafted inputs (random offsets, sizes,
strides, dtypes, header fields, nested aliases and interpolations) and mutated valid inputs
(truncation, bit flips, overwritten bytes) may only give a correct result or the project's own
error: `ConversionError` for torch archives and xp.cfg, `FormatError` for safetensors. Any other
exception, a crash, or a hang fails.

The CI run is short and derandomized (the same examples every time); `pytest -m slow
tests/test_io_fuzz.py` runs a longer one, whose last result is in docs/conversion.md.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch_format import Storage, Tensor, archive_bytes, pickle_bytes, storage_of

from audiogen_jax.io import safetensors
from audiogen_jax.io.audiocraft import YamlConfig
from audiogen_jax.io.errors import ConversionError, FormatError
from audiogen_jax.io.torch_pickle import STORAGE_DTYPES, LazyTensor, TorchArchive

_COMMON = dict(
    derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
FAST = settings(max_examples=200, **_COMMON)
LONG = settings(max_examples=3000, **_COMMON)
# Seconds one example may take; a reader that expands or loops would take far longer.
TIME_LIMIT = 10.0


def _both(make):
    """The property as two tests: a short CI run and a long one behind `-m slow`."""
    return make(FAST), pytest.mark.slow(make(LONG))


def _write(data: bytes, suffix: str) -> str:
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


MUTATION = st.tuples(
    st.sampled_from(["flip", "truncate", "overwrite", "insert"]),
    st.floats(0, 1, exclude_max=True),  # where, as a fraction of the length
    st.binary(min_size=1, max_size=8),
)


def _mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for op, where, payload in mutations:
        at = int(where * len(out))
        if op == "flip" and out:
            out[at] ^= 1 << (payload[0] % 8)
        elif op == "truncate":
            del out[at:]
        elif op == "overwrite":
            out[at : at + len(payload)] = payload
        else:
            out[at:at] = payload
    return bytes(out)


# --------------------------------------------------------------------------------------------------
# torch archives.

INTS = st.one_of(st.integers(-3, 40), st.sampled_from([2**31, 2**63 - 1, 2**64 + 1, -(2**63)]))
# Mostly small valid values, so that a good share of the drawn tensors is readable.
FIELD = st.one_of(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4), INTS)


@st.composite
def tensor_fields(draw):
    type_name = draw(st.sampled_from(sorted(STORAGE_DTYPES)))
    numel = draw(st.integers(0, 48))
    declared = draw(st.one_of(st.just(numel), st.just(numel), st.just(numel), INTS))
    rank = draw(st.integers(0, 3))
    size = tuple(draw(st.lists(FIELD, min_size=rank, max_size=rank)))
    stride_rank = draw(st.sampled_from([rank, rank, rank, rank + 1]))
    stride = tuple(draw(st.lists(FIELD, min_size=stride_rank, max_size=stride_rank)))
    return type_name, numel, declared, draw(FIELD), size, stride


def _expected(values, declared, offset, size, stride):
    """The tensor torch would give for these fields, or None where they are invalid (written as
    the definition: element i is storage[offset + sum(i_d * stride_d)])."""
    if declared != values.size or offset < 0 or len(size) != len(stride):
        return None
    if any(d < 0 for d in size) or any(s < 0 for s in stride):
        return None
    if math.prod(d for d in size if d) * values.itemsize >= 2**63:  # no numpy array is that big
        return None
    if math.prod(size) == 0:
        return np.zeros(size, values.dtype)
    if math.prod(size) > values.size:
        return None
    index = [
        offset + sum(i * s for i, s in zip(ix, stride, strict=True)) for ix in np.ndindex(size)
    ]
    if max(index) >= values.size:
        return None
    return values[np.array(index, np.int64)].reshape(size)


def check_tensor_fields(fields):
    type_name, numel, declared, offset, size, stride = fields
    values = np.arange(numel).astype(STORAGE_DTYPES[type_name])
    storage = Storage(type_name, declared, storage_of(values).data)
    path = _write(archive_bytes({"w": Tensor("0", offset, size, stride)}, {"0": storage}), ".bin")
    try:
        want = _expected(values, declared, offset, size, stride)
        try:
            got = TorchArchive(path).load()["w"].numpy()
        except ConversionError:
            assert want is None, f"refused a valid tensor {fields}"
            event("refused")
            return
        assert want is not None, f"accepted an invalid tensor {fields}"
        event("read")
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    finally:
        os.remove(path)


test_pickle_tensor_fields, test_pickle_tensor_fields_long = _both(
    lambda s: s(given(tensor_fields())(check_tensor_fields))
)


def _base_archive() -> tuple[bytes, dict[str, Storage], dict]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    storages = {"0": storage_of(w), "1": storage_of(np.arange(5, dtype=np.int64))}
    obj = {
        "best_state": {
            "w": Tensor("0", 0, (4, 3), (3, 1)),
            "w_t": Tensor("0", 0, (3, 4), (1, 3)),
            "ids": Tensor("1", 1, (4,), (1,)),
        },
        "xp.cfg": "a: &x [1, 2]\nb: ${a}\nc: [*x, *x]\n",
        "version": "1.3.0",
    }
    return pickle_bytes(obj, storages), storages, obj


def _tensors(obj, limit=10_000):
    todo, seen, found = [obj], set(), []
    while todo and len(seen) < limit:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, LazyTensor):
            found.append(node)
        elif isinstance(node, dict):
            todo += list(node.values())
        elif isinstance(node, (list, tuple)):
            todo += list(node)
    return found


def check_mutated_archive(target, mutations):
    pkl, storages, obj = _base_archive()
    if target == "pickle":
        data = archive_bytes(obj, storages, data_pkl=_mutate(pkl, mutations) or b"\x80")
    else:
        data = _mutate(archive_bytes(obj, storages), mutations)
    path = _write(data, ".bin")
    t0 = time.perf_counter()
    try:
        loaded = TorchArchive(path).load()
        event("loaded")
        for t in _tensors(loaded):
            try:
                assert t.numpy().shape == t.shape
            except ConversionError:
                pass
        if isinstance(loaded, dict) and isinstance(loaded.get("xp.cfg"), str):
            YamlConfig.from_text(loaded["xp.cfg"]).get("b", None)
    except ConversionError:
        event("refused")
    finally:
        os.remove(path)
    assert time.perf_counter() - t0 < TIME_LIMIT


test_pickle_mutations, test_pickle_mutations_long = _both(
    lambda s: s(
        given(st.sampled_from(["pickle", "file"]), st.lists(MUTATION, min_size=1, max_size=4))(
            check_mutated_archive
        )
    )
)


# --------------------------------------------------------------------------------------------------
# safetensors.

ST_DTYPES = sorted(safetensors.DTYPES)


@st.composite
def safetensors_files(draw):
    """Headers whose fields are drawn independently: mostly invalid, sometimes valid."""
    header, pos = {}, 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from([*ST_DTYPES, "F8", 3]))
        shape = draw(
            st.lists(st.one_of(st.integers(0, 5), st.sampled_from([-1, 2.0, 2**64])), max_size=3)
        )
        itemsize = safetensors.DTYPES[dtype].itemsize if dtype in safetensors.DTYPES else 1
        nbytes = math.prod(d for d in shape if isinstance(d, int)) * itemsize
        begin = draw(st.one_of(st.just(pos), st.integers(-2, 64)))
        end = draw(st.one_of(st.just(begin + nbytes), st.integers(-2, 64)))
        header[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
        pos = max(pos, end if isinstance(end, int) else pos)
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.sampled_from([{"k": "v"}, {"k": 1}, [], "x"]))
    data = draw(st.binary(max_size=80)) if draw(st.booleans()) else bytes(min(max(pos, 0), 256))
    return header, data


def _safetensors_bytes(header, data: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return len(blob).to_bytes(8, "little") + blob + data


def _check_opened(path: str) -> None:
    """An opened file is consistent: every tensor reads back as its exact bytes."""
    f = safetensors.SafetensorsFile(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    spans = sorted((t.start, t.nbytes) for t in f.values())
    for (a, n), (b, _) in zip(spans, spans[1:], strict=False):
        assert a + n == b
    for name, t in f.items():
        arr = f.read(name)
        assert arr.shape == t.shape and arr.dtype == t.dtype
        assert arr.tobytes() == raw[t.start : t.start + t.nbytes]


def check_safetensors_fields(case):
    path = _write(_safetensors_bytes(*case), ".safetensors")
    try:
        _check_opened(path)
        event("read")
    except FormatError:
        event("refused")
    finally:
        os.remove(path)


test_safetensors_fields, test_safetensors_fields_long = _both(
    lambda s: s(given(safetensors_files())(check_safetensors_fields))
)


ARRAYS = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.tuples(st.sampled_from(ST_DTYPES), st.lists(st.integers(0, 4), max_size=3)),
    max_size=4,
)


def check_safetensors_round_trip_and_mutations(arrays, mutations):
    rng = np.random.default_rng(0)
    tensors = {
        name: np.frombuffer(
            rng.bytes(math.prod(shape) * safetensors.DTYPES[code].itemsize),
            safetensors.DTYPES[code],
        ).reshape(shape)
        for name, (code, shape) in arrays.items()
    }
    fd, path = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    try:
        safetensors.save_file(path, tensors, {"k": "v"})
        f = safetensors.SafetensorsFile(path)  # what we write, we read back exactly
        assert f.metadata == {"k": "v"} and set(f) == set(tensors)
        for name, want in tensors.items():
            assert f.read(name).tobytes() == want.tobytes()
        with open(path, "rb") as fh:
            mutated = _mutate(fh.read(), mutations)
        with open(path, "wb") as fh:
            fh.write(mutated)
        try:
            _check_opened(path)
            event("read")
        except FormatError:
            event("refused")
    finally:
        os.remove(path)


test_safetensors_mutations, test_safetensors_mutations_long = _both(
    lambda s: s(
        given(ARRAYS, st.lists(MUTATION, min_size=1, max_size=4))(
            check_safetensors_round_trip_and_mutations
        )
    )
)


# --------------------------------------------------------------------------------------------------
# xp.cfg.


@st.composite
def yaml_texts(draw):
    """Top-level keys k0..kN whose values are scalars, lists of aliases to earlier anchors, or
    strings with `${...}` references (to any key, itself included), then a few raw mutations."""
    lines = []
    n = draw(st.integers(1, 10))
    for i in range(n):
        kind = draw(st.sampled_from(["scalar", "aliases", "interp", "nested"]))
        if kind == "scalar" or i == 0:
            value = draw(
                st.sampled_from(["1", "x", "[1, 2, 3]", "{a: 1}", "'${k0}'", "0x" + "f" * 30])
            )
        elif kind == "aliases":
            refs = draw(st.lists(st.integers(0, i - 1), min_size=1, max_size=12))
            value = "[" + ", ".join(f"*k{j}" for j in refs) + "]"
        elif kind == "interp":
            refs = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=6))
            tails = draw(
                st.lists(
                    st.sampled_from(["", ".0", ".a", ".9"]), min_size=len(refs), max_size=len(refs)
                )
            )
            value = "'" + "".join(f"${{k{j}{t}}}" for j, t in zip(refs, tails, strict=True)) + "'"
        else:
            value = "{a: *k" + str(draw(st.integers(0, i - 1))) + ", b: [*k0, *k0]}"
        lines.append(f"k{i}: &k{i} {value}")
    text = "\n".join(lines) + "\n"
    mutations = draw(st.lists(MUTATION, max_size=2))
    return _mutate(text.encode(), mutations).decode("utf-8", "replace")


def check_yaml(text):
    t0 = time.perf_counter()
    try:
        cfg = YamlConfig.from_text(text)
        for key in list(cfg.tree)[:12]:
            try:
                cfg.get(str(key))
                event("resolved a key")
            except ConversionError:
                event("refused a key")
    except ConversionError:
        event("refused the text")
    assert time.perf_counter() - t0 < TIME_LIMIT


test_yaml, test_yaml_long = _both(lambda s: s(given(yaml_texts())(check_yaml)))
