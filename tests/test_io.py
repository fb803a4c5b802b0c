"""The file formats (`audiogen_jax/io/`): torch-free unpickling, lazy YAML interpolation, mapping
checks, safetensors reading and streaming writes."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from audiogen_jax.io import safetensors
from audiogen_jax.io.audiocraft import YamlConfig, load_audiocraft_package
from audiogen_jax.io.errors import ConversionError, FormatError
from audiogen_jax.io.rules import Rule, as_numpy, convert_state, plan_conversion
from audiogen_jax.io.torch_pickle import load_torch_checkpoint


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
