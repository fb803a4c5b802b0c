"""EnCodec: parity with audiocraft's EncodecModel, the converter, shapes, clear errors on bad input.

Every parity case builds the reference with random weights (weight norm on, random biases, codebooks
seeded from the encoder's own residuals; see tests/encodec_reference.py), writes it in the real
`compression_state_dict.bin` format with an unresolved `xp.cfg`, converts it with `convert_weights`
(`cli.convert_main`), loads it with `EncodecModel.from_pretrained` and compares:
- codes: identical, on every input. The codebooks are built so that no choice is decided by float32
  rounding (latents centred, distinct jittered codewords); the smallest top-2 distance gap of the
  reference (`top2_gaps`) is printed, and reported if a code ever differs.
- audio from the same codes, and the encoder's latents: max abs error within the tolerances below,
  a few times the errors measured in docs/parity.md ("EnCodec").
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from encodec_reference import build_reference, save_reference, top2_gaps, xp_cfg_yaml
from flax import nnx
from refutil import save_audiocraft_package

from audiogen_jax import checkpoint, encodec
from audiogen_jax.cli import convert_main
from audiogen_jax.config import EncodecConfig
from audiogen_jax.encodec import EncodecModel
from audiogen_jax.encodec_params import convert_compression
from audiogen_jax.io.errors import ConversionError

# Measured max abs errors (docs/parity.md, "EnCodec"): latents 2.6e-6 (peak |latent| 1.8), decoded
# audio 2.4e-7 (peak |audio| ~0.3). Tolerances ~4-8x that.
LATENT_ATOL = 1e-5
WAV_ATOL = 2e-6

MEDIUM = EncodecConfig.medium()
TINY = EncodecConfig.tiny()
TINY_CASES = {
    "tiny-constant": TINY,
    "tiny-reflect": dataclasses.replace(TINY, pad_mode="reflect"),
    # Every other switch at once: causal padding and trimming, 1x1-conv shortcuts, two dilated
    # residual blocks, no LSTM, a final tanh, another ELU alpha and compression, replicate padding.
    "tiny-causal-variant": dataclasses.replace(
        TINY,
        causal=True,
        trim_right_ratio=0.5,
        true_skip=False,
        n_residual_layers=2,
        dilation_base=3,
        lstm=0,
        final_activation="Tanh",
        elu_alpha=0.7,
        compress=1,
        pad_mode="replicate",
        ratios=(3, 2),
        kernel_size=5,
        last_kernel_size=3,
    ),
}


def _signals(cfg: EncodecConfig, length: int, rows: tuple[str, ...], seed: int = 0) -> np.ndarray:
    """[B, C, W] test audio: white noise, a chord of tones with a fade, or digital silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / cfg.sample_rate
    out = []
    for kind in rows:
        if kind == "noise":
            x = 0.1 * rng.standard_normal(length)
        elif kind == "tones":
            x = sum(
                0.3 * np.sin(2 * np.pi * f * t + f) for f in (220.0, 330.0, 1000.0)
            ) * np.linspace(1, 0.2, length)
        else:
            x = np.zeros(length)
        out.append(np.broadcast_to(x, (cfg.channels, length)))
    return np.stack(out).astype(np.float32)


def _convert(reference, cfg, tmp_path_factory, name: str):
    tmp = tmp_path_factory.mktemp(name)
    src = tmp / "compression_state_dict.bin"
    save_reference(reference, cfg, src)
    assert convert_main(["--compression", str(src), "--out", str(tmp / "out")]) == 0
    return src, tmp / "out"


@pytest.fixture(scope="module")
def medium(reference, tmp_path_factory):
    ref = build_reference(MEDIUM, seed=0, probe_seconds=2.0)
    src, out = _convert(ref, MEDIUM, tmp_path_factory, "medium")
    return MEDIUM, ref, EncodecModel.from_pretrained(out), src


@pytest.fixture(scope="module", params=list(TINY_CASES))
def tiny(request, reference, tmp_path_factory):
    cfg = TINY_CASES[request.param]
    ref = build_reference(cfg, seed=1)
    _, out = _convert(ref, cfg, tmp_path_factory, request.param)
    return cfg, ref, EncodecModel.from_pretrained(out)


_latent = nnx.jit(lambda model, wav: model.encode_latent(wav))


