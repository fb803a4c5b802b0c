"""The `AudioGen` API: loading (directory, tiny-random, hub id with the conversion cache, offline
and corrupt checkpoints), settings validation, output shapes, seeds, continuation, and bad input."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from audiogen_jax import audiogen as api
from audiogen_jax import checkpoint, hub, lm_params
from audiogen_jax.audiogen import AudioGen
from audiogen_jax.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    m = AudioGen.from_pretrained("tiny-random", cache_dir=str(tmp_path_factory.mktemp("cache")))
    m.set_generation_params(duration=1.0)
    return m


def test_properties_and_output(model):
    assert (model.sample_rate, model.frame_rate, model.max_duration) == (16000, 50.0, 10.0)
    wav, codes = model.generate(["dog barking", "a cat"], seed=0, return_tokens=True)
    assert wav.shape == (2, 1, 16000) and wav.dtype == np.float32 and np.all(np.isfinite(wav))
    assert codes.shape == (2, 4, 50)
    again = model.generate(["dog barking", "a cat"], seed=0)
    np.testing.assert_array_equal(again, wav)
    other = model.generate(["dog barking", "a cat"], seed=1)
    assert not np.array_equal(other, wav)
    uncond = model.generate_unconditional(3, seed=0)
    assert uncond.shape == (3, 1, 16000)


def test_generation_params_defaults_and_overrides(model):
    model.set_generation_params(duration=1.0)
    p = model.params
    # From the checkpoint's config (tiny-random scales top_k to its 32-code books).
    assert (p.use_sampling, p.top_k, p.top_p, p.temperature, p.cfg_coef) == (True, 8, 0.0, 1.0, 3.0)
    model.set_generation_params(
        duration=2.5, top_k=0, top_p=0.9, temperature=0.7, cfg_coef=1.5, extend_stride=3.0
    )
    assert model.generation_params == dict(
        use_sampling=True,
        temp=0.7,
        top_k=0,
        top_p=0.9,
        cfg_coef=1.5,
        duration=2.5,
        extend_stride=3.0,
    )
    model.set_generation_params(
        duration=1.0, use_sampling=False, temperature=0.0
    )  # greedy: no temperature
    model.set_generation_params(duration=1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"duration": 0.0}, "duration must be > 0"),
        ({"duration": -1.0}, "duration must be > 0"),
        ({"duration": float("nan")}, "duration must be finite"),
        ({"duration": float("inf")}, "duration must be finite"),
        ({"duration": "5"}, "duration must be a number"),
        ({"duration": 0.001}, "shorter than one frame"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"top_k": 33}, "top_k=33 exceeds the codebook size 32"),
        ({"top_k": 2.5}, "top_k must be an int"),
        ({"top_p": -0.1}, "top_p must be in"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"cfg_coef": float("nan")}, "cfg_coef must be finite"),
        ({"extend_stride": 10.0}, "extend_stride must be in"),
        ({"extend_stride": 0.0}, "extend_stride must be in"),
    ],
)
def test_bad_generation_params(model, kwargs, match):
    before = model.generation_params
    with pytest.raises(ValueError, match=match):
        model.set_generation_params(**{"duration": 1.0, **kwargs})
    assert model.generation_params == before  # nothing half-applied


@pytest.mark.parametrize(
    "descriptions, match",
    [
        ([], "empty"),
        ("dog barking", "single string"),
        (["ok", 3], "description 1 is a int"),
        (["ok", None], "description 1 is a NoneType"),
        (None, "must be a list"),
    ],
)
def test_bad_descriptions(model, descriptions, match):
    with pytest.raises(ValueError, match=match):
        model.generate(descriptions)


def test_bad_counts_and_seeds(model):
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_samples"):
            model.generate_unconditional(n)
    with pytest.raises(ValueError, match="seed must be an int"):
        model.generate(["a"], seed="zero")
    with pytest.raises(ValueError, match=r"seed must be an integer in \[-2\*\*63, 2\*\*64\)"):
        model.generate(["a"], seed=2**64)


def test_seeds_beyond_32_bits_and_non_finite_logits(model):
    # The same batch and duration as test_properties_and_output: the compiled program is reused.
    model.set_generation_params(duration=1.0)
    texts = ["dog barking", "a cat"]
    wavs = [model.generate(texts, seed=s) for s in (0, 2**32, -(2**63))]
    assert not np.array_equal(wavs[0], wavs[1]) and not np.array_equal(wavs[0], wavs[2])
    assert not np.array_equal(wavs[1], wavs[2])
    # Guidance this strong overflows float32: reported, not turned into codes.
    model.set_generation_params(duration=1.0, cfg_coef=3e38)
    with pytest.raises(FloatingPointError, match="NaN or infinite logits"):
        model.generate(texts, seed=0)
    model.set_generation_params(duration=1.0)


def test_continuation(model):
    model.set_generation_params(duration=1.0)
    rng = np.random.default_rng(0)
    prompt = (0.1 * rng.standard_normal((1, 8000))).astype(
        np.float32
    )  # 0.5 s at 16 kHz, mono [C, W]
    wav, codes = model.generate_continuation(
        prompt, 16000, ["footsteps"], seed=0, return_tokens=True
    )
    assert wav.shape == (1, 1, 16000) and codes.shape == (1, 4, 50)
    np.testing.assert_array_equal(
        codes[..., :25], np.asarray(model.compression_model.encode(prompt[None]))
    )
    # Another rate is resampled, stereo is mixed down, and descriptions default to unconditional.
    stereo = (0.1 * rng.standard_normal((1, 2, 11025))).astype(np.float32)  # 0.5 s at 22.05 kHz
    wav = model.generate_continuation(stereo, 22050, seed=0)
    assert wav.shape == (1, 1, 16000)


@pytest.mark.parametrize(
    "prompt, rate, descriptions, match",
    [
        (np.zeros((1, 16000), np.float32), 16000, None, "shorter than the duration"),
        (np.zeros((1, 32000), np.float32), 32000, None, None),  # 1 s at 32 kHz: too long too
        (np.zeros((3, 4000), np.float32), 16000, None, "3 channels"),
        (np.zeros((4000, 1), np.float32), 16000, None, "transpose"),
        (np.zeros((4000,), np.float32), 16000, None, r"\[C, W\] or \[B, C, W\]"),
        (np.zeros((1, 4000), np.int16), 16000, None, "float audio"),
        (np.full((1, 4000), np.nan, np.float32), 16000, None, "finite"),
        (np.zeros((1, 4000), np.float32), 0, None, "prompt_sample_rate"),
        (np.zeros((2, 1, 4000), np.float32), 16000, ["only one"], "1 descriptions for 2 prompts"),
    ],
)
def test_bad_continuation(model, prompt, rate, descriptions, match):
    model.set_generation_params(duration=1.0)
    with pytest.raises(ValueError, match=match or "shorter than the duration"):
        model.generate_continuation(prompt, rate, descriptions)


def test_loading_errors(tmp_path):
    with pytest.raises(CheckpointError, match="neither a converted directory"):
        AudioGen.from_pretrained(str(tmp_path / "nowhere"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        AudioGen.from_pretrained(str(tmp_path / "file.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="convert_weights.py"):
        AudioGen.from_pretrained(str(tmp_path / "empty"))


def test_corrupt_converted_directory(model, tmp_path):
    directory = tmp_path / "m"
    shutil.copytree(model.directory, directory)
    with open(directory / "lm.safetensors", "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match="lm.safetensors has 100 bytes, the manifest says"):
        AudioGen.from_pretrained(str(directory))
    # Sealed again (as if the manifest had been rewritten): the reader's own check still refuses.
    checkpoint.write_manifest(directory)
    with pytest.raises(CheckpointError, match="incomplete or corrupt"):
        AudioGen.from_pretrained(str(directory))


# --------------------------------------------------------------------------------------------------
# The hub path, with no network: huggingface_hub serves locally written release-format files.


def _names(directory) -> list[str]:
    """A directory's entries, without the lock files writers leave beside their outputs."""
    return sorted(n for n in os.listdir(directory) if not n.endswith(".lock"))


