"""The transformer LM: cached decoding vs the full forward, bad input, conversion, and parity with
audiocraft.

Parity: audiocraft's `LMModel` is built with random weights (fp16-rounded, as the release stores
them), saved in the real export format (fp16 `best_state` + an `xp.cfg` YAML with unresolved
interpolations), converted by `convert_weights.py`'s code path, loaded with
`LMModel.from_pretrained`, and compared on teacher-forced logits and on the reference's own
streaming (KV-cache) logits. Metric: relative error = max |ours - ref| / max |ref| over all logits
compared. Tolerances are measured values (docs/parity.md, "Transformer LM") times a small margin.
"""

from __future__ import annotations

import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from refutil import reference_lm

from audiogen_jax import checkpoint, lm_params
from audiogen_jax import lm as lm_lib
from audiogen_jax.config import LMConfig
from audiogen_jax.io.audiocraft import YamlConfig
from audiogen_jax.io.errors import ConversionError

# Measured (docs/parity.md): fp32 tiny <= 5.03e-7, medium widths <= 1.03e-6; bf16 weights vs the
# fp32 reference <= 4.67e-3.
TOL_FP32 = 5e-6
TOL_BF16 = 2e-2
# Cached decoding vs our own teacher-forced forward (same weights, different op shapes): measured
# 3.30e-7 one step at a time, 4.61e-7 after a 5-step prefill (docs/parity.md).
TOL_SELF = 5e-6

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def delayed(codes_BKT: np.ndarray, delays, special: int) -> np.ndarray:
    """Test-local delay layout (reference `build_pattern_sequence`, keep_only_valid_steps=False)."""
    B, K, T = codes_BKT.shape
    S = T + max(delays) + 1
    seq = np.full((B, K, S), special, codes_BKT.dtype)
    for k, d in enumerate(delays):
        seq[:, k, 1 + d : 1 + d + T] = codes_BKT[:, k]
    return seq


