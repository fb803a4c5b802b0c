"""The file formats (`audiogen_jax/io/`): torch-free unpickling, lazy YAML interpolation, mapping
checks, safetensors reading and streaming writes."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
from torch_format import Tensor, archive_bytes, storage_of

from audiogen_jax.io import safetensors
from audiogen_jax.io.audiocraft import YamlConfig, load_audiocraft_package
from audiogen_jax.io.errors import ConversionError, FormatError
from audiogen_jax.io.rules import Rule, as_numpy, convert_state, plan_conversion
from audiogen_jax.io.torch_pickle import MAX_PICKLE_BYTES, load_torch_checkpoint


@pytest.fixture(scope="module")
def torch(reference):
    import torch

    return torch


@pytest.mark.parity
def test_restricted_unpickler_reads_tensors_like_torch(tmp_path, torch):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    state = {
        "f32": torch.randn(3, 4, generator=g),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "i64": torch.arange(10),
        "view_t": base.t(),  # non-contiguous view sharing a storage
        "view_slice": base[2:4],  # storage offset
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "ckpt.bin"
    torch.save(
        {"best_state": state, "xp.cfg": "a: 1\n", "version": "1.3.0", "exported": True}, path
    )
    pkg = load_audiocraft_package(path, "test")
    assert pkg.cfg.get("a") == 1 and pkg.version == "1.3.0"
    for k, t in state.items():
        got = as_numpy(pkg.state[k])
        want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        assert got.shape == tuple(t.shape), k
        np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=k)


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"best_state": Evil()}))
    with pytest.raises(ConversionError, match="refusing to unpickle global"):
        load_torch_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"hello")
    with pytest.raises(ConversionError):
        load_audiocraft_package(p, "compression")
    with pytest.raises(ConversionError, match="no such file"):
        load_audiocraft_package(tmp_path / "missing.bin", "compression")


@pytest.mark.parity
def test_package_without_best_state(tmp_path, torch):
    p = tmp_path / "plain.bin"
    torch.save({"weight": torch.zeros(2)}, p)
    with pytest.raises(ConversionError, match="best_state"):
        load_audiocraft_package(p, "compression")


def test_yaml_interpolations_resolve_lazily(monkeypatch):
    text = """
