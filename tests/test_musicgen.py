"""The MusicGen family through the AudioGen code: loading by hub id, defaults, stereo, and parity.

Two reference models are built with random weights at MusicGen's shapes and saved in the release
formats (`tests/refmodels.py`): a MusicGen-small-shaped one (32 kHz EnCodec, t5-base widths with 2
layers, LM D 1024 / 16 heads with 2 of its 24 layers, K 4) and its stereo twin (the same codec run
on each channel, K 8 interleaved streams with delays [0, 0, 1, 1, 2, 2, 3, 3]). Each is downloaded
by hub id from a fake hub serving those files (`facebook/musicgen-small`,
`facebook/musicgen-stereo-small`, and `t5-base`), converted once into the cache by
`MusicGen.from_pretrained`, and compared with audiocraft's own `MusicGen` on the same weights (its
stereo codec wrapped in `InterleaveStereoCompressionModel`, as `BaseGenModel` does for a stereo
checkpoint): codec codes exactly, decoded audio, the T5 conditioner, the LM teacher-forced and
step by step, greedy generation token for token, and (stereo) continuation of a stereo prompt.
Tolerances are the measured values in docs/parity.md ("MusicGen") with headroom.
"""

from __future__ import annotations

import os
import types

import numpy as np
import pytest
import soundfile
from test_audiogen_api import FakeHub
from test_lm import conditions, delayed, our_streaming, reference_logits, rel_err, xp_cfg_yaml

from audiogen_jax import checkpoint, cli, lm_params, stereo, t5
from audiogen_jax import lm as lm_lib
from audiogen_jax.audiogen import AudioGen, MusicGen
from audiogen_jax.config import LMConfig
from audiogen_jax.io.audiocraft import YamlConfig

# Measured (docs/parity.md, "MusicGen"); each tolerance is a few times the largest measurement.
WAV_ATOL = 2e-6  # decoded audio from the same codes
CONDITION_RTOL = 1e-5  # T5 + output_proj, max |diff| / max |ref|
LM_RTOL = 5e-6  # LM logits, teacher-forced and step by step, max |diff| / max |ref|
DESCRIPTIONS = [
    "lo-fi piano",
    "an energetic rock song with electric guitars, a steady drum beat and a bass line",
    "jazz",
]
KINDS = {
    "mono": ("facebook/musicgen-small", False),
    "stereo": ("facebook/musicgen-stereo-small", True),
}
# The stereo release's compression_state_dict.bin only names its codec, a transformers EnCodec on
# the hub (audiocraft's `export_pretrained_compression_model`), as the stereo checkpoints package
# facebook/encodec_32khz; the mono release holds an audiocraft EnCodec package.
CODEC_ID = "facebook/encodec_32khz"


def _bundle(stereo_: bool):
    import refmodels

    return refmodels.Bundle.musicgen("small", stereo=stereo_, num_layers=2)


_RELEASES: dict[str, dict] = {}


@pytest.fixture(scope="module", params=list(KINDS))
def pair(request, reference, tmp_path_factory):
    """Release files -> fake hub -> `MusicGen.from_pretrained(hub id)`; the reference MusicGen."""
    import huggingface_hub
    import refmodels

    name, is_stereo = KINDS[request.param]
    bundle = _bundle(is_stereo)
    root = tmp_path_factory.mktemp(request.param)
    # The stereo checkpoints share the mono codec and t5-base: written once, for both.
    # Codebooks seeded from 1 s of probe audio (50 frames x 5 signals): a quarter of the default's
    # cost at 32 kHz; the smallest top-2 gap of the codes compared is printed below.
    files = refmodels.write_checkpoints(
        root / "release",
        bundle,
        codec_and_t5_from=next(iter(_RELEASES.values()), None),
        probe_seconds=1.0,
        pretrained_codec=CODEC_ID if is_stereo else None,
    )
    _RELEASES[request.param] = files
    repos = {name: os.path.dirname(files["lm"]), bundle.t5_name: files["t5"]}
    if is_stereo:
        repos[CODEC_ID] = files["pretrained_codec"]
    hub = FakeHub(repos)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub, "hf_hub_download", hub)
        ours = MusicGen.from_pretrained(name, cache_dir=str(root / "cache"))
    return types.SimpleNamespace(
        kind=request.param,
        name=name,
        stereo=is_stereo,
        bundle=bundle,
        files=files,
        hub_calls=list(hub.calls),
        cache=root / "cache",
        ours=ours,
        ref=refmodels.reference_audiogen(files, bundle),
    )