def conditions(rng, B: int, L: int, D: int, lengths) -> tuple[np.ndarray, np.ndarray]:
    """Projected conditions zero-padded like the conditioner makes them ([B, L, D], mask [B, L])."""
    cond = rng.standard_normal((B, L, D)).astype(np.float32)
    mask = np.zeros((B, L), np.int64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return (cond * mask[..., None]).astype(np.float32), mask


def load_bench():
    path = os.path.join(REPO, "benchmarks", "measure_convert_memory.py")
    spec = importlib.util.spec_from_file_location("measure_convert_memory", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------------
# Our model alone (no reference needed).


@pytest.fixture(scope="module")
def tiny():
    cfg = LMConfig.tiny()
    return lm_lib.LMModel(cfg, rngs=nnx.Rngs(0))


def test_cached_decoding_equals_forward(tiny):
    cfg = tiny.config
    rng = np.random.default_rng(0)
    seq = delayed(rng.integers(0, cfg.card, (2, cfg.n_q, 9)), cfg.delays, cfg.card)
    cond, _ = conditions(rng, 2, 5, cfg.dim, [5, 2])
    full = np.asarray(lm_lib.forward(tiny, seq, cond))
    S = seq.shape[-1]
    # one step at a time, with a traced start, in a cache longer than needed
    cache = lm_lib.init_cache(tiny, cond, S + 3)
    outs = []
    for s in range(S):
        logits, cache = lm_lib.step(tiny, seq[..., s : s + 1], cache, jnp.int32(s))
        outs.append(logits)
    err = rel_err(np.concatenate(outs, axis=2), full)
    print(f"tiny: single steps vs forward rel err {err:.2e}")
    assert err < TOL_SELF
    # a prompt prefill of 5 steps, then single steps
    cache = lm_lib.init_cache(tiny, cond, S)
    outs = [lm_lib.step(tiny, seq[..., :5], cache, 0)]
    cache = outs[0][1]
    outs = [outs[0][0]]
    for s in range(5, S):
        logits, cache = lm_lib.step(tiny, seq[..., s : s + 1], cache, s)
        outs.append(logits)
    err = rel_err(np.concatenate(outs, axis=2), full)
    print(f"tiny: prefill 5 + single steps vs forward rel err {err:.2e}")
    assert err < TOL_SELF


def test_causal_and_condition_dependent(tiny):
    cfg = tiny.config
    rng = np.random.default_rng(1)
    seq = delayed(rng.integers(0, cfg.card, (1, cfg.n_q, 6)), cfg.delays, cfg.card)
    cond, _ = conditions(rng, 1, 4, cfg.dim, [4])
    base = np.asarray(lm_lib.forward(tiny, seq, cond))
    changed = seq.copy()
    changed[:, :, 5] = (changed[:, :, 5] + 1) % cfg.card
    out = np.asarray(lm_lib.forward(tiny, changed, cond))
    np.testing.assert_array_equal(out[:, :, :5], base[:, :, :5])  # the past never sees the future
    assert not np.allclose(out[:, :, 5:], base[:, :, 5:])
    assert not np.allclose(np.asarray(lm_lib.forward(tiny, seq, cond * 2)), base)


def test_bad_input(tiny):
    cfg = tiny.config
    cond = np.zeros((1, 3, cfg.dim), np.float32)
    ok = np.full((1, cfg.n_q, 4), cfg.card)  # the special token is a valid input
    lm_lib.forward(tiny, ok, cond)
    with pytest.raises(ValueError, match="codes must lie in"):
        lm_lib.forward(tiny, ok + 1, cond)
    with pytest.raises(ValueError, match="codes must lie in"):
        lm_lib.forward(tiny, ok * 0 - 1, cond)
    with pytest.raises(ValueError, match=r"\[B, K=4, S\]"):
        lm_lib.forward(tiny, ok[:, :2], cond)
    with pytest.raises(ValueError, match="integer codes"):
        lm_lib.forward(tiny, ok.astype(np.float32), cond)
    with pytest.raises(ValueError, match="condition must be"):
        lm_lib.forward(tiny, ok, np.zeros((1, 3, cfg.dim + 1), np.float32))
    with pytest.raises(ValueError, match="condition must be"):
        lm_lib.init_cache(tiny, np.zeros((1, 3, cfg.condition_dim + 5), np.float32), 8)
    cache = lm_lib.init_cache(tiny, cond, 4)
    with pytest.raises(ValueError, match="do not fit a cache of 4"):
        lm_lib.step(tiny, np.full((1, cfg.n_q, 5), cfg.card), cache, 0)
    with pytest.raises(ValueError, match="do not fit a cache of 4"):
        lm_lib.step(tiny, np.full((1, cfg.n_q, 2), cfg.card), cache, 3)
    with pytest.raises(ValueError, match="batch mismatch"):
        lm_lib.step(tiny, np.full((2, cfg.n_q, 1), cfg.card), cache, 0)


def test_bf16_round_trip_and_layout(tiny, tmp_path):
    cfg = tiny.config
    rng = np.random.default_rng(2)
    seq = delayed(rng.integers(0, cfg.card, (2, cfg.n_q, 5)), cfg.delays, cfg.card)
    cond, _ = conditions(rng, 2, 3, cfg.dim, [3, 1])
    bf = tiny.astype(jnp.bfloat16)
    assert (
        bf.dtype == jnp.bfloat16
        and bf.linears[0].layout == "out_in"
        and tiny.linears[0].layout == "in_out"
    )
    ref = np.asarray(lm_lib.forward(tiny, seq, cond))
    err = rel_err(lm_lib.forward(bf, seq, cond), ref)
    print(f"tiny: bf16 copy vs fp32 model rel err {err:.2e}")
    assert err < TOL_BF16
    bf.save_pretrained(tmp_path)
    loaded = lm_lib.LMModel.from_pretrained(tmp_path)  # keeps the file's dtype
    assert loaded.dtype == jnp.bfloat16
    np.testing.assert_array_equal(lm_lib.forward(loaded, seq, cond), lm_lib.forward(bf, seq, cond))
    # a weights file that disagrees with its config: one error naming every problem
    bigger = LMConfig.from_dict({**cfg.to_dict(), "num_layers": 3, "card": 40})
    checkpoint.update_config(tmp_path / "bad", "lm", bigger.to_dict())
    os.replace(tmp_path / "lm.safetensors", tmp_path / "bad" / "lm.safetensors")
    with pytest.raises(checkpoint.CheckpointError) as e:
        lm_lib.LMModel.from_pretrained(tmp_path / "bad")
    msg = str(e.value)
    assert "transformer.layers.2.linear1.kernel" in msg and "emb.0.embedding" in msg
    os.replace(tmp_path / "bad" / "lm.safetensors", tmp_path / "lm.safetensors")
    up = lm_lib.LMModel.from_pretrained(tmp_path, dtype=jnp.float32)
    assert up.dtype == jnp.float32 and up.linears[0].layout == "in_out"
    assert rel_err(lm_lib.forward(up, seq, cond), ref) < TOL_BF16


def test_one_kernel_layout_on_disk(tiny, tmp_path):
    """Kernels are stored [in, out] whatever the dtype; a file without that marker (written before
    the layout was fixed, 16-bit kernels [out, in]) is refused with the command that re-converts."""
    from audiogen_jax.io.safetensors import SafetensorsFile

    bf = tiny.astype(jnp.bfloat16)
    bf.save_pretrained(tmp_path / "bf16")
    tiny.save_pretrained(tmp_path / "f32")
    files = {d: SafetensorsFile(tmp_path / d / "lm.safetensors") for d in ("bf16", "f32")}
    key = "transformer.layers.0.linear1.kernel"  # [D, F] in either file
    assert (
        files["bf16"][key].shape
        == files["f32"][key].shape
        == (tiny.config.dim, tiny.config.ffn_dim)
    )
    assert all(f.metadata[lm_lib.LAYOUT_KEY] == "in_out" for f in files.values())
    np.testing.assert_array_equal(
        files["bf16"].read(key).astype(np.float32),
        np.asarray(tiny.transformer.layers[0].linear1.kernel[...].astype(jnp.bfloat16), np.float32),
    )
    old = tmp_path / "old"
    checkpoint.save_module(bf, tmp_path / "lm.safetensors")  # runtime layout, no marker
    checkpoint.update_config(old, "lm", tiny.config.to_dict())
    os.replace(tmp_path / "lm.safetensors", old / "lm.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="older audiogen-jax.*convert --lm"):
        lm_lib.LMModel.from_pretrained(old)


# --------------------------------------------------------------------------------------------------
# Parity with audiocraft.


def xp_cfg_yaml(cfg: LMConfig, t5_name: str, extra: str = "") -> str:
    """A training config written the way audiocraft exports it: unresolved interpolations and
    obsolete keys."""
    stereo = (
        "channels: 2\ninterleave_stereo_codebooks:\n  use: true\n  per_timestep: false\n"
        if cfg.interleave_stereo
        else "channels: 1\n"
    )
    return f"""
device: cpu
dtype: float32
solver: {cfg.family}
{stereo}lm_model: transformer_lm
guidance_coef: {cfg.cfg_coef}
dora:
  dir: /checkpoint/${{oc.env:SOME_UNSET_USER_VARIABLE_XYZ}}/xps
dataset:
  segment_duration: {cfg.max_duration}
generate:
  lm:
    use_sampling: true
    top_k: 250
    top_p: 0.0
    temp: 1.0
classifier_free_guidance:
  training_dropout: 0.1
  inference_coef: ${{guidance_coef}}
attribute_dropout: {{}}
fuser:
  cross_attention_pos_emb: false
  cross_attention_pos_emb_scale: 1
  sum: []
  prepend: []
  cross: [description]
  input_interpolate: []
conditioners:
  args:
    merge_text_conditions_p: ${{oc.env:ANOTHER_UNSET_VARIABLE_XYZ}}
    drop_desc_p: 0.5
  description:
    model: t5
    t5:
      name: {t5_name}
      finetune: false
      word_dropout: 0.0
      normalize_text: false
codebooks_pattern:
  modeling: delay
  delay:
    delays: {list(cfg.delays)}
    flatten_first: 0
    empty_initial: 0
transformer_lm:
  dim: {cfg.dim}
  num_heads: {cfg.num_heads}
  num_layers: {cfg.num_layers}
  hidden_scale: {cfg.hidden_scale}
  n_q: {cfg.n_q}
  card: {cfg.card}
  dropout: 0.0
  emb_lr: null
  activation: gelu
  norm_first: true
  bias_ff: {str(cfg.bias_ff).lower()}
  bias_attn: {str(cfg.bias_attn).lower()}
  bias_proj: {str(cfg.bias_proj).lower()}
  past_context: null
  causal: true
  custom: false
  memory_efficient: true
  attention_as_float32: false
  layer_scale: null
  positional_embedding: sin
  xpos: false
  checkpointing: none
  weight_init: gaussian
  depthwise_init: current
  zero_bias_init: true
  norm: layer_norm
  cross_attention: false
  qk_layer_norm: false
  qk_layer_norm_cross: false
  attention_dropout: null
  kv_repeat: 1
  two_step_cfg: false
{extra}"""


def build_reference(cfg: LMConfig, seed: int):
    """audiocraft's LMModel at `cfg`, random weights rounded to fp16 (as the release stores them),
    norms randomized."""
    import torch

    torch.manual_seed(seed)
    ref = reference_lm(
        cfg,
        weight_init="gaussian",
        depthwise_init="current",
        zero_bias_init=True,
        cfg_coef=cfg.cfg_coef,
    ).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name or "bias" in name:  # ones/zeros at init would hide a mix-up
                p.add_(0.1 * torch.randn_like(p))
            p.copy_(p.half().float())
    state = dict(ref.state_dict())
    proj = torch.nn.Linear(cfg.condition_dim, cfg.dim)
    state[lm_params.LM_OUTPUT_PROJ + ".weight"] = proj.weight.detach()
    state[lm_params.LM_OUTPUT_PROJ + ".bias"] = proj.bias.detach()
    return ref, state


def reference_logits(ref, seq, cond, mask, prefill: int | None = None):
    """Teacher-forced logits (prefill=None) or streaming logits: `prefill` steps at once, then one
    at a time."""
    import torch

    seq_t = torch.from_numpy(np.asarray(seq, np.int64))
    tensors = {"description": (torch.from_numpy(cond), torch.from_numpy(mask))}
    with torch.no_grad():
        if prefill is None:
            return ref(seq_t, [], condition_tensors=tensors).numpy()
        outs = []
        with ref.streaming():
            outs.append(ref(seq_t[..., :prefill], [], condition_tensors=tensors))
            for s in range(prefill, seq_t.shape[-1]):
                outs.append(ref(seq_t[..., s : s + 1], [], condition_tensors=tensors))
        return torch.cat(outs, dim=2).numpy()


def our_streaming(model, seq, cond, prefill: int):
    S = seq.shape[-1]
    cache = lm_lib.init_cache(model, cond, S)
    logits, cache = lm_lib.step(model, seq[..., :prefill], cache, 0)
    outs = [logits]
    for s in range(prefill, S):
        logits, cache = lm_lib.step(model, seq[..., s : s + 1], cache, s)
        outs.append(logits)
    return np.concatenate([np.asarray(o) for o in outs], axis=2)


CASES = {
    "tiny": (LMConfig.tiny(), "t5-small-test", 50),
    # AudioGen-medium widths (D 1536, 24 heads, V 2048, K 4, t5-large width 1024) with 2 of its 48
    # layers.
    "medium2": (LMConfig.medium(num_layers=2), "t5-large", 50),
}


def make_case(name: str, tmp_path_factory) -> dict:
    from refutil import save_audiocraft_package

    cfg, t5_name, T = CASES[name]
    ref, state = build_reference(cfg, seed=0)
    d = tmp_path_factory.mktemp(f"lm_{name}")
    src = d / "state_dict.bin"
    save_audiocraft_package(src, state, xp_cfg_yaml(cfg, t5_name), half=True)
    lm_params.convert_lm(src, d / "out")
    rng = np.random.default_rng(0)
    B, L = 2, 7
    seq = delayed(rng.integers(0, cfg.card, (B, cfg.n_q, T)), cfg.delays, cfg.card)
    cond, mask = conditions(rng, B, L, cfg.dim, [7, 3])
    model = lm_lib.LMModel.from_pretrained(d / "out")
    return {
        "name": name,
        "cfg": cfg,
        "ref": ref,
        "state": state,
        "src": src,
        "out": d / "out",
        "seq": seq,
        "cond": cond,
        "mask": mask,
        "t5_name": t5_name,
        "model": model,
    }


@pytest.fixture(scope="module", params=sorted(CASES))
def converted(request, reference, tmp_path_factory):
    return make_case(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_case(reference, tmp_path_factory):
    return make_case("tiny", tmp_path_factory)


@pytest.mark.parity
def test_converted_config_and_conditioner(converted):
    import torch

    cfg, out = converted["cfg"], converted["out"]
    got = LMConfig.from_dict(checkpoint.read_config(out, "lm"))
    assert got == cfg
    assert checkpoint.read_config(out, "conditioner") == {
        "input_dim": cfg.condition_dim,
        "output_dim": cfg.dim,
        "name": converted["t5_name"],
    }
    from safetensors.numpy import load_file

    proj = load_file(str(out / "conditioner.safetensors"))
    w = converted["state"][lm_params.LM_OUTPUT_PROJ + ".weight"].to(torch.float16).float().numpy()
    b = converted["state"][lm_params.LM_OUTPUT_PROJ + ".bias"].to(torch.float16).float().numpy()
    np.testing.assert_array_equal(proj["kernel"], w.T)
    np.testing.assert_array_equal(proj["bias"], b)


@pytest.mark.parity
def test_teacher_forced_parity(converted):
    model = converted["model"]
    assert model.dtype == jnp.float32
    seq, cond, mask = converted["seq"], converted["cond"], converted["mask"]
    ref = reference_logits(converted["ref"], seq, cond, mask)
    ours = np.asarray(lm_lib.forward(model, seq, cond))
    assert ours.shape == ref.shape == (2, 4, seq.shape[-1], converted["cfg"].card)
    err = rel_err(ours, ref)
    print(f"{converted['name']}: teacher-forced rel err {err:.2e}")
    assert err < TOL_FP32


@pytest.mark.parity
def test_streaming_parity(converted):
    model = converted["model"]
    seq, cond, mask = converted["seq"], converted["cond"], converted["mask"]
    # single steps from the start, and (tiny only, to keep CI fast) a 4-step prompt prefill first
    for prefill in (1, 4) if converted["name"] == "tiny" else (1,):
        ref = reference_logits(converted["ref"], seq, cond, mask, prefill=prefill)
        err = rel_err(our_streaming(model, seq, cond, prefill), ref)
        print(f"{converted['name']}: streaming (prefill {prefill}) rel err {err:.2e}")
        assert err < TOL_FP32


@pytest.mark.parity
def test_bf16_conversion(converted, tmp_path):
    lm_params.convert_lm(converted["src"], tmp_path, dtype="bfloat16")
    model = lm_lib.LMModel.from_pretrained(tmp_path)
    assert model.dtype == jnp.bfloat16
    seq, cond = converted["seq"], converted["cond"]
    ref = reference_logits(converted["ref"], seq, cond, converted["mask"])
    err = rel_err(lm_lib.forward(model, seq, cond), ref)
    print(f"{converted['name']}: bf16 teacher-forced rel err {err:.2e}")
    assert err < TOL_BF16


@pytest.mark.parity
def test_synthetic_state_dict_keys_match_reference(reference):
    """The full-size memory benchmark builds its state dict by hand: its keys and shapes must be the
    real ones."""
    cfg = LMConfig.tiny()
    _, state = build_reference(cfg, seed=1)
    synthetic = load_bench().audiocraft_lm_shapes(cfg)
    assert {k: tuple(v.shape) for k, v in state.items()} == synthetic
    medium = load_bench().audiocraft_lm_shapes(LMConfig.medium())
    assert sum(int(np.prod(s)) for s in medium.values()) == 1_839_131_136


@pytest.mark.parity
def test_biases_parity(reference, tmp_path):
    """bias_ff / bias_attn / bias_proj = true (AudioGen has none; the port supports them):
    teacher-forced parity."""
    from refutil import save_audiocraft_package

    cfg = LMConfig.from_dict(
        {**LMConfig.tiny().to_dict(), "bias_ff": True, "bias_attn": True, "bias_proj": True}
    )
    ref, state = build_reference(cfg, seed=3)
    assert any(k.endswith("in_proj_bias") for k in state) and "linears.0.bias" in state
    save_audiocraft_package(
        tmp_path / "sd.bin", state, xp_cfg_yaml(cfg, "t5-small-test"), half=True
    )
    lm_params.convert_lm(tmp_path / "sd.bin", tmp_path / "out")
    model = lm_lib.LMModel.from_pretrained(tmp_path / "out")
    rng = np.random.default_rng(3)
    seq = delayed(rng.integers(0, cfg.card, (2, cfg.n_q, 20)), cfg.delays, cfg.card)
    cond, mask = conditions(rng, 2, 5, cfg.dim, [5, 2])
    err = rel_err(lm_lib.forward(model, seq, cond), reference_logits(ref, seq, cond, mask))
    print(f"tiny with biases: teacher-forced rel err {err:.2e}")
    assert err < TOL_FP32


# --------------------------------------------------------------------------------------------------
# Conversion errors.


def _mutated_package(converted, tmp_path, *, drop=(), add=None, reshape=None, extra_yaml=""):
    from refutil import save_audiocraft_package

    state = {k: v for k, v in converted["state"].items() if k not in drop}
    state.update(add or {})
    for k, shape in (reshape or {}).items():
        state[k] = state[k].new_zeros(shape)
    src = tmp_path / "bad.bin"
    save_audiocraft_package(
        src, state, xp_cfg_yaml(converted["cfg"], converted["t5_name"], extra_yaml), half=True
    )
    return src


@pytest.mark.parity
def test_conversion_errors(tiny_case, tmp_path):
    import torch

    converted = tiny_case
    bad = _mutated_package(
        converted,
        tmp_path,
        drop=["transformer.layers.1.linear2.weight"],
        add={"transformer.layers.0.extra.weight": torch.zeros(3)},
        reshape={"linears.2.weight": (5, 7), "emb.0.weight": (3, 3)},
    )
    with pytest.raises(ConversionError) as e:
        lm_params.convert_lm(bad, tmp_path / "out")
    msg = str(e.value)
    assert (
        "transformer.layers.0.extra.weight" in msg and "transformer.layers.1.linear2.kernel" in msg
    )
    assert not (tmp_path / "out" / "lm.safetensors").exists()
    bad = _mutated_package(
        converted, tmp_path, reshape={"linears.2.weight": (5, 7), "emb.0.weight": (3, 3)}
    )
    with pytest.raises(ConversionError) as e:
        lm_params.convert_lm(bad, tmp_path / "out")
    assert "linears.2.kernel" in str(e.value) and "emb.0.embedding" in str(e.value)
    assert not (tmp_path / "out" / "lm.safetensors").exists()
    bad = _mutated_package(converted, tmp_path, drop=[lm_params.LM_OUTPUT_PROJ + ".weight"])
    with pytest.raises(ConversionError, match="output_proj"):
        lm_params.convert_lm(bad, tmp_path / "out")


@pytest.mark.parity
def test_unsupported_settings_refused(tiny_case, tmp_path):
    import yaml

    converted = tiny_case

    text = xp_cfg_yaml(converted["cfg"], converted["t5_name"])
    tree = yaml.safe_load(text)
    tree["transformer_lm"].update(
        positional_embedding="rope", qk_layer_norm=True, layer_scale=0.1, kv_repeat=2
    )
    tree["transformer_lm"]["norm_first"] = False
    tree["codebooks_pattern"]["modeling"] = "unroll"
    xp = YamlConfig(tree)
    with pytest.raises(ValueError) as e:
        lm_params.lm_config_from_audiocraft(xp, None)
    for word in (
        "positional_embedding",
        "qk_layer_norm",
        "layer_scale",
        "kv_repeat",
        "norm_first",
        "modeling",
    ):
        assert word in str(e.value)
    # through the converter, as a ConversionError naming the file
    from refutil import save_audiocraft_package

    src = tmp_path / "rope.bin"
    save_audiocraft_package(src, converted["state"], yaml.safe_dump(tree), half=True)
    with pytest.raises(ConversionError, match="positional_embedding"):
        lm_params.convert_lm(src, tmp_path / "out")


# --------------------------------------------------------------------------------------------------
# Full size (outside CI: `pytest -m slow tests/test_lm.py`).


@pytest.mark.slow
@pytest.mark.parity
def test_full_size_checkpoint(reference, tmp_path_factory):
    """Converts a random 1.84B-parameter fp16 checkpoint, loads it, and compares the first steps'
    logits.

    Memory: the reference (7.4 GB fp32) runs first and is freed before our model (7.4 GB) is loaded.
    """
    import gc

    import torch

    cfg = LMConfig.medium()
    d = tmp_path_factory.mktemp("lm_full")
    src = str(d / "state_dict.bin")
    assert load_bench().write_random_checkpoint(src, cfg) == 1_839_131_136
    rng = np.random.default_rng(0)
    seq = delayed(rng.integers(0, cfg.card, (2, cfg.n_q, 8)), cfg.delays, cfg.card)
    cond, mask = conditions(rng, 2, 6, cfg.dim, [6, 2])

    state = torch.load(src, mmap=True, weights_only=True)["best_state"]
    state = {k: v for k, v in state.items() if not k.startswith("condition_provider.")}
    with torch.device("meta"):  # no init: every weight comes from the checkpoint
        ref = reference_lm(cfg)
    ref.load_state_dict(state, strict=True, assign=True)
    ref = ref.float().eval()
    del state
    want_tf = reference_logits(ref, seq, cond, mask)
    want_stream = reference_logits(ref, seq, cond, mask, prefill=1)
    del ref
    gc.collect()

    lm_params.convert_lm(src, d / "out")
    os.remove(src)
    model = lm_lib.LMModel.from_pretrained(d / "out")
    err_tf = rel_err(lm_lib.forward(model, seq, cond), want_tf)
    err_stream = rel_err(our_streaming(model, seq, cond, prefill=1), want_stream)
    print(f"full size: teacher-forced rel err {err_tf:.2e}, streaming rel err {err_stream:.2e}")
    assert err_tf < TOL_FP32 and err_stream < TOL_FP32
