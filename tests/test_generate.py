"""Generation: the scan loop against a literal transcription of the reference loop, bucketing,
seeds, progress; and greedy token parity with audiocraft (tiny and medium widths).

Parity runs the whole chain a user runs: the reference AudioGen is built with random weights, saved
in the release formats (LM fp16 like `state_dict.bin`, EnCodec fp32, a Hugging Face T5 directory),
converted with `convert_weights.py`, loaded with `AudioGen.from_pretrained`, and both generate
greedily with CFG 3.0. The reference's LM is loaded from the same fp16 export, so both run the
fp16-rounded weights.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from audiogen_jax import generate as gen
from audiogen_jax import lm as lmlib
from audiogen_jax import patterns, sampling
from audiogen_jax.config import LMConfig

GREEDY = sampling.SamplingParams(use_sampling=False, cfg_coef=3.0)
DESCRIPTIONS = ["dog barking", "sirens of an emergency vehicle in a busy city street", "rain"]
# Decoded audio, ours vs the reference's EnCodec on the same codes: max |diff| measured 4.5e-8
# (tiny, peak
# 0.14) and 2.2e-7 (medium widths, peak 0.29); see docs/parity.md (## Generation).
WAV_ATOL = 1e-6


def frames(T: int, params=GREEDY, **kwargs) -> gen.GenerationSettings:
    """Settings for T frames: at one frame per second, whole seconds are whole frames, exactly."""
    return gen.GenerationSettings(duration=T, frame_rate=1.0, sampling=params, **kwargs)


class TableConditioner(nnx.Module):
    """A stand-in text encoder for the loop tests: a lookup table, zeroed where the mask is 0."""

    def __init__(self, vocab: int, dim: int, rngs: nnx.Rngs):
        self.table = nnx.Param(jax.random.normal(rngs.params(), (vocab, dim)))

    def __call__(self, ids_BL, mask_BL):
        return jnp.take(self.table[...], ids_BL, axis=0) * mask_BL[..., None]


@pytest.fixture(scope="module")
def tiny():
    cfg = LMConfig.tiny()
    lm = lmlib.LMModel(cfg, rngs=nnx.Rngs(0))
    cond = TableConditioner(50, cfg.dim, nnx.Rngs(1))
    # Two descriptions of 4 and 2 tokens, then their two null rows (all-zero masks).
    ids = np.array([[3, 4, 5, 1], [6, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.int32)
    mask = (np.arange(4)[None] < np.array([4, 2, 0, 0])[:, None]).astype(np.int32)
    return lm, cond, ids, mask


def literal_greedy(lm, cond, ids, mask, T, prompt=None, coef=3.0):
    """The reference's `LMModel.generate` loop, transcribed: teacher-forced logits of the whole
    sequence
    so far (no cache), guidance, argmax, special where masked, write only unknown cells."""
    cfg = lm.config
    B, K, special = ids.shape[0] // 2, cfg.n_q, cfg.card
    condition = cond(jnp.asarray(ids), jnp.asarray(mask))
    codes = np.full((B, K, T), -1, np.int64)
    T0 = 0 if prompt is None else prompt.shape[-1]
    if prompt is not None:
        codes[..., :T0] = prompt
    seq = patterns.build_delayed(codes, cfg.delays, special)
    valid = patterns.delay_mask(cfg.delays, T)
    for s in range(patterns.first_step_with(T0, cfg.delays), seq.shape[-1]):
        # Causal LM: the logits at s - 1 see only steps < s, so feeding the whole buffer (unknown
        # cells as special) gives the same numbers as feeding seq[..., :s], with one compilation.
        x = np.where(seq == -1, special, seq)
        logits = np.asarray(lmlib.forward(lm, jnp.asarray(np.concatenate([x, x])), condition))[
            :, :, s - 1
        ]
        guided = logits[B:] + (logits[:B] - logits[B:]) * coef
        nxt = guided.argmax(-1)
        nxt[:, ~valid[:, s]] = special
        seq[..., s] = np.where(seq[..., s] == -1, nxt, seq[..., s])
    return patterns.revert_delayed(seq, cfg.delays, T)


@pytest.mark.parametrize("T, T0, bucket", [(13, 0, None), (11, 5, 4)])
def test_greedy_equals_the_literal_reference_loop(tiny, T, T0, bucket):
    lm, cond, ids, mask = tiny
    prompt = np.random.default_rng(T0).integers(0, lm.config.card, (2, 4, T0)) if T0 else None
    ours = gen.generate_codes(
        lm,
        cond,
        ids,
        mask,
        frames(T, frame_bucket=bucket),
        key=jax.random.key(0),
        prompt_BKT=prompt,
    )
    expected = literal_greedy(lm, cond, ids, mask, T, prompt)
    np.testing.assert_array_equal(ours, expected)
    assert ours.dtype == np.int32 and ours.shape == (2, 4, T)
    if prompt is not None:
        np.testing.assert_array_equal(ours[..., :T0], prompt)


def test_bucketing_reuses_the_program(tiny):
    lm, cond, ids, mask = tiny

    def run(T, ids=ids, coef=3.0):
        params = sampling.SamplingParams(use_sampling=False, cfg_coef=coef)
        settings = frames(T, params, frame_bucket=8)
        return gen.generate_codes(lm, cond, ids, mask, settings, key=jax.random.key(0))

    a = run(9)
    n = gen._token_program._cache_size()
    b = run(14)  # same bucket (16 frames)
    other = ids.copy()
    other[0, :3] = [7, 8, 9]  # new text, same batch and length
    run(16, ids=other)
    run(12, coef=5.0)  # a new guidance coefficient is a traced argument
    assert gen._token_program._cache_size() == n
    # Bucketed and exact shapes give the same tokens.
    np.testing.assert_array_equal(
        a, gen.generate_codes(lm, cond, ids, mask, frames(9), key=jax.random.key(0))
    )
    assert b.shape == (2, 4, 14)
    n = gen._token_program._cache_size()
    run(17)  # the next bucket compiles once
    assert gen._token_program._cache_size() == n + 1


def _batch(rng, lengths, vocab=50):
    """Token ids and mask of [descriptions; nulls] as `t5.tokenize` lays them out: row b has
    lengths[b] tokens (0: a None description, an all-zero mask), right-padded to the longest."""
    lengths = list(lengths) + [0] * len(lengths)
    L = max(max(lengths), 1)
    mask = (np.arange(L)[None] < np.array(lengths)[:, None]).astype(np.int32)
    ids = rng.integers(2, vocab, (len(lengths), L)).astype(np.int32) * mask
    return ids, mask


@contextlib.contextmanager
def _backend_compiles():
    """Records the name of every program XLA compiles inside the block (jax.monitoring)."""
    names: list[str] = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def test_a_new_prompt_compiles_nothing_within_a_text_bucket(tiny):
    lm, cond, _, _ = tiny
    rng = np.random.default_rng(0)
    settings = frames(9, frame_bucket=8)

    def run(lengths):
        ids, mask = _batch(rng, lengths)
        return gen.generate_codes(lm, cond, ids, mask, settings, key=jax.random.key(0))

    buckets = {1: 16, 15: 16, 16: 16, 17: 32, 32: 32, 33: 64, 100: 128}
    assert {n: gen.bucket_text(n) for n in buckets} == buckets
    run([3, 1])  # compiles the program of the 16-token bucket (and any small helper programs)
    n = gen._token_program._cache_size()
    # Prompts of every length in the bucket, with None rows and rows of different lengths.
    batches = [[L, 1 + (7 * L) % 16] for L in range(1, 17)] + [[0, 5], [9, 0], [16, 16]]
    with _backend_compiles() as compiled:
        for lengths in batches:
            run(lengths)
    assert compiled == [] and gen._token_program._cache_size() == n
    # The next bucket (17..32 tokens) is one more program, and only that.
    with _backend_compiles() as compiled:
        for lengths in ([17, 2], [32, 0], [20, 31]):
            run(lengths)
    assert len(compiled) == 1 and "_token_program" in compiled[0], compiled
    assert gen._token_program._cache_size() == n + 1


@pytest.mark.parametrize("lengths", [[5, 2], [16, 0], [17, 9]])
def test_padding_the_text_to_its_bucket_changes_no_token(tiny, lengths):
    # The literal loop conditions on the batch's own length; ours pads it to the bucket (16 or 32)
    # and masks the added positions. [5, 2] and [17, 9] are mid-bucket; [16, 0] fills the bucket
    # and has a None row.
    lm, cond, _, _ = tiny
    ids, mask = _batch(np.random.default_rng(sum(lengths)), lengths)
    ours = gen.generate_codes(lm, cond, ids, mask, frames(11), key=jax.random.key(0))
    np.testing.assert_array_equal(ours, literal_greedy(lm, cond, ids, mask, 11))


def test_sampling_is_deterministic_per_seed(tiny):
    lm, cond, ids, mask = tiny
    params = sampling.SamplingParams(use_sampling=True, top_k=5, temperature=1.0, cfg_coef=3.0)

    def run(seed):
        settings = frames(12, params, frame_bucket=8)
        return gen.generate_codes(lm, cond, ids, mask, settings, key=jax.random.key(seed))

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() < lm.config.card


@pytest.mark.parametrize("T", [10, 40])
def test_progress_reports_the_steps_done_and_changes_nothing(tiny, monkeypatch, T):
    lm, cond, ids, mask = tiny
    prompt = np.zeros((2, 4, 3), np.int32)
    settings = frames(T, frame_bucket=8)
    key = jax.random.key(0)
    quiet = gen.generate_codes(lm, cond, ids, mask, settings, key=key, prompt_BKT=prompt)
    seen = []
    loud = gen.generate_codes(
        lm, cond, ids, mask, settings, key=key, prompt_BKT=prompt, progress=seen.append
    )
    np.testing.assert_array_equal(quiet, loud)
    # S - start steps: (T + 3 + 1) - (3 + 1) = T, reported after each piece of PROGRESS_STEPS.
    n = gen.PROGRESS_STEPS
    assert seen == [min(i + n, T) - 1 for i in range(0, T, n)]
    # The bar ends at the step count.
    bars = []
    real_bar = gen._progress_bar

    @contextlib.contextmanager
    def recording_bar(total, desc):
        with real_bar(total, desc) as (bar, report):
            bars.append(total)
            yield bar, lambda i: (seen.append(i), report(i))

    monkeypatch.setattr(gen, "_progress_bar", recording_bar)
    seen.clear()
    bar = gen.generate_codes(
        lm, cond, ids, mask, settings, key=key, prompt_BKT=prompt, progress=True
    )
    np.testing.assert_array_equal(quiet, bar)
    assert bars == [T] and seen[-1] == T - 1


@pytest.mark.parametrize(
    "prompt, match",
    [
        (np.zeros((2, 4, 12), np.int32), "shorter than"),
        (np.zeros((2, 3, 4), np.int32), "prompt codes must be"),
        (np.full((2, 4, 4), 99, np.int32), "must lie in"),
        (np.zeros((2, 4, 4), np.float32), "integers"),
    ],
)
def test_bad_input(tiny, prompt, match):
    lm, cond, ids, mask = tiny
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=match):
        gen.generate_codes(lm, cond, ids, mask, frames(12), key=key, prompt_BKT=prompt)
    with pytest.raises(ValueError, match=r"\[2B, L\]"):
        gen.generate_codes(lm, cond, ids[:3], mask[:3], frames(12), key=key)
    with pytest.raises(ValueError, match="exceeds the codebook size"):
        top_k = sampling.SamplingParams(top_k=lm.config.card + 1)
        gen.generate_codes(lm, cond, ids, mask, frames(12, top_k), key=key)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"duration": 0}, "duration must be > 0"),
        ({"duration": float("nan")}, "duration must be finite"),
        ({"duration": 0.5}, "shorter than one frame"),
        ({"frame_rate": "50"}, "frame_rate must be a number"),
        ({"max_duration": 8}, "needs an extend stride"),
        ({"max_duration": 8, "extend_stride": 8}, r"extend_stride must be in \(0, max_duration"),
        ({"extend_stride": 2}, "extend_stride needs max_duration"),
        ({"frame_bucket": 0}, "frame_bucket must be >= 1"),
        ({"frame_bucket": 2.0}, "frame_bucket must be an int"),
        ({"sampling": {"top_k": 5}}, "sampling must be a SamplingParams"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gen.GenerationSettings(**{"duration": 12, "frame_rate": 1.0, "sampling": GREEDY, **kwargs})


def test_window_lengths_round_like_the_reference():
    # The reference computes each window in float seconds (genmodel.py `_generate_tokens`):
    # int(min(1.7 - 40 / 50, 1.0) * 50) = int(44.999...) = 44, one frame less than 85 - 40 whole
    # frames. The sliding-window parity test below checks the same against audiocraft itself.
    s = gen.GenerationSettings(
        duration=1.7, frame_rate=50, max_duration=1.0, extend_stride=0.4, sampling=GREEDY
    )
    assert (s.num_frames, s.max_frames, s.stride_frames) == (85, 50, 20)
    assert [s.window_frames(offset) for offset in (0, 20, 40)] == [50, 50, 44]


# --------------------------------------------------------------------------------------------------
# Parity with audiocraft.


def _bundle(kind: str):
    import dataclasses

    import refmodels

    from audiogen_jax.config import EncodecConfig, T5Config

    if kind == "tiny":
        return refmodels.Bundle.tiny()
    # Medium widths everywhere (EnCodec 16 kHz, T5 d_model 1024, LM D 1536 / 24 heads), 2 layers
    # each.
    return refmodels.Bundle(
        EncodecConfig.medium(),
        dataclasses.replace(T5Config.large(), num_layers=2),
        LMConfig.medium(num_layers=2),
        "t5-large",
    )


_PAIRS: dict[str, tuple] = {}


def _pair(kind: str, tmp_path_factory):
    """(kind, reference AudioGen, our AudioGen) on the same random weights, via the release file
    formats.
    Built once per module run."""
    if kind not in _PAIRS:
        import refmodels

        from audiogen_jax.audiogen import AudioGen

        bundle = _bundle(kind)
        root = tmp_path_factory.mktemp(f"gen_{kind}")
        files = refmodels.write_checkpoints(root / "release", bundle)
        converted = refmodels.convert(files, root / "converted", "float32")
        _PAIRS[kind] = (
            kind,
            refmodels.reference_audiogen(files, bundle),
            AudioGen.from_pretrained(converted),
        )
    return _PAIRS[kind]


@pytest.fixture(scope="module", params=["tiny", "medium"])
def pair(request, reference, tmp_path_factory):
    yield _pair(request.param, tmp_path_factory)


@pytest.fixture(scope="module", autouse=True)
def _free_pairs():
    yield
    _PAIRS.clear()


def _mismatch_report(ours_model, descriptions, ref_codes, our_codes) -> str:
    """Where the tokens first differ, and our top-2 guided-logit margin there (near-tie check)."""
    from audiogen_jax import t5

    cfg = ours_model.lm.config
    diff = np.argwhere(ref_codes != our_codes)
    # The first in generation order: the smallest step t + 1 + delay.
    b, k, t = min(diff, key=lambda x: x[2] + cfg.delays[x[1]])
    s = t + 1 + cfg.delays[k]
    ids, mask = t5.tokenize(ours_model.tokenizer, list(descriptions) + [None] * len(descriptions))
    condition = ours_model.conditioner(jnp.asarray(ids), jnp.asarray(mask))
    seq = patterns.build_delayed(ref_codes, cfg.delays, cfg.card)
    logits = np.asarray(
        lmlib.forward(ours_model.lm, jnp.asarray(np.concatenate([seq, seq])), condition)
    )
    B = len(descriptions)
    guided = logits[B:, :, s - 1] + (logits[:B, :, s - 1] - logits[B:, :, s - 1]) * 3.0
    top2 = np.sort(guided[b, k])[-2:]
    return (
        f"{len(diff)} tokens differ; first at b={b} k={k} t={t} (step {s}): reference "
        f"{ref_codes[b, k, t]}, "
        f"ours {our_codes[b, k, t]}; top-2 margin of the guided logits there "
        f"{top2[1] - top2[0]:.3g}"
    )


def _reference_generate(ref, fn, *args, **kwargs):
    import torch

    with torch.no_grad():
        wav, codes = fn(*args, return_tokens=True, **kwargs)
    return wav.numpy(), codes.numpy()


@pytest.mark.parity
def test_greedy_generation_matches_reference(pair):
    kind, ref, ours = pair
    T = int(ours.frame_rate)  # 1 s of frames (50)
    for m in (ref, ours):
        m.set_generation_params(duration=T / ours.frame_rate, use_sampling=False, cfg_coef=3.0)
    # The batch's text length falls inside its bucket: positions are added beyond the reference's
    # padding and masked (generate.bucket_text).
    from audiogen_jax import t5

    L = t5.tokenize(ours.tokenizer, DESCRIPTIONS + [None] * 3)[0].shape[1]
    assert L < gen.bucket_text(L), (L, gen.bucket_text(L))
    ref_wav, ref_codes = _reference_generate(ref, ref.generate, DESCRIPTIONS)
    wav, codes = ours.generate(DESCRIPTIONS, seed=0, return_tokens=True)
    assert codes.shape == ref_codes.shape == (3, 4, T)
    assert np.array_equal(codes, ref_codes), _mismatch_report(ours, DESCRIPTIONS, ref_codes, codes)
    assert wav.shape == ref_wav.shape == (3, 1, T * ours.compression_model.hop_length)
    np.testing.assert_allclose(wav, ref_wav, rtol=0, atol=WAV_ATOL)
    wav2, codes2 = ours.generate(DESCRIPTIONS, seed=0, return_tokens=True)
    np.testing.assert_array_equal(codes2, codes)
    np.testing.assert_array_equal(wav2, wav)


@pytest.mark.parity
def test_greedy_continuation_matches_reference(pair):
    kind, ref, ours = pair
    rng = np.random.default_rng(0)
    if kind == "tiny":
        # The whole API: audio prompt -> our EnCodec encode -> generation -> decode.
        prompt = (0.1 * rng.standard_normal((2, 1, 8000))).astype(np.float32)  # 0.5 s at 16 kHz
        descriptions = ["footsteps on gravel", None]
        for m in (ref, ours):
            m.set_generation_params(duration=1.2, use_sampling=False, cfg_coef=3.0)
        import torch

        ref_wav, ref_codes = _reference_generate(
            ref, ref.generate_continuation, torch.from_numpy(prompt), ours.sample_rate, descriptions
        )
        wav, codes = ours.generate_continuation(
            prompt, ours.sample_rate, descriptions, seed=0, return_tokens=True
        )
        assert codes.shape == (2, 4, 60)
        assert np.array_equal(codes, ref_codes), _mismatch_report(
            ours, ["footsteps on gravel", None], ref_codes, codes
        )
        np.testing.assert_allclose(wav, ref_wav, rtol=0, atol=WAV_ATOL)
    else:
        # The LM with prompt codes (the codec's own parity is tests/test_encodec.py's).
        import torch
        from audiocraft.modules.conditioners import ConditioningAttributes

        T, T0 = 50, 17
        prompt = rng.integers(0, ours.lm.config.card, (3, 4, T0))
        attrs = [ConditioningAttributes(text={"description": d}) for d in DESCRIPTIONS]
        with torch.no_grad():
            ref_codes = ref.lm.generate(
                torch.from_numpy(prompt), attrs, max_gen_len=T, use_sampling=False, cfg_coef=3.0
            ).numpy()
        ours.set_generation_params(duration=T / ours.frame_rate, use_sampling=False, cfg_coef=3.0)
        from audiogen_jax import t5

        ids, mask = t5.tokenize(ours.tokenizer, DESCRIPTIONS + [None] * 3)
        settings = gen.GenerationSettings(
            duration=T / ours.frame_rate,
            frame_rate=ours.frame_rate,
            sampling=ours.params,
            frame_bucket=50,
        )
        codes = gen.generate_codes(
            ours.lm, ours.conditioner, ids, mask, settings, key=jax.random.key(0), prompt_BKT=prompt
        )
        assert np.array_equal(codes, ref_codes), _mismatch_report(
            ours, DESCRIPTIONS, ref_codes, codes
        )


@pytest.mark.parity
def test_sliding_window_matches_reference(reference, tmp_path_factory):
    # The window logic does not depend on the widths: checked on the tiny model.
    _, ref, ours = _pair("tiny", tmp_path_factory)
    # A 1 s window moving by 0.4 s, for 1.7 s: windows of 50, 50, 44 and 25 frames
    # (20 + 20 + 14 + 1 new: the float seconds round the third window down).
    for m in (ref, ours):
        m.max_duration = 1.0
        m.set_generation_params(duration=1.7, use_sampling=False, cfg_coef=3.0, extend_stride=0.4)
    try:
        _, ref_codes = _reference_generate(ref, ref.generate, DESCRIPTIONS[:2])
        _, codes = ours.generate(DESCRIPTIONS[:2], seed=0, return_tokens=True)
    finally:
        ref.max_duration = ours.max_duration = 10.0
    assert codes.shape == ref_codes.shape == (2, 4, 85)
    np.testing.assert_array_equal(codes, ref_codes)
