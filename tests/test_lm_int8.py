"""The opt-in int8 LM (`int8.py`, `LMModel.astype(jnp.int8)`, W8A8): structure, its error against
float32, caching, loading.

int8 is beyond the reference (audiocraft has no quantized LM), so the comparison is with our own
float32 model on the same random weights. Metric: max |int8 - fp32| / max |fp32| over all
teacher-forced logits. Measured values and tolerances are in docs/parity.md ("LM in
bfloat16 and int8").
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_lm import conditions, delayed, rel_err

from audiogen_jax import lm as lm_lib
from audiogen_jax.config import LMConfig

# Measured (docs/parity.md): tiny 1.7e-2, medium widths with 2 layers 2.0e-2 (8 layers:
# 3.2e-2).
TOL_INT8 = 5e-2
# Cached int8 steps vs the int8 forward on the tiny model: measured 2.0e-7 (docs/parity.md).
TOL_SELF = 1e-4


@pytest.fixture(scope="module", params=["tiny", "medium2"])
def pair(request):
    cfg = LMConfig.tiny() if request.param == "tiny" else LMConfig.medium(num_layers=2)
    model = lm_lib.LMModel(cfg, rngs=nnx.Rngs(0))
    return request.param, model, model.astype(jnp.int8)


def inputs(cfg, T=20):
    rng = np.random.default_rng(0)
    seq = delayed(rng.integers(0, cfg.card, (2, cfg.n_q, T)), cfg.delays, cfg.card)
    cond, _ = conditions(rng, 2, 7, cfg.dim, [7, 3])
    return seq, cond


def test_int8_structure(pair):
    _, fp32, q = pair
    assert q.dtype == jnp.int8
    layer = q.transformer.layers[0]
    D, F = q.config.dim, q.config.ffn_dim
    assert layer.linear1.kernel[...].shape == (F, D) and layer.linear1.kernel[...].dtype == jnp.int8
    assert layer.linear1.kernel_scale[...].shape == (F,)
    assert (
        layer.norm1.scale[...].dtype == jnp.float32 and q.emb[0].embedding[...].dtype == jnp.float32
    )
    assert fp32.transformer.layers[0].linear1.kernel_scale is None
    # dequantized kernels are within half a quantization step of the float ones (measured 0.49996
    # steps at most: float rounding at ties)
    w = np.asarray(fp32.transformer.layers[0].linear1.kernel[...]).T
    step = np.asarray(layer.linear1.kernel_scale[...])[:, None]
    deq = np.asarray(layer.linear1.kernel[...], np.float32) * step
    assert np.max(np.abs(deq - w) / step) < 0.5001


def test_int8_error_against_fp32(pair):
    name, fp32, q = pair
    seq, cond = inputs(fp32.config)
    ref = np.asarray(lm_lib.forward(fp32, seq, cond))
    got = np.asarray(lm_lib.forward(q, seq, cond))
    err = rel_err(got, ref)
    print(f"{name}: int8 vs fp32 rel err {err:.2e}")
    assert 0 < err < TOL_INT8


def test_int8_cached_steps_equal_forward():
    q = lm_lib.LMModel(LMConfig.tiny(), rngs=nnx.Rngs(0)).astype(jnp.int8)
    seq, cond = inputs(q.config, T=9)
    full = np.asarray(lm_lib.forward(q, seq, cond))
    S = seq.shape[-1]
    cache = lm_lib.init_cache(q, cond, S)
    outs = []
    for s in range(S):
        logits, cache = lm_lib.step(q, seq[..., s : s + 1], cache, s)
        outs.append(np.asarray(logits))
    assert rel_err(np.concatenate(outs, axis=2), full) < TOL_SELF


def test_int8_from_pretrained_and_refusals(tmp_path):
    cfg = LMConfig.tiny()
    model = lm_lib.LMModel(cfg, rngs=nnx.Rngs(1)).astype(jnp.bfloat16)
    model.save_pretrained(tmp_path)
    q = lm_lib.LMModel.from_pretrained(tmp_path, dtype=jnp.int8)
    direct = model.astype(jnp.int8)
    seq, cond = inputs(cfg)
    np.testing.assert_array_equal(lm_lib.forward(q, seq, cond), lm_lib.forward(direct, seq, cond))
    with pytest.raises(ValueError, match="cannot be converted back"):
        q.astype(jnp.float32)
    with pytest.raises(ValueError, match="float32, bfloat16, float16 or int8"):
        model.astype(jnp.float64)
