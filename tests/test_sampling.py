"""Sampling: CFG, temperature, top-k, top-p and greedy against the reference's own selection code.

The reference (`LMModel._sample_next_token` with `audiocraft.utils.utils.sample_top_k/top_p`)
draws with `torch.multinomial`, whose random stream JAX cannot reproduce. So the reference runs
with `multinomial` replaced by a probe that records the distribution it was asked to draw from;
our draws are then compared with that distribution by a chi-square goodness-of-fit test. Greedy
ids must match exactly. Tolerances: see docs/parity.md, "Sampling".
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from audiogen_jax.sampling import (
    SamplingParams,
    apply_cfg,
    filtered_probs,
    sample_next,
    top_k_filter,
    top_p_filter,
)

B, K, V = 2, 4, 32
N_DRAWS = 20_000
ALPHA = 1e-6  # false-alarm rate of each chi-square test (fixed keys: the outcome is deterministic)
CFG_JIT_ULPS = 2.0  # measured max: 1 ulp of the terms (docs/parity.md)
PROBS_TOL = 1e-6  # measured max |ours - reference| filtered probability: 4.2e-7 (docs/parity.md)

_sample_jit = jax.jit(sample_next, static_argnames="params")
# N draws at once: one key per draw, the same logits. Eager (op by op) compiles less than one
# jit per setting; `_sample_jit` covers the jitted path.
_sample_many = jax.vmap(sample_next, in_axes=(0, None, None))


def _logits(seed: int, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cond = (rng.standard_normal((B, K, V)) * scale).astype(np.float32)
    uncond = (rng.standard_normal((B, K, V)) * scale).astype(np.float32)
    return cond, uncond


class _Callable:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _reference_select(cond: np.ndarray, uncond: np.ndarray, params: SamplingParams):
    """Runs the reference's `_sample_next_token` on given cond/uncond logits.

    Returns the greedy ids `[B, K]` (int64) when not sampling, else the distribution over ids
    `[B, K, V]` (float64) that the reference's multinomial would draw from.
    """
    import torch
    from audiocraft.models.lm import LMModel
    from audiocraft.utils import utils as ref_utils

    captured = {}

    def probe_multinomial(probs, num_samples, replacement=False, *, generator=None):
        # Record the distribution; return every position so the caller's id mapping shows.
        captured["probs"] = probs.detach().clone()
        return torch.arange(probs.shape[-1]).expand(probs.shape).clone()

    def fake_lm(sequence, conditions, condition_tensors):
        both = torch.cat([torch.from_numpy(cond), torch.from_numpy(uncond)], dim=0)
        return both[:, :, None, :]  # [2B, K, S=1, V]

    # `model = self if self._fsdp is None else self._fsdp`: a callable stand-in plays the LM.
    owner = types.SimpleNamespace(
        _fsdp=_Callable(fake_lm), cfg_coef=params.cfg_coef, two_step_cfg=False
    )
    original = ref_utils.multinomial
    ref_utils.multinomial = probe_multinomial
    try:
        ids = LMModel._sample_next_token(
            owner,
            torch.zeros(B, K, 1, dtype=torch.long),
            {"description": None},
            {},
            use_sampling=params.use_sampling,
            temp=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            cfg_coef=params.cfg_coef,
        )
    finally:
        ref_utils.multinomial = original
    if "probs" not in captured:
        return ids[..., 0].numpy()
    # ids[..., j] is the vocabulary id of the j-th candidate the reference would draw from.
    dist = np.zeros((B, K, V))
    np.put_along_axis(dist, ids.numpy(), captured["probs"].double().numpy(), axis=-1)
    return dist


def _draws(cond, uncond, params: SamplingParams, seed: int = 0) -> np.ndarray:
    logits = apply_cfg(jnp.asarray(cond), jnp.asarray(uncond), params.cfg_coef)
    keys = jax.random.split(jax.random.key(seed), N_DRAWS)
    ids = _sample_many(keys, logits, params)
    return np.asarray(ids)  # [N, B, K]


def _chi_square_pvalue(ids_NBK: np.ndarray, expected_BKV: np.ndarray) -> float:
    """Goodness of fit of the draws to `expected`, pooled over rows; bins with E < 5 merged."""
    counts = np.stack(
        [np.bincount(ids_NBK[:, b, k], minlength=V) for b in range(B) for k in range(K)]
    )
    expected = expected_BKV.reshape(B * K, V) * ids_NBK.shape[0]
    chi2, dof = 0.0, 0
    for observed, exp in zip(counts, expected, strict=True):
        # An id the reference can never draw must never be drawn.
        assert observed[exp == 0].sum() == 0, "drew an id outside the kept set"
        big = exp >= 5
        obs_bins = np.append(observed[big], observed[~big].sum())
        exp_bins = np.append(exp[big], exp[~big].sum())
        if exp_bins[-1] == 0:
            obs_bins, exp_bins = obs_bins[:-1], exp_bins[:-1]
        chi2 += ((obs_bins - exp_bins) ** 2 / exp_bins).sum()
        dof += len(exp_bins) - 1
    if dof == 0:  # every row has a single possible id, already checked above
        return 1.0
    return float(stats.chi2.sf(chi2, dof))


CASES = {
    "plain": SamplingParams(top_k=0, cfg_coef=3.0),
    "temperature": SamplingParams(top_k=0, temperature=0.7, cfg_coef=3.0),
    "top_k": SamplingParams(top_k=5, cfg_coef=3.0),
    "top_k_hot": SamplingParams(top_k=12, temperature=1.5, cfg_coef=2.0),
    "top_p": SamplingParams(top_k=0, top_p=0.8, cfg_coef=3.0),
    "top_p_over_top_k": SamplingParams(top_k=3, top_p=0.6, cfg_coef=1.0),
}


@pytest.mark.parity
@pytest.mark.parametrize("name", sorted(CASES))
def test_draws_follow_reference_distribution(reference, name):
    params = CASES[name]
    cond, uncond = _logits(seed=sorted(CASES).index(name), scale=1.0)
    expected = _reference_select(cond, uncond, params)
    ours = filtered_probs(
        apply_cfg(jnp.asarray(cond), jnp.asarray(uncond), params.cfg_coef), params
    )
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=0, atol=PROBS_TOL)
    assert _chi_square_pvalue(_draws(cond, uncond, params), expected) > ALPHA


@pytest.mark.parity
def test_chi_square_detects_a_wrong_distribution(reference):
    """Power check: the same test rejects draws made at a different temperature."""
    cond, uncond = _logits(seed=7, scale=1.0)
    expected = _reference_select(cond, uncond, SamplingParams(top_k=0, temperature=1.0))
    draws = _draws(cond, uncond, SamplingParams(top_k=0, temperature=1.2))
    assert _chi_square_pvalue(draws, expected) < ALPHA


@pytest.mark.parity
@pytest.mark.parametrize("coef", [3.0, 1.0, 0.0])
def test_greedy_matches_reference(reference, coef):
    params = SamplingParams(use_sampling=False, cfg_coef=coef)
    for seed in range(5):
        cond, uncond = _logits(seed)
        expected = _reference_select(cond, uncond, params)
        logits = apply_cfg(jnp.asarray(cond), jnp.asarray(uncond), coef)
        got = _sample_jit(jax.random.key(0), logits, params=params)
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parity
def test_cfg_matches_reference_formula(reference):
    import torch

    cond, uncond = _logits(3)
    tc, tu = torch.from_numpy(cond), torch.from_numpy(uncond)
    guide = jax.jit(apply_cfg, static_argnums=2)
    for coef in (3.0, 1.0, 0.5):
        want = (tu + (tc - tu) * coef).numpy()
        # Eager: the same float32 operations in the same order, bit for bit.
        np.testing.assert_array_equal(np.asarray(apply_cfg(cond, uncond, coef)), want)
        # Under jit XLA fuses the multiply-add (one rounding instead of two): measured at most
        # 1 ulp of the terms' magnitude |uncond| + |(cond - uncond) * coef| (docs/parity.md).
        terms = np.abs(uncond) + np.abs((cond - uncond) * coef)
        ulps = np.abs(np.asarray(guide(cond, uncond, coef)) - want) / np.spacing(terms)
        assert ulps.max() <= CFG_JIT_ULPS


def test_cfg_coef_one_gives_conditional_logits():
    cond, uncond = _logits(4)
    guided = apply_cfg(jnp.asarray(cond), jnp.asarray(uncond), 1.0)
    # uncond + (cond - uncond) rounds twice: equal to cond within an ulp of the terms.
    terms = np.abs(uncond) + np.abs(cond - uncond)
    assert (np.abs(np.asarray(guided) - cond) <= np.spacing(terms)).all()
    greedy = SamplingParams(use_sampling=False, cfg_coef=1.0)
    np.testing.assert_array_equal(
        np.asarray(sample_next(jax.random.key(0), guided, greedy)), np.argmax(cond, axis=-1)
    )


def test_top_k_one_is_argmax():
    cond, _ = _logits(5)
    params = SamplingParams(top_k=1, temperature=1.3)
    for seed in range(20):
        got = _sample_jit(jax.random.key(seed), jnp.asarray(cond), params=params)
        np.testing.assert_array_equal(np.asarray(got), np.argmax(cond, axis=-1))


def test_top_k_keeps_ties_at_kth_value():
    probs = jnp.asarray([0.3, 0.2, 0.2, 0.2, 0.1], jnp.float32)
    kept = np.asarray(top_k_filter(probs, 2))
    np.testing.assert_allclose(kept, [1 / 3, 2 / 9, 2 / 9, 2 / 9, 0.0], rtol=1e-6)
    # Sampling with the tie: every tied id is drawn, the last one never.
    logits = jnp.log(probs)
    ids = jax.vmap(lambda k: sample_next(k, logits, SamplingParams(top_k=2)))(
        jax.random.split(jax.random.key(0), 2000)
    )
    assert set(np.unique(np.asarray(ids))) == {0, 1, 2, 3}


@pytest.mark.parity
def test_top_k_ties_match_reference(reference):
    import torch
    from audiocraft.utils import utils as ref_utils

    probs = np.asarray([[0.05, 0.2, 0.3, 0.2, 0.2, 0.05]], np.float32)
    captured = {}
    original = ref_utils.multinomial
    ref_utils.multinomial = lambda p, num_samples: captured.setdefault("p", p.clone())
    try:
        ref_utils.sample_top_k(torch.from_numpy(probs.copy()), k=3)
    finally:
        ref_utils.multinomial = original
    np.testing.assert_allclose(
        np.asarray(top_k_filter(jnp.asarray(probs), 3)),
        captured["p"].numpy(),
        rtol=0,
        atol=PROBS_TOL,
    )


def test_top_p_keeps_the_crossing_id():
    probs = jnp.asarray([0.1, 0.5, 0.25, 0.15], jnp.float32)
    # Sorted: 0.5, 0.25, 0.15, 0.1; mass before each: 0, 0.5, 0.75, 0.9.
    np.testing.assert_allclose(
        np.asarray(top_p_filter(probs, 0.6)), [0, 2 / 3, 1 / 3, 0], rtol=1e-6
    )
    np.testing.assert_allclose(np.asarray(top_p_filter(probs, 0.4)), [0, 1, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(top_p_filter(probs, 1.0)), probs, rtol=1e-6)


def test_same_key_same_draws_other_key_other_draws():
    cond, _ = _logits(6)
    params = SamplingParams(top_k=10)
    a = _sample_jit(jax.random.key(42), jnp.asarray(cond), params=params)
    b = _sample_jit(jax.random.key(42), jnp.asarray(cond), params=params)
    c = _sample_jit(jax.random.key(43), jnp.asarray(cond), params=params)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.shape == (B, K) and a.dtype == jnp.int32
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_keyword_spelling_equals_params():
    cond, _ = _logits(8)
    key = jax.random.key(1)
    by_params = sample_next(key, jnp.asarray(cond), SamplingParams(top_k=7, temperature=0.9))
    by_words = sample_next(key, jnp.asarray(cond), use_sampling=True, top_k=7, temperature=0.9)
    np.testing.assert_array_equal(np.asarray(by_params), np.asarray(by_words))
    with pytest.raises(ValueError, match="either params or keyword"):
        sample_next(key, jnp.asarray(cond), SamplingParams(), top_k=3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(top_k=-1), "top_k must be >= 0"),
        (dict(top_k=2.5), "top_k must be an int"),
        (dict(top_p=1.5), r"top_p must be in \[0, 1\]"),
        (dict(top_p=-0.1), r"top_p must be in \[0, 1\]"),
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(temperature=-1.0), "temperature must be > 0"),
        (dict(temperature=float("nan")), "temperature must be finite"),
        (dict(cfg_coef=float("inf")), "cfg_coef must be finite"),
        (dict(top_p=float("nan")), "top_p must be finite"),
        (dict(use_sampling=1), "use_sampling must be a bool"),
    ],
)
def test_params_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_params_card_check_and_hashable():
    assert SamplingParams(use_sampling=False, temperature=0.0).temperature == 0.0  # greedy: ok
    with pytest.raises(ValueError, match="exceeds the codebook size 32"):
        SamplingParams(top_k=250).validate(32)
    with pytest.raises(ValueError, match="exceeds the codebook size"):
        sample_next(jax.random.key(0), jnp.zeros((2, 16)), SamplingParams(top_k=17))
    SamplingParams(top_k=250, top_p=0.9).validate(32)  # top_k unused when top_p > 0
    assert hash(SamplingParams(temperature=1)) == hash(SamplingParams(temperature=1.0))
    assert {SamplingParams(): 1}[SamplingParams()] == 1


def test_params_from_lm_config():
    from audiogen_jax.config import LMConfig

    medium = LMConfig.medium()
    params = SamplingParams.from_lm_config(medium)
    assert (
        params.use_sampling,
        params.top_k,
        params.top_p,
        params.temperature,
        params.cfg_coef,
    ) == (medium.use_sampling, medium.top_k, medium.top_p, medium.temperature, medium.cfg_coef)
    assert SamplingParams.from_lm_config(LMConfig.tiny(), top_k=10).top_k == 10
    with pytest.raises(ValueError, match="exceeds the codebook size 32"):
        SamplingParams.from_lm_config(LMConfig.tiny())  # its stored top_k=250 > card=32
