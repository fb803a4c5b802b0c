"""Sampled generation through the real compiled loop: are top-k, top-p, temperature and cfg_coef
the ones each step uses?

`tests/test_sampling.py` checks the sampler against the reference on given logits; this file checks
its wiring into the scan. Generation runs through the public entry points (`AudioGen.generate`
after `set_generation_params`, and the CLI) on the offline `tiny-random` model. The distribution a
step drew from is then rebuilt independently of the loop: the LM's own teacher-forced `forward` on
the generated codes (laid out by the delay pattern) gives every step's conditional and null
logits at once, guided here in float64 (`step_logits`). The compiled loop computes the same logits
one cached step at a time, so they agree to rounding: measured max |loop - teacher-forced| guided
logit 6.0e-6 on this model (docs/parity.md, "Sampling inside generation"); `LOGIT_TOL` allows 8x.

Each test here fails if the loop ignores `top_k` and `temperature` (checked by making exactly that
change to `generate.py`; see docs/parity.md).
"""

from __future__ import annotations

import contextlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from audiogen_jax import cli, patterns, t5
from audiogen_jax import lm as lmlib
from audiogen_jax.audiogen import AudioGen

DESCRIPTIONS = ["dog barking", "sirens of an emergency vehicle in a busy city street", "rain"]
DURATION = 1.0  # 50 frames at 50 Hz: 3 x 4 x 50 = 600 sampled tokens per run
# Loop vs teacher-forced guided logits: measured max |diff| 6.0e-6 (|logits| <= 6.8), and the
# nucleus mass before an id (near-ties of TOL counted as not before) within 1.5e-6 of the loop's
# float32 value; docs/parity.md, "Sampling inside generation".
LOGIT_TOL = 5e-5
MASS_TOL = 1e-5
# Standard errors allowed between the observed and expected mean surprisal of a run's tokens
# (measured |z| 0.63 at T 1, 1.24 at T 4; docs/parity.md). Deterministic: the seeds are fixed.
Z_MAX = 5.0
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return AudioGen.from_pretrained("tiny-random", cache_dir=str(tmp_path_factory.mktemp("cache")))


_RUNS: dict[tuple, np.ndarray] = {}


@pytest.fixture(scope="module", autouse=True)
def _free_runs():
    yield
    _RUNS.clear()


def generate(model, seed: int, **settings) -> np.ndarray:
    """codes [B, K, T] of `DESCRIPTIONS` with these `set_generation_params` settings (memoised)."""
    key = (seed, tuple(sorted(settings.items())))
    if key not in _RUNS:
        model.set_generation_params(duration=DURATION, **settings)
        _, codes = model.generate(DESCRIPTIONS, seed=seed, return_tokens=True)
        _RUNS[key] = codes
    return _RUNS[key]


def greedy(model) -> np.ndarray:
    return generate(model, 0, use_sampling=False)


def step_logits(model, codes_BKT: np.ndarray, cfg_coef: float) -> np.ndarray:
    """The guided logits each generated code was drawn from, rebuilt without the loop.

    Teacher-forced: the LM's `forward` on the codes' delayed layout, for `[descriptions; nulls]`;
    position s - 1 predicts step s, and code (k, t) sits at step t + 1 + delay_k.

    Returns:
      float64 [B, K, T, V]: guided logits aligned with `codes_BKT`.
    """
    cfg = model.lm.config
    B, K, T = codes_BKT.shape
    ids_2BL, mask_2BL = t5.tokenize(model.tokenizer, DESCRIPTIONS + [None] * B)
    condition_2BLD = model.conditioner(jnp.asarray(ids_2BL), jnp.asarray(mask_2BL))
    seq_BKS = np.asarray(patterns.build_delayed(codes_BKT, cfg.delays, cfg.card))
    logits_2BKSV = np.asarray(
        lmlib.forward(model.lm, jnp.asarray(np.concatenate([seq_BKS, seq_BKS])), condition_2BLD),
        np.float64,
    )
    cond, uncond = logits_2BKSV[:B], logits_2BKSV[B:]
    guided_BKSV = uncond + (cond - uncond) * cfg_coef
    return np.stack([guided_BKSV[:, k, d : d + T] for k, d in enumerate(cfg.delays)], axis=1)


def picked(logits_BKTV: np.ndarray, codes_BKT: np.ndarray) -> np.ndarray:
    """logits[b, k, t, codes[b, k, t]]: [B, K, T]."""
    return np.take_along_axis(logits_BKTV, codes_BKT[..., None], axis=-1)[..., 0]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def argmax_share(model, codes_BKT: np.ndarray, cfg_coef: float = 3.0) -> float:
    """The share of codes that are the argmax of their own step's guided logits (to LOGIT_TOL)."""
    logits = step_logits(model, codes_BKT, cfg_coef)
    return float(np.mean(picked(logits, codes_BKT) >= logits.max(axis=-1) - LOGIT_TOL))


@contextlib.contextmanager
def count_compilations():
    """Counts XLA compilations (every program, not only the generation loop) inside the block."""
    seen: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_top_k_1_sampling_is_greedy(model):
    expected = greedy(model)
    assert expected.shape == (3, 4, 50)
    # The greedy codes are the argmax of their own steps (so the checks below mean something).
    assert argmax_share(model, expected) == 1.0
    for seed in (0, 1):
        np.testing.assert_array_equal(generate(model, seed, top_k=1), expected)