sample_rate: 16000
channels: 1
encodec: {sample_rate: '${sample_rate}', causal: false}
seanet: {channels: '${channels}', causal: '${encodec.causal}', ratios: [8, 5, 4, 2]}
name: 'model_${sample_rate}hz'
dora: {dir: '/checkpoint/${oc.env:AUDIOGEN_TEST_UNSET_VAR}/xps'}
"""
    monkeypatch.delenv("AUDIOGEN_TEST_UNSET_VAR", raising=False)
    cfg = YamlConfig.from_text(text)
    assert cfg.get("encodec.sample_rate") == 16000
    assert cfg.get("seanet.channels") == 1
    assert cfg.get("seanet.causal") is False
    assert cfg.get("seanet.ratios") == [8, 5, 4, 2]
    assert cfg.get("name") == "model_16000hz"
    assert cfg.get("missing.key", None) is None
    with pytest.raises(ConversionError, match="no key"):
        cfg.get("missing.key")
    with pytest.raises(ConversionError, match="AUDIOGEN_TEST_UNSET_VAR"):
        cfg.get("dora.dir")


def test_plan_lists_every_problem_at_once():
    rules = [
        Rule(r"(\w+)\.weight", r"\1.kernel", lambda s: next(iter(s.values())).T),
        Rule(r"(\w+)\.bias", r"\1.bias"),
    ]
    expected = {"a.kernel": (3, 2), "a.bias": (3,), "b.kernel": (2, 2), "c.kernel": (1, 1)}
    state = {
        "a.weight": np.zeros((2, 3)),
        "a.bias": np.zeros(3),
        "b.weight": np.zeros((5, 5)),  # mis-shaped
        "stray.buffer": np.zeros(1),  # unexpected
        "d.bias": np.zeros(1),  # fills a parameter the config does not have
    }
    with pytest.raises(ConversionError) as e:
        plan_conversion(state, rules, expected)
    msg = str(e.value)
    assert "stray.buffer" in msg and "c.kernel" in msg and "d.bias" in msg
    assert "b.kernel: checkpoint gives (5, 5), config wants (2, 2)" in msg


def test_rule_groups_several_sources_and_splits_one():
    rules = [
        Rule(
            r"(\w+)\.weight_[gv]",
            r"\1.kernel",
            lambda s: (
                s[next(k for k in s if k.endswith("_g"))]
                * s[next(k for k in s if k.endswith("_v"))]
            ),
        ),
        Rule(
            r"(\w+)\.packed",
            (r"\1.q", r"\1.k"),
            lambda s: tuple(np.split(next(iter(s.values())), 2)),
        ),
    ]
    state = {
        "m.weight_g": np.full(2, 2.0),
        "m.weight_v": np.arange(2.0),
        "a.packed": np.arange(4.0),
    }
    plan = plan_conversion(state, rules, {"m.kernel": (2,), "a.q": (2,), "a.k": (2,)})
    out = dict(convert_state(state, plan))
    np.testing.assert_array_equal(out["m.kernel"], [0.0, 2.0])
    np.testing.assert_array_equal(out["a.k"], [2.0, 3.0])


def test_streaming_writer_round_trip_and_no_partial_file(tmp_path):
    from safetensors.numpy import load_file

    specs = {"b": ((2, 3), np.float32), "a": ((4,), np.float16)}
    path = tmp_path / "w.safetensors"
    safetensors.write_file(
        path, iter([("b", np.ones((2, 3))), ("a", np.arange(4))]), specs, metadata={"k": "v"}
    )
    got = load_file(path)
    assert got["b"].dtype == np.float32 and got["a"].dtype == np.float16
    np.testing.assert_array_equal(got["a"], np.arange(4))
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert json.loads(path.read_bytes()[8 : 8 + header_len])["__metadata__"] == {"k": "v"}

    bad = tmp_path / "bad.safetensors"
    with pytest.raises(FormatError, match="never written"):
        safetensors.write_file(bad, iter([("b", np.ones((2, 3)))]), specs)
    assert not bad.exists() and not (tmp_path / "bad.safetensors.partial").exists()


# --------------------------------------------------------------------------------------------------
# Crafted torch archives (tests/torch_format.py writes them byte by byte, without torch).


def _archive(tmp_path, tensors, storages, name="ckpt.bin", **kw):
    obj = {"best_state": tensors, "xp.cfg": "a: 1\n", "version": "1.3.0", "exported": True}
    path = tmp_path / name
    path.write_bytes(archive_bytes(obj, storages, **kw))
    return path


BASE = np.arange(30, dtype=np.float32)
VIEWS = {
    "full": (Tensor("0", 0, (5, 6), (6, 1)), BASE.reshape(5, 6)),
    "transposed": (Tensor("0", 0, (6, 5), (1, 6)), BASE.reshape(5, 6).T),
    "slice": (Tensor("0", 12, (2, 6), (6, 1)), BASE[12:24].reshape(2, 6)),
    "every_other": (
        Tensor("0", 1, (3, 5), (10, 2)),
        BASE[1 + 10 * np.arange(3)[:, None] + 2 * np.arange(5)],
    ),
    "scalar": (Tensor("0", 7, (), ()), BASE[7]),
    "empty": (Tensor("0", 0, (0, 3), (3, 1)), np.zeros((0, 3), np.float32)),
}


def test_crafted_archive_reads_views(tmp_path):
    path = _archive(tmp_path, {k: t for k, (t, _) in VIEWS.items()}, {"0": storage_of(BASE)})
    pkg = load_audiocraft_package(path, "test")
    for k, (_, want) in VIEWS.items():
        np.testing.assert_array_equal(as_numpy(pkg.state[k]), want, err_msg=k)


@pytest.mark.parity
def test_crafted_archive_is_what_torch_writes(tmp_path, torch):
    """The byte-level writer the crafted and fuzz tests use is faithful: torch loads its archives
    to the same tensors."""
    path = _archive(tmp_path, {k: t for k, (t, _) in VIEWS.items()}, {"0": storage_of(BASE)})
    theirs = torch.load(path, weights_only=True)["best_state"]
    ours = load_audiocraft_package(path, "test").state
    for k in VIEWS:
        np.testing.assert_array_equal(as_numpy(ours[k]), theirs[k].numpy(), err_msg=k)


F4 = storage_of(np.arange(4, dtype=np.float32))
REFUSED = {
    # name: (tensor, storages, archive options, message)
    "strides past storage": (
        Tensor("0", 0, (128, 32), (1, 4096)),
        {"0": F4},
        {},
        # the last element is (128 - 1) * 1 + (32 - 1) * 4096
        r"tensor best_state\.w: .* reach element 127103, past its storage of 4 elements",
    ),
    "offset past storage": (Tensor("0", 4, (1,), (1,)), {"0": F4}, {}, "past its storage"),
    "negative offset": (Tensor("0", -1, (2,), (1,)), {"0": F4}, {}, "offset -1 is not"),
    "negative stride": (Tensor("0", 3, (2,), (-1,)), {"0": F4}, {}, r"stride \(-1,\) is not"),
    "negative size": (Tensor("0", 0, (-2,), (1,)), {"0": F4}, {}, r"size \(-2,\) is not"),
    "float size": (Tensor("0", 0, (2.0,), (1,)), {"0": F4}, {}, "not a tuple of non-negative"),
    "bool offset": (Tensor("0", True, (2,), (1,)), {"0": F4}, {}, "offset"),
    "rank mismatch": (Tensor("0", 0, (2, 2), (1,)), {"0": F4}, {}, "different lengths"),
    "huge size": (Tensor("0", 0, (2**70,), (1,)), {"0": F4}, {}, "71-bit integer"),
    "expanded view": (Tensor("0", 0, (10**6,), (0,)), {"0": F4}, {}, "overlapping strides"),
    "storage size mismatch": (
        Tensor("0", 0, (2,), (1,)),
        {"0": dataclasses.replace(F4, numel=5)},
        {},
        "holds 16 bytes, but 5 float32 elements need 20",
    ),
    "missing member": (
        Tensor("0", 0, (2,), (1,)),
        {"0": F4},
        {"omit": ("0",)},
        "no archive member",
    ),
    "compressed storage": (
        Tensor("0", 0, (2,), (1,)),
        {"0": F4},
        {"compress_storages": True},
        "compressed",
    ),
    "unknown storage type": (
        Tensor("0", 0, (2,), (1,)),
        {"0": dataclasses.replace(F4, type_name="QInt8Storage")},
        {},
        "refusing to unpickle global torch.QInt8Storage",
    ),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_crafted_tensors_refused_before_any_read(tmp_path, case):
    tensor, storages, options, message = REFUSED[case]
    path = _archive(tmp_path, {"w": tensor}, storages, **options)
    with pytest.raises(ConversionError, match=message):
        load_audiocraft_package(path, "test")


def test_zip_bomb_data_pkl_refused_within_bounded_memory(tmp_path):
    bomb = pickle.PROTO + b"\x02" + pickle.BINUNICODE + (2**30).to_bytes(4, "little")
    bomb += b"a" * (MAX_PICKLE_BYTES + 2**20)  # deflates to a few KB
    path = _archive(tmp_path, {}, {}, data_pkl=bomb, compress_pickle=True)
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match="expands to more than"):
            load_torch_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_PICKLE_BYTES, peak


@pytest.mark.parametrize(
    "opcodes",
    [
        # a memo of 2^24 entries, 256 MB from 9 bytes (2^28 would take 4 GB)
        b"N" + pickle.LONG_BINPUT + (2**24 - 1).to_bytes(4, "little"),
        pickle.BINBYTES8 + (2**40).to_bytes(8, "little") + b"abc",  # a 1 TB buffer
    ],
    ids=["memo bomb", "length past the data"],
)
def test_pickle_allocation_bombs_refused_before_unpickling(tmp_path, opcodes):
    path = _archive(tmp_path, {}, {}, data_pkl=pickle.PROTO + b"\x04" + opcodes + pickle.STOP)
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match="not a valid checkpoint pickle"):
            load_torch_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak


def test_garbage_and_bit_flipped_archives(tmp_path):
    rng = np.random.default_rng(0)
    garbage = rng.bytes(2000)
    path = _archive(tmp_path, {}, {}, data_pkl=b"\x80\x02" + garbage)
    with pytest.raises(ConversionError, match="data.pkl is not a valid checkpoint pickle"):
        load_torch_checkpoint(path)
    values = np.arange(64, dtype=np.float32) + 0.5
    path = _archive(tmp_path, {"w": Tensor("0", 0, (64,), (1,))}, {"0": storage_of(values)})
    raw = bytearray(path.read_bytes())
    at = bytes(raw).index(values.tobytes())
    raw[at + 10] ^= 0x40  # inside the storage: the member's CRC no longer matches
    path.write_bytes(bytes(raw))
    pkg = load_audiocraft_package(path, "test")
    with pytest.raises(ConversionError, match=r"storage 0 is unreadable \(Bad CRC-32"):
        as_numpy(pkg.state["w"])


def test_package_structure_refused(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(archive_bytes({"best_state": [1, 2], "xp.cfg": "a: 1\n"}, {}))
    with pytest.raises(ConversionError, match="not a dict of named tensors"):
        load_audiocraft_package(path, "test")
    path.write_bytes(archive_bytes({"best_state": {"w": 3}, "xp.cfg": "a: 1\n"}, {}))
    with pytest.raises(ConversionError, match="not tensors: w"):
        load_audiocraft_package(path, "test")


# --------------------------------------------------------------------------------------------------
# Crafted safetensors files.


def _safetensors(path, header, data: bytes = b"", length: int | None = None):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
ST_REFUSED = {
    "header longer than the file": (
        {"w": F32},
        bytes(8),
        2**62,
        "header length 4611686018427387904",
    ),
    "offsets past the data": ({"w": {**F32, "data_offsets": [8, 16]}}, bytes(8), None, "gap"),
    "overlap": ({"a": F32, "b": F32}, bytes(16), None, "gap or overlap"),
    "data left over": ({"w": F32}, bytes(12), None, "cover 8 bytes of a 12-byte data section"),
    "truncated": ({"w": F32}, bytes(4), None, "cover 8 bytes of a 4-byte"),
    "unknown dtype": ({"w": {**F32, "dtype": "F8_E4M3"}}, bytes(8), None, "unknown dtype"),
    "shape vs bytes": ({"w": {**F32, "shape": [3]}}, bytes(8), None, "need 12"),
    "float shape": ({"w": {**F32, "shape": [2.0]}}, bytes(8), None, "shape is not"),
    "negative offset": ({"w": {**F32, "data_offsets": [-8, 0]}}, bytes(8), None, "data_offsets"),
    "missing field": ({"w": {"dtype": "F32", "shape": [2]}}, bytes(8), None, "exactly dtype"),
    "metadata not strings": (
        {"w": F32, "__metadata__": {"k": 1}},
        bytes(8),
        None,
        "map strings to strings",
    ),
    "not an object": ([1, 2], b"", None, "not a JSON object"),
}


@pytest.mark.parametrize("case", ST_REFUSED, ids=list(ST_REFUSED))
def test_crafted_safetensors_refused(tmp_path, case):
    header, data, length, message = ST_REFUSED[case]
    path = _safetensors(tmp_path / "x.safetensors", header, data, length)
    with pytest.raises(FormatError, match=message):
        safetensors.SafetensorsFile(path)


def test_safetensors_duplicate_key_and_bad_json(tmp_path):
    path = tmp_path / "x.safetensors"
    blob = b'{"w": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, "w": {}}'
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)
    with pytest.raises(FormatError, match="a key appears twice"):
        safetensors.SafetensorsFile(path)
    path.write_bytes(struct.pack("<Q", 5) + b"[[[[[")
    with pytest.raises(FormatError, match="bad header"):
        safetensors.SafetensorsFile(path)


def test_safetensors_reader_reads_what_the_library_writes(tmp_path):
    from safetensors.numpy import save_file

    arrays = {"a": np.arange(6, dtype=np.int64).reshape(2, 3), "b": np.ones(0, np.float16)}
    save_file(arrays, tmp_path / "lib.safetensors", metadata={"k": "v"})
    f = safetensors.SafetensorsFile(tmp_path / "lib.safetensors")
    assert f.metadata == {"k": "v"} and set(f) == {"a", "b"}
    for k, want in arrays.items():
        got = f.read(k)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------------------
# Bounded xp.cfg parsing.


def _alias_bomb(levels: int) -> str:
    lines = ['l0: &l0 ["xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_refused_quickly():
    text = _alias_bomb(9)  # 10^8 copies of a 6-string list, from under 1 KB
    assert len(text) < 1000
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match="expands to more than"):
            YamlConfig.from_text(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5 and peak < 20 * 2**20, peak
    # a small expansion is fine: aliases are ordinary YAML
    assert YamlConfig.from_text(_alias_bomb(2)).get("l1.9.5") == "xxxxxxxx"


def test_yaml_recursion_interpolation_and_size_limits():
    with pytest.raises(ConversionError, match="contains itself"):
        YamlConfig.from_text("a: &a [1, *a]\n")
    # interpolations: 4^12 characters from 12 short lines
    lines = ["s0: abcd"] + [
        f"s{i}: '{''.join(['${s' + str(i - 1) + '}'] * 4)}'" for i in range(1, 13)
    ]
    cfg = YamlConfig.from_text("\n".join(lines))
    assert cfg.get("s3") == "abcd" * 64
    t0 = time.perf_counter()
    with pytest.raises(ConversionError, match="more than .* characters"):
        cfg.get("s12")
    assert time.perf_counter() - t0 < 5
    deep = YamlConfig.from_text(
        "\n".join(["d0: 1"] + [f"d{i}: '${{d{i - 1}}}'" for i in range(1, 30)])
    )
    assert deep.get("d10") == 1
    with pytest.raises(ConversionError, match="nest deeper than 20"):
        deep.get("d29")
    with pytest.raises(ConversionError, match="refusing configs over"):
        YamlConfig.from_text("a: " + "x" * 2**20)
    with pytest.raises(ConversionError, match="400-bit integer"):
        YamlConfig.from_text("a: 0x" + "f" * 100)
    with pytest.raises(ConversionError, match="not valid YAML"):
        YamlConfig.from_text("a: [1, 2")
