"""T5 encoder, tokenizer, conditioner: parity with transformers' T5EncoderModel and audiocraft.

Every case builds a random transformers T5 (real checkpoint format: `save_pretrained` safetensors,
or a torch.save'd `pytorch_model.bin`) next to a small sentencepiece model, converts it with our
converter, loads it with `T5Conditioner.from_pretrained`, and compares with audiocraft's
`T5Conditioner` running that same T5 and tokenizer. Metric for floats: max|ours - ref| / max|ref|
over the whole [B, L, D] tensor. Tolerances are the numbers measured in docs/parity.md ("T5 text
encoder and conditioner"), with headroom.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from audiogen_jax import checkpoint, t5
from audiogen_jax.cli import convert_main
from audiogen_jax.config import T5Config
from audiogen_jax.io.errors import ConversionError
from audiogen_jax.t5_params import convert_t5

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Measured (docs/parity.md, all runs): hidden state <= 2.9e-6, projected condition <= 8.8e-7.
HIDDEN_RTOL = 1e-5
CONDITION_RTOL = 1e-5

LONG = " ".join(
    f"scene {i}: rain on a tin roof, a dog barking far away, birds at dawn." for i in range(16)
)
TEXTS_LONG = ["dog barking in the rain", "", "Möwe schreit über dem Café — 鳥の声 🎵", LONG, None]
TEXTS_SHORT = [
    "dog barking in the rain",
    "",
    "Möwe schreit über dem Café — 鳥の声 🎵 while a train passes over a steel bridge",
    None,
]
CASES = {
    # name: (config, LM width, texts, seed)
    "tiny": (T5Config.tiny(), 48, TEXTS_LONG, 0),
    "large-width-2-layers": (
        dataclasses.replace(T5Config.large(), num_layers=2),
        1536,
        TEXTS_LONG,
        1,
    ),
    "t5-large": (T5Config.large(), 1536, TEXTS_SHORT, 2),
}


@jax.jit
def run(model, ids_BL, mask_BL):
    return model(ids_BL, mask_BL)


@jax.jit
def run_both(conditioner, ids_BL, mask_BL):
    """The encoder's hidden state and the conditioner's output in one compiled call."""
    return conditioner.t5(ids_BL, mask_BL), conditioner(ids_BL, mask_BL)


def rel_err(ours, ref) -> float:
    return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


def random_hf_t5(cfg: T5Config, seed: int, model_cls=None):
    """A transformers T5 with random weights, built on the meta device and filled directly (fast).

    Standard deviations follow transformers' own init; layer norms get 1 + noise so that their
    weights matter.
    """
    import torch
    import transformers

    hf_cfg = transformers.T5Config(**cfg.to_dict(), dropout_rate=0.0)
    with torch.device("meta"):
        model = (model_cls or transformers.T5EncoderModel)(hf_cfg)
    model = model.to_empty(device="cpu")
    model.tie_weights()
    g = torch.Generator().manual_seed(seed)
    d, f, hd = cfg.d_model, cfg.d_ff, cfg.num_heads * cfg.d_kv
    std = {
        "shared": 1.0,
        ".q.": (d * cfg.d_kv) ** -0.5,
        ".k.": d**-0.5,
        ".v.": d**-0.5,
        ".o.": hd**-0.5,
        ".wi": d**-0.5,
        ".wo.": f**-0.5,
        "relative_attention_bias": d**-0.5,
        "lm_head": d**-0.5,
    }
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                continue
            s = [v for k, v in std.items() if k in name]
            assert len(s) >= 1, name
            p.normal_(0.0, s[0], generator=g)
    return model.eval()


def audiocraft_conditioner(hf_model, tokenizer, output_dim: int, seed: int):
    """audiocraft's T5Conditioner('t5-large') running our random T5 and tokenizer (facts §8.3)."""
    import torch
    from audiocraft.modules import conditioners

    fake = lambda obj: types.SimpleNamespace(from_pretrained=lambda name, **kw: obj)  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conditioners, "T5EncoderModel", fake(hf_model))
        mp.setattr(conditioners, "T5Tokenizer", fake(tokenizer))
        cond = conditioners.T5Conditioner(
            "t5-large", output_dim=output_dim, finetune=False, device="cpu"
        )
    d = hf_model.config.d_model
    if (
        cond.output_proj.in_features != d
    ):  # the name fixes 1024 inputs; a smaller T5 needs its own projection
        cond.output_proj = torch.nn.Linear(d, output_dim)
    torch.manual_seed(seed)
    with torch.no_grad():
        cond.output_proj.weight.normal_(0.0, d**-0.5)
        cond.output_proj.bias.normal_(0.0, 0.1)
    return cond.eval()