def test_cli_top_k_1_sampling_is_greedy(model, tmp_path, capsys):
    # Same descriptions and duration as the runs above: the CLI's programs are already compiled.
    cache = os.path.dirname(model.directory)
    files = {}
    for name, options in [("greedy", ["--greedy"]), ("top1", ["--top-k", "1", "--seed", "3"])]:
        argv = ["generate", *DESCRIPTIONS, "--model", "tiny-random", "--duration", str(DURATION)]
        argv += ["--cache-dir", cache, "--out-dir", str(tmp_path / name), "--no-progress"]
        assert cli.main(argv + options) == 0, capsys.readouterr().err
        paths = capsys.readouterr().out.split()
        assert len(paths) == len(DESCRIPTIONS)
        files[name] = [soundfile.read(path, dtype="int16")[0] for path in paths]
    for top1, greedy_wav in zip(files["top1"], files["greedy"], strict=True):
        np.testing.assert_array_equal(top1, greedy_wav)


def test_sampled_ids_lie_in_the_guided_top_k(model):
    k = 3
    codes = generate(model, 0, top_k=k, temperature=1.5)
    logits = step_logits(model, codes, 3.0)
    kth = np.sort(logits, axis=-1)[..., -k]
    outside = int((picked(logits, codes) < kth - LOGIT_TOL).sum())
    assert outside == 0, f"{outside} of {codes.size} codes outside the top {k}"
    # It sampled: many codes are not the argmax (so membership is not greedy's by default).
    assert argmax_share(model, codes) < 0.8


def test_sampled_ids_lie_in_the_top_p_nucleus(model):
    p, temperature = 0.5, 0.7
    codes = generate(model, 0, top_k=0, top_p=p, temperature=temperature)
    logits = step_logits(model, codes, 3.0)
    probs = softmax(logits / temperature)
    # The nucleus keeps an id when the mass of the ids ranked before it is <= p (the reference's
    # `cumsum - sorted > p` drop rule). Ids within LOGIT_TOL of the picked one may be ranked
    # either way by the loop's rounding, so they do not count as before it.
    ahead = logits > picked(logits, codes)[..., None] + LOGIT_TOL
    mass_before = (probs * ahead).sum(axis=-1)
    outside = int((mass_before > p + MASS_TOL).sum())
    assert outside == 0, f"{outside} of {codes.size} codes outside the top-p nucleus"
    assert argmax_share(model, codes) < 0.9


def test_low_temperature_approaches_greedy(model):
    expected = greedy(model)
    logits = step_logits(model, expected, 3.0)
    top2 = np.sort(logits, axis=-1)[..., -2:]
    # At T = (smallest top-2 margin on the greedy path) / 40 every other id has probability
    # < e^-40 at every step: sampling must reproduce greedy.
    tiny_t = float((top2[..., 1] - top2[..., 0]).min()) / 40
    np.testing.assert_array_equal(generate(model, 0, top_k=0, temperature=tiny_t), expected)
    # Cooling moves the tokens towards greedy's choices (T = 4 and 1 are the entropy test's runs).
    hot, warm = (
        argmax_share(model, generate(model, 0, top_k=0, temperature=t)) for t in (4.0, 1.0)
    )
    print(f"share of argmax tokens: T=4 {hot:.3f}, T=1 {warm:.3f}, T={tiny_t:.2g} 1")
    assert hot < warm < 0.6


def surprisal_z(model, codes: np.ndarray, temperature: float) -> tuple[float, float]:
    """Mean surprisal -log p(code) under the untempered guided distribution p, and its z-score
    against the expectation if each step drew from softmax(logits / temperature)."""
    logits = step_logits(model, codes, 3.0)
    surprisal_V = -np.log(softmax(logits))
    q = softmax(logits / temperature)
    mean_cell = (q * surprisal_V).sum(-1)
    var_cell = (q * surprisal_V**2).sum(-1) - mean_cell**2
    observed = picked(surprisal_V, codes)
    z = (observed.sum() - mean_cell.sum()) / np.sqrt(var_cell.sum())
    return float(observed.mean()), float(z)


def test_high_temperature_raises_per_step_entropy(model):
    # top_k=0: the whole codebook, so temperature is the only thing shaping each step.
    cool, z_cool = surprisal_z(model, generate(model, 0, top_k=0, temperature=1.0), 1.0)
    hot, z_hot = surprisal_z(model, generate(model, 0, top_k=0, temperature=4.0), 4.0)
    print(f"mean surprisal T=1: {cool:.3f} (z {z_cool:+.2f}); T=4: {hot:.3f} (z {z_hot:+.2f})")
    # Each run's tokens are as surprising as draws from its own tempered distribution ...
    assert abs(z_cool) < Z_MAX, f"T=1 run: z = {z_cool:.2f}"
    assert abs(z_hot) < Z_MAX, f"T=4 run: z = {z_hot:.2f}"
    # ... and a hot run's are more surprising: a higher per-step entropy.
    assert hot > cool


def test_new_cfg_coef_changes_output_without_recompiling(model):
    # top_k=1: each token must be the argmax of its step's guided logits, so which coefficient the
    # loop used can be read off the tokens.
    before = generate(model, 0, top_k=1, cfg_coef=3.0)  # compiled here or in an earlier test
    for coef in (1.0, 5.0):
        model.set_generation_params(duration=DURATION, top_k=1, cfg_coef=coef)
        with count_compilations() as compiled:
            _, codes = model.generate(DESCRIPTIONS, seed=0, return_tokens=True)
        assert compiled == [], f"cfg_coef={coef} compiled {len(compiled)} program(s)"
        assert not np.array_equal(codes, before)
        assert argmax_share(model, codes, coef) == 1.0
        assert argmax_share(model, before, coef) < 1.0  # the check tells the coefficients apart