def _signal(channels: int, seconds: float, seed: int) -> np.ndarray:
    """[2, C, W] test audio at 32 kHz; in stereo the channels differ (noise vs a chord)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 32000)
    t = np.arange(n) / 32000
    chord = sum(0.3 * np.sin(2 * np.pi * f * t + f) for f in (220.0, 330.0, 1000.0))
    rows = [0.1 * rng.standard_normal(n), chord] if channels == 2 else [chord]
    batch = [rows, rows[::-1]]  # two items, channels swapped in the second
    return np.asarray(batch, np.float32)


def _reference_generate(fn, *args, **kwargs):
    import torch

    with torch.no_grad():
        wav, codes = fn(*args, return_tokens=True, **kwargs)
    return wav.numpy(), codes.numpy()


# --------------------------------------------------------------------------------------------------
# Loading and defaults.


@pytest.mark.parity
def test_hub_id_converts_once_with_the_reference_defaults(pair, tmp_path):
    import huggingface_hub

    ours, ref = pair.ours, pair.ref
    assert (pair.name, "state_dict.bin") in pair.hub_calls
    assert (pair.name, "compression_state_dict.bin") in pair.hub_calls
    assert ("t5-base", "spiece.model") in pair.hub_calls  # the T5 the LM's config names
    assert ((CODEC_ID, "config.json") in pair.hub_calls) == pair.stereo  # the codec pointed to
    assert LMConfig.from_dict(checkpoint.read_config(ours.directory, "lm")) == pair.bundle.lm
    # The reference MusicGen's class defaults, read from the reference object itself.
    assert (ours.duration, ours.extend_stride, ours.max_duration) == (
        ref.duration,
        ref.extend_stride,
        ref.max_duration,
    )
    assert (ours.sample_rate, ours.frame_rate, ours.audio_channels) == (
        ref.sample_rate,
        ref.frame_rate,
        ref.audio_channels,
    )
    assert ours.audio_channels == (2 if pair.stereo else 1)
    theirs = {k: v for k, v in ref.generation_params.items() if k != "two_step_cfg"}
    assert {k: ours.generation_params[k] for k in theirs} == theirs
    # Cached: the base class loads it again without the network, with the same defaults.
    with pytest.MonkeyPatch.context() as mp:
        offline = FakeHub({})
        mp.setattr(huggingface_hub, "hf_hub_download", offline)
        again = AudioGen.from_pretrained(pair.name, cache_dir=str(pair.cache))
    assert offline.calls == [] and again.duration == ref.duration
    assert isinstance(again.compression_model, stereo.InterleaveStereoCompressionModel) == (
        pair.stereo
    )


@pytest.mark.parity
@pytest.mark.parametrize("pair", ["stereo"], indirect=True)
def test_pretrained_codec_converts_to_the_same_weights(pair, tmp_path):
    """The transformers EnCodec the stereo release points to, under either weight-norm naming
    (`parametrizations.weight.original0/1` as transformers 5 saves, `weight_g/v` as the hub files
    hold), converts to exactly the weights of the same codec's audiocraft package."""
    from safetensors.numpy import load_file, save_file

    from audiogen_jax.encodec_params import convert_compression

    convert_compression(pair.files["compression_package"], tmp_path / "package")
    want = load_file(str(tmp_path / "package" / "compression.safetensors"))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    hf_dir = pair.files["pretrained_codec"]
    hf_state = load_file(os.path.join(hf_dir, "model.safetensors"))
    renamed = {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in hf_state.items()
    }
    assert renamed.keys() != hf_state.keys()
    save_file(renamed, str(legacy / "model.safetensors"))
    with open(os.path.join(hf_dir, "config.json")) as f:
        (legacy / "config.json").write_text(f.read())
    convert_compression(str(legacy), tmp_path / "legacy_out")
    for got_dir in (pair.ours.directory, tmp_path / "legacy_out"):
        got = load_file(os.path.join(got_dir, "compression.safetensors"))
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert checkpoint.read_config(pair.ours.directory, "compression") == checkpoint.read_config(
        tmp_path / "package", "compression"
    )