@pytest.fixture
def hub_reachable(monkeypatch):
    """The hub counts as reachable: FakeHub answers, whatever this machine's network."""
    monkeypatch.setattr(hub, "unreachable_reason", lambda *a, **k: None)


class FakeHub:
    """Stands in for `huggingface_hub.hf_hub_download`: repo id -> a local directory of files."""

    def __init__(self, repos: dict[str, str]):
        self.repos, self.calls = repos, []

    def __call__(self, repo_id, filename, **kwargs):
        from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

        self.calls.append((repo_id, filename))
        if repo_id not in self.repos:
            raise LocalEntryNotFoundError("offline: cannot reach huggingface.co")
        path = os.path.join(self.repos[repo_id], filename)
        if not os.path.isfile(path):
            import httpx2

            url = f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
            response = httpx2.Response(404, request=httpx2.Request("GET", url))
            raise RemoteEntryNotFoundError(f"{filename} not in {repo_id}", response=response)
        return path


@pytest.fixture(scope="module")
def release_files(reference, tmp_path_factory):
    import refmodels

    bundle = refmodels.Bundle.tiny()
    files = refmodels.write_checkpoints(tmp_path_factory.mktemp("release"), bundle)
    return files, bundle.t5_name


@pytest.mark.parity
def test_hub_download_converts_once_then_uses_the_cache(
    release_files, tmp_path, monkeypatch, hub_reachable
):
    import huggingface_hub

    files, t5_name = release_files
    hub = FakeHub({api.DEFAULT_MODEL: os.path.dirname(files["lm"]), t5_name: files["t5"]})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    conversions = []
    real = lm_params.convert_lm
    monkeypatch.setattr(
        lm_params, "convert_lm", lambda *a, **k: (conversions.append(a), real(*a, **k))[1]
    )
    monkeypatch.setenv("AUDIOGEN_JAX_CACHE", str(tmp_path / "cache"))

    first = AudioGen.from_pretrained(api.DEFAULT_MODEL)
    cached = tmp_path / "cache" / "facebook--audiogen-medium"
    assert os.path.isfile(cached / "config.json") and len(conversions) == 1
    assert (api.DEFAULT_MODEL, api.LM_FILE) in hub.calls and (t5_name, "spiece.model") in hub.calls
    assert _names(tmp_path / "cache") == ["facebook--audiogen-medium"]  # no partial left

    hub.calls.clear()
    second = AudioGen.from_pretrained(api.DEFAULT_MODEL)
    assert hub.calls == [] and len(conversions) == 1  # the cache, no network, no second conversion
    first.set_generation_params(duration=0.2, use_sampling=False)
    second.set_generation_params(duration=0.2, use_sampling=False)
    np.testing.assert_array_equal(first.generate(["a"], seed=0), second.generate(["a"], seed=0))

    # An entry written by an older converted format is converted again, by itself.
    cfg = checkpoint.read_config(cached)
    checkpoint_json = cached / checkpoint.CONFIG_FILE
    checkpoint_json.write_text(json.dumps({**cfg, "version": checkpoint.VERSION - 1}))
    AudioGen.from_pretrained(api.DEFAULT_MODEL)
    assert len(conversions) == 2 and checkpoint.read_config(cached)["version"] == checkpoint.VERSION


@pytest.mark.parity
def test_hub_offline_and_corrupt(release_files, tmp_path, monkeypatch):
    import huggingface_hub

    files, t5_name = release_files
    monkeypatch.setenv("AUDIOGEN_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", FakeHub({}))
    monkeypatch.setattr(hub, "unreachable_reason", lambda *a, **k: "no network in this test")
    with pytest.raises(CheckpointError, match="could not download .*offline.*audiogen-jax convert"):
        AudioGen.from_pretrained(api.DEFAULT_MODEL)
    monkeypatch.setattr(hub, "unreachable_reason", lambda *a, **k: None)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    with open(files["lm"], "rb") as f:
        (corrupt / api.LM_FILE).write_bytes(f.read()[:5000])
    shutil.copy(files["compression"], corrupt / api.COMPRESSION_FILE)
    monkeypatch.setattr(
        huggingface_hub,
        "hf_hub_download",
        FakeHub({api.DEFAULT_MODEL: str(corrupt), t5_name: files["t5"]}),
    )
    with pytest.raises(CheckpointError, match="(?s)could not be converted.*corrupt download"):
        AudioGen.from_pretrained(api.DEFAULT_MODEL)
    assert not os.path.exists(tmp_path / "cache") or _names(tmp_path / "cache") == []