def _compare(cfg, ref, model, wav):
    """Codes (exactly), latents and decoded audio against the reference; returns both codes."""
    import torch

    with torch.no_grad():
        wav_t = torch.from_numpy(wav)
        ref_latent = ref.encoder(wav_t).numpy()
        ref_codes = ref.encode(wav_t)[0].numpy()
        ref_wav = ref.decode(torch.from_numpy(ref_codes)).numpy()
    codes = np.asarray(model.encode(wav))
    T = -(-wav.shape[-1] // cfg.hop_length)
    assert codes.shape == ref_codes.shape == (wav.shape[0], cfg.n_q, T)
    assert codes.dtype == np.int32

    gaps = top2_gaps(ref, wav)
    assert np.array_equal(codes, ref_codes), (
        f"{int((codes != ref_codes).sum())} of {codes.size} codes differ, first (b, k, t) at "
        f"{np.argwhere(codes != ref_codes)[:5].tolist()}; the reference's smallest top-2 gap is "
        f"{gaps.min():.1e}, {gaps[codes != ref_codes].min():.1e} at the differing cells"
    )

    latent = np.asarray(_latent(model, jnp.asarray(wav))).transpose(0, 2, 1)
    latent_err = float(np.abs(latent - ref_latent).max())
    out = np.asarray(model.decode(ref_codes))
    assert out.shape == ref_wav.shape == (wav.shape[0], cfg.channels, T * cfg.hop_length)
    wav_err = float(np.abs(out - ref_wav).max())
    print(
        f"W={wav.shape[-1]} B={wav.shape[0]}: latent err {latent_err:.2e} "
        f"(peak {np.abs(ref_latent).max():.2f}), wav err {wav_err:.2e} "
        f"(peak {np.abs(ref_wav).max():.2f}), codes identical, min top-2 gap {gaps.min():.1e}, "
        f"distinct codes {len(np.unique(ref_codes))}"
    )
    assert latent_err <= LATENT_ATOL
    assert wav_err <= WAV_ATOL
    return codes, ref_codes


@pytest.mark.parity
def test_medium_matches_reference(medium):
    cfg, ref, model, _ = medium
    # >= 1 s, not a multiple of the hop, batch 3: noise, tones, silence. (Inputs shorter than a hop
    # or than the convs' padding are covered by the tiny configs, at a fraction of the compile
    # time.)
    _compare(cfg, ref, model, _signals(cfg, cfg.sample_rate + 123, ("noise", "tones", "silence")))


@pytest.mark.parity
def test_medium_decodes_fewer_codebooks_like_reference(medium):
    import torch

    cfg, ref, model, _ = medium
    codes = np.random.default_rng(3).integers(0, cfg.bins, (1, 2, 7)).astype(np.int64)
    with torch.no_grad():
        expected = ref.decode(torch.from_numpy(codes)).numpy()
    err = float(np.abs(np.asarray(model.decode(codes)) - expected).max())
    print(f"decode of 2 of {cfg.n_q} codebooks: max abs err {err:.2e}")
    assert err <= WAV_ATOL


@pytest.mark.parity
def test_tiny_matches_reference(tiny):
    cfg, ref, model = tiny
    _compare(cfg, ref, model, _signals(cfg, cfg.sample_rate + 5, ("noise", "tones", "silence")))
    # One sample (shorter than any padding: the reflect special case), with batch 2.
    _compare(cfg, ref, model, _signals(cfg, 1, ("noise", "tones"), seed=1))


@pytest.mark.parity
def test_converted_config_and_properties(medium):
    cfg, _, model, _ = medium
    assert model.config == cfg
    assert (model.sample_rate, model.hop_length, model.frame_rate) == (16000, 320, 50)
    assert (model.channels, model.n_q, model.cardinality) == (1, 4, 2048)


@pytest.mark.parametrize("cfg", TINY_CASES.values(), ids=TINY_CASES)
@pytest.mark.parity
def test_frame_rate_is_the_reference_builders_int(reference, cfg):
    # The causal variant's hop (6) does not divide 8000: the reference rounds 1333.3 down.
    from audiocraft.models.builders import get_compression_model
    from omegaconf import OmegaConf

    ref = get_compression_model(OmegaConf.create(xp_cfg_yaml(cfg)))
    assert isinstance(cfg.frame_rate, int) and cfg.frame_rate == ref.frame_rate


def test_jit_compiles_once_per_shape():
    model = EncodecModel(TINY, rngs=nnx.Rngs(0))
    wav = _signals(TINY, 100, ("noise",))
    before = encodec._encode_jit._cache_size()
    codes = model.encode(wav)
    model.encode(wav * 0.5)
    assert encodec._encode_jit._cache_size() == before + 1
    model.encode(_signals(TINY, 101, ("noise",)))
    assert encodec._encode_jit._cache_size() == before + 2
    wav_out = model.decode(codes)
    assert wav_out.shape == (1, 1, 13 * TINY.hop_length)


def test_encode_decode_inside_callers_jit():
    model = EncodecModel(TINY, rngs=nnx.Rngs(0))
    wav = jnp.asarray(_signals(TINY, 64, ("tones",)))
    codes = jax.jit(lambda w: model.encode(w))(wav)
    np.testing.assert_array_equal(codes, model.encode(wav))
    out = jax.jit(lambda c: model.decode(c))(codes)
    # Fused differently inside the caller's jit: equal up to float rounding.
    np.testing.assert_allclose(out, model.decode(codes), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    "wav, match",
    [
        (np.zeros((1, 100), np.float32), "rank 3"),
        (np.zeros((1, 2, 100), np.float32), "2 channels"),
        (np.zeros((1, 1, 0), np.float32), "empty"),
        (np.zeros((0, 1, 10), np.float32), "empty"),
        (np.full((1, 1, 10), np.nan, np.float32), "NaN or infinite"),
        (np.array([[[0.0, np.inf]]], np.float32), "NaN or infinite"),
        (np.zeros((1, 1, 10), np.int16), "floating point"),
    ],
)
def test_encode_rejects_bad_audio(wav, match):
    with pytest.raises(ValueError, match=match):
        EncodecModel(TINY, rngs=nnx.Rngs(0)).encode(wav)


@pytest.mark.parametrize(
    "codes, match",
    [
        (np.zeros((4, 3), np.int32), "rank 3"),
        (np.zeros((1, 5, 3), np.int32), "K=5"),
        (np.zeros((1, 0, 3), np.int32), "K=0"),
        (np.zeros((1, 4, 0), np.int32), "empty"),
        (np.full((1, 4, 3), TINY.bins, np.int32), r"\[0, 32\)"),
        (np.full((1, 4, 3), -1, np.int32), r"\[0, 32\)"),
        (np.zeros((1, 4, 3), np.float32), "integers"),
    ],
)
def test_decode_rejects_bad_codes(codes, match):
    with pytest.raises(ValueError, match=match):
        EncodecModel(TINY, rngs=nnx.Rngs(0)).decode(codes)


def _tiny_state(reference, cfg=TINY):
    return build_reference(cfg, seed=2, probe_seconds=0.1).state_dict()


def _convert_error(tmp_path, state, cfg_yaml) -> str:
    src = tmp_path / "ckpt.bin"
    save_audiocraft_package(src, state, cfg_yaml)
    with pytest.raises(ConversionError) as e:
        convert_compression(src, tmp_path / "out")
    assert not (tmp_path / "out" / "compression.safetensors").exists()
    return str(e.value)


@pytest.mark.parity
def test_converter_rejects_lm_checkpoint(reference, tmp_path):
    import torch

    state = {
        "transformer.layers.0.self_attn.in_proj_weight": torch.zeros(6, 2),
        "emb.0.weight": torch.zeros(3, 2),
    }
    msg = _convert_error(tmp_path, state, "lm_model: transformer_lm\ncompression_model: encodec\n")
    assert "not an EnCodec compression checkpoint" in msg and "--lm" in msg


@pytest.mark.parity
def test_converter_rejects_random_file(reference, tmp_path):
    src = tmp_path / "random.bin"
    src.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ConversionError, match="could not be read|not a torch"):
        convert_compression(src, tmp_path / "out")
    assert convert_main(["--compression", str(src), "--out", str(tmp_path / "out")]) == 1