# --------------------------------------------------------------------------------------------------
# Components.


@pytest.mark.parity
def test_codec_parity(pair):
    import torch

    ours, ref = pair.ours, pair.ref
    # 15990 samples, not a whole number of frames; 25 frames and 3 items as in the generation tests
    # below, so that they reuse the compiled decoder.
    wav = np.concatenate([_signal(ours.audio_channels, 0.5, seed=0)[:, :, :15990]] * 2)[:3]
    from encodec_reference import top2_gaps

    with torch.no_grad():
        ref_codes = ref.compression_model.encode(torch.from_numpy(wav))[0].numpy()
        ref_wav = ref.compression_model.decode(torch.from_numpy(ref_codes)).numpy()
    # The reference's smallest top-2 distance gap (a diagnostic; its audiocraft codec only).
    gap = np.nan if pair.stereo else top2_gaps(ref.compression_model, wav).min()
    codes = np.asarray(ours.compression_model.encode(wav))
    K = 8 if pair.stereo else 4
    assert codes.shape == ref_codes.shape == (3, K, 25)
    assert np.array_equal(codes, ref_codes), f"codes differ; smallest reference top-2 gap {gap:.2e}"
    decoded = np.asarray(ours.compression_model.decode(ref_codes))
    assert decoded.shape == ref_wav.shape == (3, ours.audio_channels, 25 * 640)
    err = np.abs(decoded - ref_wav).max()
    print(
        f"{pair.kind}: codes identical (smallest top-2 gap {gap:.1e}); decoded max |diff| "
        f"{err:.2e} (peak {np.abs(ref_wav).max():.2f})"
    )
    assert err <= WAV_ATOL


@pytest.mark.parity
def test_t5_conditioner_parity(pair):
    import torch

    texts = DESCRIPTIONS + [None]
    ref_cond = pair.ref.lm.condition_provider.conditioners["description"]
    with torch.no_grad():
        inputs = ref_cond.tokenize(texts)
        ref_emb, ref_mask = (x.numpy() for x in ref_cond(inputs))
    ids, mask = t5.tokenize(pair.ours.tokenizer, texts)
    np.testing.assert_array_equal(ids, inputs["input_ids"].numpy())
    np.testing.assert_array_equal(mask, ref_mask)
    emb = np.asarray(pair.ours.conditioner(ids, mask))
    err = rel_err(emb, ref_emb)
    print(f"{pair.kind}: condition rel err {err:.2e}")
    assert err < CONDITION_RTOL


@pytest.mark.parity
def test_lm_parity_teacher_forced_and_step_by_step(pair):
    cfg = pair.bundle.lm
    rng = np.random.default_rng(0)
    seq = delayed(rng.integers(0, cfg.card, (2, cfg.n_q, 20)), cfg.delays, cfg.card)
    cond, mask = conditions(rng, 2, 7, cfg.dim, [7, 3])
    ref_lm, lm = pair.ref.lm, pair.ours.lm
    want = reference_logits(ref_lm, seq, cond, mask)
    got = np.asarray(lm_lib.forward(lm, seq, cond))
    assert got.shape == want.shape == (2, cfg.n_q, seq.shape[-1], cfg.card)
    err = rel_err(got, want)
    steps = rel_err(our_streaming(lm, seq, cond, 1), reference_logits(ref_lm, seq, cond, mask, 1))
    print(f"{pair.kind}: LM rel err teacher-forced {err:.2e}, step by step {steps:.2e}")
    assert err < LM_RTOL and steps < LM_RTOL


# --------------------------------------------------------------------------------------------------
# Generation.


