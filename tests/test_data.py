"""Training data: captioned audio, the resumable code cache with reported skips, seeded batches."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from audiogen_jax import audio, data
from audiogen_jax.presets import build_tiny_random

SEG = 0.2  # seconds: 3200 samples, 10 codec frames of the tiny model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from audiogen_jax import t5
    from audiogen_jax.encodec import EncodecModel

    d = build_tiny_random(tmp_path_factory.mktemp("tiny") / "model")
    return d, EncodecModel.from_pretrained(d), t5.T5Conditioner.from_pretrained(d)


def write_audio(path, seconds, sr=8000, channels=2, seed=0):
    rng = np.random.default_rng(seed)
    wav = 0.1 * rng.standard_normal((int(seconds * sr), channels)).astype(np.float32)
    sf.write(str(path), wav, sr)
    return wav


def make_folder(root, n=3):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_audio(root / f"s{i}.wav", 0.45 + 0.2 * i, seed=i)
        (root / f"s{i}.txt").write_text(f"sound number {i}" + " loud" * i + "\n")
    return root


def test_find_examples_folder_and_bad_input(tmp_path):
    root = make_folder(tmp_path / "d")
    sub = root / "sub"
    sub.mkdir()
    write_audio(sub / "nocap.flac", 0.5)
    write_audio(sub / "empty.wav", 0.5)
    (sub / "empty.txt").write_text("  \n")
    examples, skipped = data.find_examples(root)
    assert [os.path.basename(e.path) for e in examples] == ["s0.wav", "s1.wav", "s2.wav"]
    assert examples[1].description == "sound number 1 loud"
    reasons = {os.path.basename(p): r for p, r in skipped}
    assert "no description" in reasons["nocap.flac"] and "empty" in reasons["empty.wav"]

    (tmp_path / "void").mkdir()
    with pytest.raises(data.DataError, match="no audio files"):
        data.find_examples(tmp_path / "void")
    with pytest.raises(data.DataError, match="no such folder"):
        data.find_examples(tmp_path / "missing")
    with pytest.raises(data.DataError, match="none of the 1 audio files has a caption"):
        data.find_examples(_only(sub, "nocap.flac"))


def _only(folder, name):
    d = folder.parent / ("only_" + name)
    d.mkdir()
    os.link(folder / name, d / name)
    return d


def test_find_examples_audiocraft_manifest(tmp_path):
    root = tmp_path / "ac"
    (root / "audio").mkdir(parents=True)
    lines = []
    for i in range(2):
        write_audio(root / "audio" / f"a{i}.wav", 0.5, seed=i)
        (root / "audio" / f"a{i}.json").write_text(json.dumps({"description": f"clip {i}"}))
        lines.append(json.dumps({"path": f"audio/a{i}.wav", "duration": 0.5, "sample_rate": 8000}))
    write_audio(root / "audio" / "a2.wav", 0.5)
    lines.append(json.dumps({"path": str(root / "audio" / "a2.wav")}))  # absolute, no .json
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    for target in (root, root / "data.jsonl"):
        examples, skipped = data.find_examples(target)
        assert [e.description for e in examples] == ["clip 0", "clip 1"]
        assert len(skipped) == 1 and skipped[0][0].endswith("a2.wav")
    (root / "bad.jsonl").write_text('{"nopath": 1}\n')
    with pytest.raises(data.DataError, match="bad.jsonl:1"):
        data.find_examples(root / "bad.jsonl")


def test_cache_segments_resume_and_skips(model, tmp_path, monkeypatch):
    model_dir, codec, conditioner = model
    root = make_folder(tmp_path / "d")
    (root / "broken.wav").write_bytes(b"RIFF not really a wave file")
    (root / "broken.txt").write_text("noise")
    write_audio(root / "short.wav", 0.1)
    (root / "short.txt").write_text("too short")
    examples, _ = data.find_examples(root)
    cache = str(tmp_path / "cache")
    kw = dict(codec=codec, conditioner=conditioner, model_dir=model_dir, segment_seconds=SEG)
    keys, skipped = data.prepare_cache(examples, cache, progress=False, **kw)
    reasons = {os.path.basename(p): r for p, r in skipped}
    assert sorted(reasons) == ["broken.wav", "short.wav"]
    assert "cannot be read as audio" in reasons["broken.wav"] and "shorter" in reasons["short.wav"]
    assert len(keys) == 3

    ds = data.CodeDataset(cache, keys)
    # 0.45 s, 0.65 s, 0.85 s at 16 kHz: 2 + 3 + 4 whole 0.2 s segments, 10 frames each
    assert ds.codes_NKT.shape == (9, 4, 10)
    # segment 1 of file 2 is EnCodec's codes of samples [3200, 6400) of the resampled mono audio
    wav, sr = sf.read(str(root / "s2.wav"), dtype="float32", always_2d=True)
    mono = np.asarray(audio.convert_audio(wav.T, sr, 16000, 1))
    want = np.asarray(codec.encode(mono[None, :, 3200:6400]))
    np.testing.assert_array_equal(ds.codes_NKT[5 + 1], want[0])
    assert len(ds.texts) == 3 and ds.texts[2].shape[1] == conditioner.config.d_model

    # resumable: a second run encodes nothing
    calls = []
    real = data.read_segments
    monkeypatch.setattr(data, "read_segments", lambda *a: (calls.append(a), real(*a))[1])
    keys2, _ = data.prepare_cache(examples, cache, progress=False, **kw)
    assert keys2 == keys and [os.path.basename(c[0]) for c in calls] == ["broken.wav", "short.wav"]
    # ...unless a file changed
    write_audio(root / "s0.wav", 0.45, seed=9)
    data.prepare_cache(examples, cache, progress=False, **kw)
    assert "s0.wav" in [os.path.basename(c[0]) for c in calls]
    with pytest.raises(data.DataError, match="other settings .*segment_samples"):
        data.prepare_cache(examples, cache, progress=False, **{**kw, "segment_seconds": 0.4})
    assert not [f for f in os.listdir(os.path.join(cache, "items")) if "partial" in f]


def test_batches_are_seeded_and_cover_each_epoch(model, tmp_path):
    model_dir, codec, conditioner = model
    examples, _ = data.find_examples(make_folder(tmp_path / "d"))
    keys, _ = data.prepare_cache(
        examples,
        str(tmp_path / "c"),
        codec=codec,
        conditioner=conditioner,
        model_dir=model_dir,
        segment_seconds=SEG,
        progress=False,
    )
    ds = data.CodeDataset(str(tmp_path / "c"), keys)
    N = len(ds)
    stream = np.concatenate([ds.indices(s, 3, seed=0) for s in range(N)])  # 3 epochs of 9
    for e in range(3):
        assert sorted(stream[e * N : (e + 1) * N]) == list(range(N))
    assert not np.array_equal(stream[:N], stream[N : 2 * N])
    other = np.concatenate([ds.indices(s, 3, seed=1) for s in range(3)])
    assert not np.array_equal(stream[:N], other)
    np.testing.assert_array_equal(ds.indices(4, 3, seed=0), stream[12:15])  # pure in (seed, step)
    b = ds.batch(2, 4, seed=0)
    idx = ds.indices(2, 4, seed=0)
    np.testing.assert_array_equal(b.codes_BKT, ds.codes_NKT[idx])
    lengths = [len(ds.texts[ds.text_of_N[i]]) for i in idx]
    assert b.text_BLC.shape[1] == max(lengths) and list(b.text_mask_BL.sum(1)) == lengths
    for r, n in enumerate(lengths):
        assert np.all(b.text_BLC[r, n:] == 0)