@pytest.mark.parity
def test_converter_lists_every_config_weight_mismatch(reference, tmp_path):
    # Weights of the tiny codec, config claiming twice the filters and a second LSTM layer.
    wrong = dataclasses.replace(TINY, n_filters=8, lstm=2)
    msg = _convert_error(tmp_path, _tiny_state(reference), xp_cfg_yaml(wrong))
    assert "parameters missing from the checkpoint" in msg and "layers.1.kernel_ih" in msg
    msg = _convert_error(
        tmp_path, _tiny_state(reference), xp_cfg_yaml(dataclasses.replace(TINY, n_filters=8))
    )
    assert (
        "shapes disagree" in msg and msg.count("config wants") > 5
    )  # every mis-shaped kernel, not the first


@pytest.mark.parity
def test_converter_rejects_unsupported_settings(reference, tmp_path):
    msg = _convert_error(tmp_path, _tiny_state(reference), xp_cfg_yaml(TINY, renormalize=True))
    assert "renormalize" in msg
    yaml = (
        xp_cfg_yaml(TINY)
        .replace("activation: ELU", "activation: GELU")
        .replace("norm: weight_norm", "norm: time_group_norm")
    )
    msg = _convert_error(tmp_path, _tiny_state(reference), yaml)
    assert "GELU" in msg and "time_group_norm" in msg


@pytest.mark.parity
def test_converter_rejects_uninitialised_codebooks(reference, tmp_path):
    state = _tiny_state(reference)
    state["quantizer.vq.layers.2._codebook.inited"].zero_()
    msg = _convert_error(tmp_path, state, xp_cfg_yaml(TINY))
    assert "never initialised" in msg and "layers.2" in msg


@pytest.mark.parity
def test_converter_output_format(medium, tmp_path):
    _, _, _, src = medium
    convert_compression(src, tmp_path)
    with open(tmp_path / "config.json") as f:
        cfg = json.load(f)
    assert cfg["compression"] == MEDIUM.to_dict()
    specs = checkpoint.param_specs(lambda: EncodecModel(MEDIUM, rngs=nnx.Rngs(0)))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "compression.safetensors"), "numpy") as f:
        assert set(f.keys()) == set(specs)
        assert all(f.get_slice(k).get_dtype() == "F32" for k in f.keys())  # noqa: SIM118


def test_from_pretrained_without_compression(tmp_path):
    checkpoint.update_config(tmp_path, "lm", {"dim": 1})
    with pytest.raises(ValueError, match="no 'compression' model"):
        EncodecModel.from_pretrained(tmp_path)