@pytest.mark.parity
def test_greedy_generation_matches_reference(pair):
    from test_generate import _mismatch_report

    ours, ref = pair.ours, pair.ref
    for m in (ref, ours):
        m.set_generation_params(duration=0.5, use_sampling=False, cfg_coef=3.0)
    ref_wav, ref_codes = _reference_generate(ref.generate, DESCRIPTIONS)
    wav, codes = ours.generate(DESCRIPTIONS, seed=0, return_tokens=True)
    K, C = (8, 2) if pair.stereo else (4, 1)
    assert codes.shape == ref_codes.shape == (3, K, 25)
    assert np.array_equal(codes, ref_codes), _mismatch_report(ours, DESCRIPTIONS, ref_codes, codes)
    assert wav.shape == ref_wav.shape == (3, C, 25 * 640)
    err = np.abs(wav - ref_wav).max()
    print(f"{pair.kind}: generated audio max |diff| {err:.2e} (peak {np.abs(ref_wav).max():.2f})")
    assert err <= WAV_ATOL


@pytest.mark.parity
@pytest.mark.parametrize("pair", ["stereo"], indirect=True)
def test_greedy_continuation_matches_reference(pair):
    """The stereo model continues a stereo prompt (channels differ) and a mono one (repeated, as
    the reference's `convert_audio` does), with descriptions and without. (Continuation through a
    mono model is the AudioGen path: tests/test_generate.py.)"""
    import torch
    from test_generate import _mismatch_report

    ours, ref = pair.ours, pair.ref
    descriptions = [*DESCRIPTIONS[:2], None]  # the text length of `DESCRIPTIONS`: one program
    for m in (ref, ours):
        m.set_generation_params(duration=0.5, use_sampling=False, cfg_coef=3.0)
    for channels in (2, 1):
        prompt = _signal(channels, 0.2, seed=channels)  # [2, C, 6400]: 10 frames
        prompt = np.concatenate([prompt, prompt[:1] * 0.5])
        ref_wav, ref_codes = _reference_generate(
            ref.generate_continuation, torch.from_numpy(prompt), 32000, descriptions
        )
        wav, codes = ours.generate_continuation(
            prompt, 32000, descriptions, seed=0, return_tokens=True
        )
        assert codes.shape == ref_codes.shape == (3, 8, 25)
        assert np.array_equal(codes, ref_codes), _mismatch_report(
            ours, descriptions, ref_codes, codes
        )
        err = np.abs(wav - ref_wav).max()
        print(f"{pair.kind}: continuation of a {channels}-channel prompt, audio {err:.2e}")
        assert err <= WAV_ATOL


@pytest.mark.parity
def test_command_line_writes_the_models_channels(pair, tmp_path, capsys):
    """`audiogen-jax generate --model <hub id>` from the cache: 32 kHz files with the model's
    channels (stereo: WAV and FLAC). Greedy, 3 descriptions, 0.5 s: the program the generation test
    compiled."""
    import huggingface_hub

    out = tmp_path / "out"
    argv = ["generate", *DESCRIPTIONS, "--model", pair.name, "--cache-dir", str(pair.cache)]
    argv += ["--duration", "0.5", "--greedy", "--out-dir", str(out), "--no-progress"]
    formats = {"wav": "PCM_16", "flac": "PCM_24"} if pair.stereo else {"wav": "PCM_16"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub, "hf_hub_download", FakeHub({}))  # the cache only
        for fmt in formats:
            assert cli.main([*argv, "--format", fmt]) == 0, capsys.readouterr().err
    for fmt, subtype in formats.items():
        info = soundfile.info(str(out / f"02_jazz.{fmt}"))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (
            32000,
            2 if pair.stereo else 1,
            subtype,
            25 * 640,
        )


# --------------------------------------------------------------------------------------------------
# Without the reference: interleaving, refusals, offline.


def test_interleave_layout():
    # c[ch, b, k, t] = 100 ch + 10 k + t: stream 2k + ch is channel ch's codebook k.
    codes = np.array(
        [[[[100 * c + 10 * k + t for t in range(3)] for k in range(2)]] for c in (0, 1)]
    )
    want = np.array([[[0, 1, 2], [100, 101, 102], [10, 11, 12], [110, 111, 112]]])
    np.testing.assert_array_equal(stereo.interleave(codes), want)
    np.testing.assert_array_equal(stereo.deinterleave(want), codes)


def _musicgen_xp(**changes) -> YamlConfig:
    import yaml

    tree = yaml.safe_load(xp_cfg_yaml(LMConfig.musicgen("small", num_layers=1), "t5-base"))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return YamlConfig(tree)