def write_conditioner(out_dir: str, weight, bias) -> None:
    """conditioner.safetensors + config['conditioner'], as convert_lm writes them."""
    out_dim, in_dim = weight.shape
    proj = nnx.Linear(in_dim, out_dim, use_bias=True, rngs=nnx.Rngs(0))
    proj.kernel.set_value(jnp.asarray(weight.T))
    proj.bias.set_value(jnp.asarray(bias))
    checkpoint.save_module(proj, os.path.join(out_dir, t5.CONDITIONER_FILE))
    checkpoint.update_config(
        out_dir, "conditioner", {"input_dim": in_dim, "output_dim": out_dim, "name": "t5-large"}
    )


def hf_dir(model, spiece_dir: str, path: str) -> str:
    model.save_pretrained(path)
    shutil.copy(os.path.join(spiece_dir, t5.SPIECE), path)
    return path


def build_case(name: str, spiece_dir: str, tmp) -> types.SimpleNamespace:
    """Random HF T5 -> converted dir -> our conditioner, next to audiocraft's outputs."""
    import torch

    cfg, out_dim, texts, seed = CASES[name]
    hf = random_hf_t5(cfg, seed)
    src = hf_dir(hf, spiece_dir, str(tmp / "hf"))
    out = str(tmp / "converted")
    if name == "tiny":  # the real command line once
        proc = subprocess.run(
            [sys.executable, "convert_weights.py", "--t5", src, "--out", out],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
    else:
        assert convert_main(["--t5", src, "--out", out]) == 0

    ref_cond = audiocraft_conditioner(hf, t5.load_tokenizer(spiece_dir), out_dim, seed)
    captured = {}
    hook = hf.register_forward_hook(
        lambda m, args, output: captured.update(h=output.last_hidden_state)
    )
    with torch.no_grad():
        inputs = ref_cond.tokenize(texts)
        emb, mask = ref_cond(inputs)
    hook.remove()
    write_conditioner(
        out,
        ref_cond.output_proj.weight.detach().numpy(),
        ref_cond.output_proj.bias.detach().numpy(),
    )

    ours = t5.T5Conditioner.from_pretrained(out)
    ids_BL, mask_BL = t5.tokenize(ours.tokenizer, texts)
    h_BLD, emb_BLD = run_both(ours, ids_BL, mask_BL)
    if name == "tiny":  # the public path (tokenize + jitted conditioner) gives the same
        np.testing.assert_array_equal(np.asarray(ours.encode(texts)[0]), np.asarray(emb_BLD))
    return types.SimpleNamespace(
        name=name,
        cfg=cfg,
        texts=texts,
        src=src,
        out=out,
        ours=ours,
        ids=ids_BL,
        mask=mask_BL,
        ref_ids=inputs["input_ids"].numpy(),
        ref_mask=mask.numpy(),
        ref_h=captured["h"].numpy(),
        ref_emb=emb.numpy(),
        h=np.asarray(h_BLD),
        emb=np.asarray(emb_BLD),
        state={k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}
        if name == "tiny"
        else None,
    )


@pytest.fixture(scope="module")
def tiny(reference, spiece_dir, tmp_path_factory):
    return build_case("tiny", spiece_dir, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module", params=list(CASES))
def case(request, reference, spiece_dir, tmp_path_factory):
    if request.param == "tiny":
        return request.getfixturevalue("tiny")
    return build_case(request.param, spiece_dir, tmp_path_factory.mktemp(request.param))


def write_json(path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


# --------------------------------------------------------------------------------------------------
# Parity.


@pytest.mark.parity
def test_token_ids_match_audiocraft(case):
    np.testing.assert_array_equal(case.ids, case.ref_ids)
    np.testing.assert_array_equal(case.mask, case.ref_mask)
    assert case.ids.dtype == np.int32 and case.mask.dtype == np.int32
    if (
        LONG in case.texts
    ):  # beyond t5-large's 512-token max length, and not truncated (like the reference)
        assert case.ids.shape[1] > 512


@pytest.mark.parity
def test_encoder_matches_transformers(case):
    assert np.isfinite(case.h).all()
    err = rel_err(case.h, case.ref_h)
    print(f"{case.name}: last hidden state rel err {err:.2e}")
    assert err <= HIDDEN_RTOL


@pytest.mark.parity
def test_conditioner_matches_audiocraft(case):
    err = rel_err(case.emb, case.ref_emb)
    print(f"{case.name}: condition rel err {err:.2e}")
    assert case.emb.shape == case.ref_emb.shape
    assert err <= CONDITION_RTOL


@pytest.mark.parity
def test_null_and_padded_positions_are_exactly_zero(case):
    null_rows = [i for i, t in enumerate(case.texts) if not t]
    assert null_rows and (case.mask[null_rows] == 0).all()
    assert (case.emb[case.mask == 0] == 0).all()
    assert (case.emb[case.mask == 1] != 0).any(axis=-1).all()


@pytest.mark.parity
def test_bucket_table_matches_transformers(reference):
    import torch
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = np.arange(-3000, 3001)
    for buckets, max_distance in [(32, 128), (8, 20), (16, 64), (64, 256), (4, 3)]:
        ref = T5Attention._relative_position_bucket(
            torch.tensor(rel), bidirectional=True, num_buckets=buckets, max_distance=max_distance
        )
        ours = t5.relative_position_bucket(rel, num_buckets=buckets, max_distance=max_distance)
        np.testing.assert_array_equal(
            ours, ref.numpy(), err_msg=f"{buckets} buckets, max {max_distance}"
        )


@pytest.mark.parity
def test_gated_gelu_matches_transformers(reference, spiece_dir, tmp_path):
    import torch

    cfg = dataclasses.replace(T5Config.tiny(), feed_forward_proj="gated-gelu")
    hf = random_hf_t5(cfg, seed=3)
    convert_t5(hf_dir(hf, spiece_dir, str(tmp_path / "hf")), tmp_path / "out")
    ours = checkpoint.load_module(
        lambda: t5.T5EncoderModel(cfg, rngs=nnx.Rngs(0)), tmp_path / "out/t5.safetensors"
    )
    ids, mask = t5.tokenize(t5.load_tokenizer(tmp_path / "out"), TEXTS_LONG)
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long()
        ).last_hidden_state
    err = rel_err(run(ours, ids, mask), ref.numpy())
    print(f"gated-gelu tiny: last hidden state rel err {err:.2e}")
    assert err <= HIDDEN_RTOL


@pytest.mark.parity
def test_pytorch_model_bin_converts_to_the_same_weights(tiny, tmp_path):
    """`pytorch_model.bin` (restricted unpickler, no torch) converts like model.safetensors."""
    import torch

    case = tiny
    src = tmp_path / "bin"
    src.mkdir()
    torch.save({k: torch.from_numpy(v) for k, v in case.state.items()}, src / "pytorch_model.bin")
    for name in ("config.json", t5.SPIECE):
        shutil.copy(os.path.join(case.src, name), src)
    convert_t5(src, tmp_path / "out")
    _assert_same_weights(tmp_path / "out/t5.safetensors", os.path.join(case.out, "t5.safetensors"))


def _assert_same_weights(a, b) -> None:
    from safetensors.numpy import load_file

    wa, wb = load_file(a), load_file(b)
    assert sorted(wa) == sorted(wb)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


@pytest.mark.parametrize("layout", ["embed_tokens_only", "bf16"])
@pytest.mark.parity
def test_embedding_key_layouts_and_dtypes(tiny, tmp_path, layout):
    """The tied embedding stored only as encoder.embed_tokens.weight; bf16 widened to fp32."""
    import ml_dtypes
    from safetensors.numpy import save_file

    case = tiny
    state = dict(case.state)
    if layout == "embed_tokens_only":
        state["encoder.embed_tokens.weight"] = state.pop("shared.weight")
    else:
        state = {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}
    src = tmp_path / "hf"
    src.mkdir()
    save_file(state, str(src / "model.safetensors"))
    for name in ("config.json", t5.SPIECE):
        shutil.copy(os.path.join(case.src, name), src)
    convert_t5(src, tmp_path / "out")
    if layout == "embed_tokens_only":
        _assert_same_weights(
            tmp_path / "out/t5.safetensors", os.path.join(case.out, "t5.safetensors")
        )
    else:
        from safetensors.numpy import load_file

        got = load_file(str(tmp_path / "out/t5.safetensors"))
        assert got["shared.embedding"].dtype == np.float32
        np.testing.assert_array_equal(
            got["shared.embedding"], state["shared.weight"].astype(np.float32)
        )


@pytest.mark.parity
def test_full_encoder_decoder_checkpoint_with_old_config(reference, spiece_dir, tmp_path):
    """Like t5-large on the hub: encoder-decoder weights, config without feed_forward_proj and
    relative_attention_max_distance."""
    import torch
    import transformers

    cfg = dataclasses.replace(T5Config.tiny(), relative_attention_max_distance=128)
    hf = random_hf_t5(cfg, seed=4, model_cls=transformers.T5ForConditionalGeneration)
    src = hf_dir(hf, spiece_dir, str(tmp_path / "hf"))
    with open(os.path.join(src, "config.json")) as f:
        hf_json = json.load(f)
    for key in (
        "feed_forward_proj",
        "relative_attention_max_distance",
        "dense_act_fn",
        "is_gated_act",
    ):
        hf_json.pop(key, None)
    write_json(os.path.join(src, "config.json"), hf_json)
    assert convert_main(["--t5", src, "--out", str(tmp_path / "out")]) == 0
    got = checkpoint.read_config(tmp_path / "out", "t5")
    assert got["feed_forward_proj"] == "relu" and got["relative_attention_max_distance"] == 128
    ours = checkpoint.load_module(
        lambda: t5.T5EncoderModel(T5Config.from_dict(got), rngs=nnx.Rngs(0)),
        tmp_path / "out/t5.safetensors",
    )
    ids, mask = t5.tokenize(t5.load_tokenizer(tmp_path / "out"), TEXTS_SHORT)
    with torch.no_grad():
        ref = hf.encoder(
            input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long()
        )
    err = rel_err(run(ours, ids, mask), ref.last_hidden_state.numpy())
    print(f"encoder-decoder checkpoint, old config: last hidden state rel err {err:.2e}")
    assert err <= HIDDEN_RTOL


# --------------------------------------------------------------------------------------------------
# Behaviour and bad input (no reference needed).


@pytest.fixture(scope="module")
def tiny_conditioner(spiece_dir):
    cond = t5.T5Conditioner(T5Config.tiny(), 16, rngs=nnx.Rngs(0))
    cond.tokenizer = t5.load_tokenizer(spiece_dir)
    return cond


def test_generator_batch_cond_then_null(tiny_conditioner):
    """[cond; null] tokenized together: null rows exactly zero, cond rows unchanged."""
    descriptions = ["a cat meows", "footsteps on gravel, slowly"]
    both, mask = tiny_conditioner.encode(descriptions + [None] * len(descriptions))
    alone, _ = tiny_conditioner.encode(descriptions)
    assert both.shape[0] == 4 and (np.asarray(both[2:]) == 0).all() and (mask[2:] == 0).all()
    np.testing.assert_allclose(np.asarray(both[:2]), np.asarray(alone), rtol=0, atol=1e-6)


def test_attention_weights(tiny_conditioner):
    ids, mask = t5.tokenize(tiny_conditioner.tokenizer, ["rain", "thunder and heavy rain", None])
    _, probs = tiny_conditioner.t5(jnp.asarray(ids), jnp.asarray(mask), return_attention=True)
    assert len(probs) == T5Config.tiny().num_layers
    p = np.asarray(probs[0])
    assert p.shape == (3, 4, ids.shape[1], ids.shape[1])
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    assert (p[0][..., mask[0] == 0] == 0).all()  # padded keys get no weight
    np.testing.assert_allclose(p[2], 1.0 / ids.shape[1], rtol=1e-5)  # a null row: finite, uniform


@pytest.mark.parametrize(
    "bad, match",
    [
        (["a dog", 3], "description 1 is a int"),
        ([b"bytes"], "description 0 is a bytes"),
        ([], "empty"),
        ("a dog barking", "list of strings"),
    ],
)
def test_bad_descriptions(tiny_conditioner, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_conditioner.encode(bad)


def test_bad_ids_and_mask(tiny_conditioner):
    ids = np.array([[5, 1]], np.int32)
    with pytest.raises(ValueError, match="must lie in"):
        tiny_conditioner(np.array([[9000, 1]], np.int32), np.ones((1, 2), np.int32))
    with pytest.raises(ValueError, match="mask shape"):
        tiny_conditioner(ids, np.ones((1, 3), np.int32))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        tiny_conditioner.t5(ids[0])


def test_tokenizer_dir_without_spiece(tmp_path):
    with pytest.raises(ValueError, match="spiece.model is missing"):
        t5.load_tokenizer(tmp_path)


@pytest.mark.parity
def test_conversion_errors(tiny, tmp_path):
    case = tiny
    src = tmp_path / "hf"
    shutil.copytree(case.src, src)
    with open(src / "config.json") as f:
        hf_json = json.load(f)
    write_json(src / "config.json", {**hf_json, "d_ff": 2 * hf_json["d_ff"]})
    with pytest.raises(ConversionError, match="DenseReluDense.wi.kernel: checkpoint gives"):
        convert_t5(src, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out/t5.safetensors")
    write_json(src / "config.json", {**hf_json, "num_layers": hf_json["num_layers"] + 1})
    with pytest.raises(ConversionError, match="parameters missing from the checkpoint"):
        convert_t5(src, tmp_path / "out")
    (src / t5.SPIECE).unlink()
    with pytest.raises(ConversionError, match="no spiece.model"):
        convert_t5(src, tmp_path / "out")
    with pytest.raises(ConversionError, match="expected a directory"):
        convert_t5(src / "config.json", tmp_path / "out")


@pytest.mark.parity
def test_converted_dir_disagreeing_with_its_config(tiny, tmp_path):
    case = tiny
    out = tmp_path / "out"
    shutil.copytree(case.out, out)
    checkpoint.update_config(out, "t5", {**case.cfg.to_dict(), "d_ff": 2 * case.cfg.d_ff})
    with pytest.raises(checkpoint.CheckpointError, match="mis-shaped"):
        t5.T5Conditioner.from_pretrained(out)


@pytest.mark.parity
def test_converted_dir_without_conditioner(tiny, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny.out, out)
    cfg = checkpoint.read_config(out)
    del cfg["conditioner"]
    write_json(out / checkpoint.CONFIG_FILE, cfg)
    with pytest.raises(checkpoint.CheckpointError, match="no 'conditioner'.*--lm"):
        t5.T5Conditioner.from_pretrained(out)


@pytest.mark.parity
def test_hub_download_of_a_sharded_checkpoint(tiny, spiece_dir, tmp_path, monkeypatch):
    """A hub id: fetches config, index, encoder shards, tokenizer; converts to the same weights."""
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    hub = tmp_path / "hub"
    random_hf_t5(tiny.cfg, CASES["tiny"][3]).save_pretrained(hub, max_shard_size="300KB")
    shutil.copy(os.path.join(spiece_dir, t5.SPIECE), hub)
    fetched = []

    def fake_download(repo_id, filename, **kwargs):
        assert repo_id == "someone/t5-tiny"
        if not (hub / filename).is_file():
            err = RemoteEntryNotFoundError.__new__(RemoteEntryNotFoundError)
            Exception.__init__(err, f"404 {filename}")
            raise err
        fetched.append(filename)
        return str(hub / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    convert_t5("someone/t5-tiny", tmp_path / "out")
    shards = sorted(p.name for p in hub.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert sorted(fetched) == sorted(
        ["config.json", t5.SPIECE, "model.safetensors.index.json", *shards]
    )
    _assert_same_weights(tmp_path / "out/t5.safetensors", os.path.join(tiny.out, "t5.safetensors"))


def test_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    with pytest.raises(ConversionError, match="not a local directory, and downloading config.json"):
        convert_t5("google-t5/t5-large", tmp_path / "out")