def test_musicgen_config_reads_the_family():
    cfg, conditioner = lm_params.lm_config_from_audiocraft(_musicgen_xp(), None)
    assert cfg == LMConfig.musicgen("small", num_layers=1)
    assert (cfg.family, cfg.duration, cfg.extend_stride, cfg.max_duration) == (
        "musicgen",
        15.0,
        18.0,
        30.0,
    )
    assert conditioner == {"input_dim": 768, "output_dim": 1024, "name": "t5-base"}


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"solver": None}, "solver"),
        ({"solver": "magnet"}, "solver"),
        ({"channels": 2}, "channels"),
        (
            {
                "interleave_stereo_codebooks.use": True,
                "interleave_stereo_codebooks.per_timestep": True,
            },
            "per_timestep",
        ),
        ({"compression_model_n_q": 2}, "compression_model_n_q"),
    ],
)
def test_unsupported_stereo_and_family_settings(changes, match):
    with pytest.raises(ValueError, match=match):
        lm_params.lm_config_from_audiocraft(_musicgen_xp(**changes), None)


def test_melody_checkpoint_is_refused_with_what_is_missing(tmp_path, monkeypatch):
    import huggingface_hub

    melody = {"model": "chroma_stem", "chroma_stem": {"sample_rate": 32000, "n_chroma": 12}}
    with pytest.raises(ValueError, match="MusicGen-melody.*self_wav.*chroma_stem"):
        lm_params.lm_config_from_audiocraft(_musicgen_xp(**{"conditioners.self_wav": melody}), None)
    # By name, before anything is downloaded.
    hub = FakeHub({})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    for name in ("facebook/musicgen-melody", "facebook/musicgen-stereo-melody-large"):
        with pytest.raises(checkpoint.CheckpointError, match="not supported: .*chroma"):
            MusicGen.from_pretrained(name, cache_dir=str(tmp_path))
    assert hub.calls == []


@pytest.mark.parametrize("reachable", [False, True])
def test_offline_command_line_names_what_could_not_be_downloaded(
    tmp_path, monkeypatch, capsys, reachable
):
    """Offline (the hub's host unreachable: the check before loading anything), or reachable but
    the files unobtainable (here a hub with no such repository): one line naming the checkpoint,
    its files and the T5 it needs."""
    import huggingface_hub

    from audiogen_jax import hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", FakeHub({}))
    monkeypatch.setattr(
        hub, "unreachable_reason", lambda *a, **k: None if reachable else "no network (test)"
    )
    argv = ["generate", "lo-fi piano", "--model", "facebook/musicgen-small"]
    assert cli.main([*argv, "--out-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not download 'facebook/musicgen-small'")
    for what in ("state_dict.bin", "compression_state_dict.bin", "google-t5/t5-base"):
        assert what in err
    assert not (tmp_path / "out").exists()


def test_transformers_encodec_configs():
    import dataclasses

    from audiogen_jax.config import EncodecConfig
    from audiogen_jax.encodec_params import encodec_config_from_hf
    from audiogen_jax.io.errors import ConversionError

    # facebook/encodec_32khz: transformers' defaults plus what its conversion script sets.
    hub_32khz = {
        "model_type": "encodec",
        "target_bandwidths": [2.2],
        "sampling_rate": 32000,
        "num_filters": 64,
        "upsampling_ratios": [8, 5, 4, 4],
        "codebook_size": 2048,
        "use_causal_conv": False,
        "normalize": False,
        "use_conv_shortcut": False,
    }
    want = dataclasses.replace(EncodecConfig.musicgen(), pad_mode="reflect")
    assert encodec_config_from_hf(hub_32khz) == want
    # facebook/encodec_48khz: stereo, renormalised, chunked, group norm: all named at once.
    hub_48khz = {
        **hub_32khz,
        "sampling_rate": 48000,
        "upsampling_ratios": [8, 5, 4, 2],
        "target_bandwidths": [3.0, 6.0, 12.0, 24.0],
        "audio_channels": 2,
        "normalize": True,
        "chunk_length_s": 1.0,
        "norm_type": "time_group_norm",
    }
    with pytest.raises(ConversionError, match="(?s)normalize.*chunk_length_s.*norm_type"):
        encodec_config_from_hf(hub_48khz)
