"""Delay pattern: literal tables, round trips, jit, and parity with audiocraft's delay pattern."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiogen_jax import patterns

SP = 2048  # special token of the worked example (AudioGen-medium's card)

# The worked example of facts §6.4: K=4, T=5, delays [0, 1, 2, 3], c[k, t] = 10k + t.
EXAMPLE_SEQ = np.array(
    [
        [SP, 0, 1, 2, 3, 4, SP, SP, SP],
        [SP, SP, 10, 11, 12, 13, 14, SP, SP],
        [SP, SP, SP, 20, 21, 22, 23, 24, SP],
        [SP, SP, SP, SP, 30, 31, 32, 33, 34],
    ]
)
EXAMPLE_MASK = np.array(
    [
        [0, 1, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1, 1, 1, 0],
        [0, 0, 0, 0, 1, 1, 1, 1, 1],
    ],
    dtype=bool,
)
# Two codebooks share delay 0, the last one jumps to 3 (K=4, T=3, c[k, t] = 10k + t).
SHARED_SEQ = np.array(
    [
        [SP, 0, 1, 2, SP, SP, SP],
        [SP, 10, 11, 12, SP, SP, SP],
        [SP, SP, 20, 21, 22, SP, SP],
        [SP, SP, SP, SP, 30, 31, 32],
    ]
)

DELAY_CASES = [(0, 1, 2, 3), (0, 0, 1, 3), (0, 2), (0,), (1, 1, 4)]


def _example_codes(K: int, T: int, B: int = 1) -> np.ndarray:
    codes_KT = 10 * np.arange(K)[:, None] + np.arange(T)[None, :]
    return np.broadcast_to(codes_KT, (B, K, T)) + 100 * np.arange(B)[:, None, None]


def test_worked_example_table():
    seq = patterns.build_delayed(_example_codes(4, 5), [0, 1, 2, 3], SP)
    np.testing.assert_array_equal(seq[0], EXAMPLE_SEQ)
    np.testing.assert_array_equal(patterns.delay_mask([0, 1, 2, 3], 5), EXAMPLE_MASK)
    np.testing.assert_array_equal(
        patterns.revert_delayed(seq, [0, 1, 2, 3], 5), _example_codes(4, 5)
    )
    assert patterns.num_steps(5, [0, 1, 2, 3]) == 9


def test_shared_delays_table():
    seq = patterns.build_delayed(_example_codes(4, 3), (0, 0, 1, 3), SP)
    np.testing.assert_array_equal(seq[0], SHARED_SEQ)
    np.testing.assert_array_equal(patterns.delay_mask((0, 0, 1, 3), 3), SHARED_SEQ != SP)


def test_frames_and_steps():
    frames = patterns.delayed_frames([0, 1, 2, 3], 5)
    np.testing.assert_array_equal(frames >= 0, EXAMPLE_MASK)
    # Every real cell of the example holds c[k, t] = 10k + t, so its frame is the code mod 10.
    np.testing.assert_array_equal(frames[EXAMPLE_MASK], EXAMPLE_SEQ[EXAMPLE_MASK] % 10)
    for k in range(4):
        for t in range(5):
            assert EXAMPLE_SEQ[k, patterns.step_of(t, k, [0, 1, 2, 3])] == 10 * k + t
    assert patterns.first_step_with(0, [0, 1, 2, 3]) == 1
    assert patterns.first_step_with(4, [1, 1, 4]) == 6


@pytest.mark.parametrize("delays", DELAY_CASES + [(2, 0, 1)])
@pytest.mark.parametrize("T", [0, 1, 7])
def test_round_trip(delays, T):
    rng = np.random.default_rng(T + len(delays))
    codes = rng.integers(0, 50, size=(3, len(delays), T))
    seq = patterns.build_delayed(codes, delays, 50)
    assert seq.shape == (3, len(delays), T + max(delays) + 1)
    assert isinstance(seq, np.ndarray) and seq.dtype == codes.dtype
    mask = patterns.delay_mask(delays, T)
    assert (seq[:, ~mask] == 50).all()
    # Exactly one real cell per (k, t).
    np.testing.assert_array_equal(mask.sum(axis=1), np.full(len(delays), T))
    np.testing.assert_array_equal(patterns.revert_delayed(seq, delays, T), codes)
    # Reading back fewer frames, or from a longer buffer, gives the leading frames.
    longer = np.concatenate([seq, np.full((3, len(delays), 4), -7)], axis=2)
    np.testing.assert_array_equal(patterns.revert_delayed(longer, delays, T), codes)
    if T > 1:
        np.testing.assert_array_equal(patterns.revert_delayed(seq, delays, T - 1), codes[..., :-1])


def test_under_jit():
    delays = (0, 0, 1, 3)
    codes = np.random.default_rng(0).integers(0, 2048, size=(2, 4, 11)).astype(np.int32)

    @jax.jit
    def round_trip(codes_BKT):
        seq_BKS = patterns.build_delayed(codes_BKT, delays, SP)
        return seq_BKS, patterns.revert_delayed(seq_BKS, delays, codes_BKT.shape[-1])

    seq, back = round_trip(jnp.asarray(codes))
    assert isinstance(seq, jax.Array)
    np.testing.assert_array_equal(np.asarray(seq), patterns.build_delayed(codes, delays, SP))
    np.testing.assert_array_equal(np.asarray(back), codes)

    build = jax.jit(patterns.build_delayed, static_argnames=("delays",))
    # special may be a traced value too.
    np.testing.assert_array_equal(
        np.asarray(build(jnp.asarray(codes), delays=delays, special=jnp.int32(5))),
        patterns.build_delayed(codes, delays, 5),
    )

    logits = jax.random.normal(jax.random.key(0), (2, 4, 15, 3))
    out, mask = jax.jit(patterns.revert_logits, static_argnums=(1, 2))(logits, delays, 11)
    ref_out, ref_mask = patterns.revert_logits(np.asarray(logits), delays, 11)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_array_equal(np.asarray(out), ref_out)


def test_bad_input_raises():
    codes = np.zeros((1, 4, 5), dtype=np.int32)
    with pytest.raises(ValueError, match="K=4 codebooks but 3 delays"):
        patterns.build_delayed(codes, [0, 1, 2], SP)
    with pytest.raises(ValueError, match=r"\[B, K, T\]"):
        patterns.build_delayed(codes[0], [0, 1, 2, 3], SP)
    with pytest.raises(ValueError, match="non-negative"):
        patterns.build_delayed(codes, [0, -1, 2, 3], SP)
    with pytest.raises(ValueError, match="empty"):
        patterns.delay_mask([], 5)
    with pytest.raises(ValueError, match="S >= T"):
        patterns.revert_delayed(np.zeros((1, 4, 8)), [0, 1, 2, 3], 5)
    with pytest.raises(ValueError, match="non-negative int"):
        patterns.delay_mask([0, 1], -1)
    with pytest.raises(ValueError, match="out of range"):
        patterns.step_of(0, 4, [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"\[B, K, S, V\]"):
        patterns.revert_logits(np.zeros((1, 4, 8)), [0, 1, 2, 3], 5)


# ------------------------------------------------------------------------------------------------
# Parity with the reference.


@pytest.mark.parity
@pytest.mark.parametrize("delays", DELAY_CASES)
@pytest.mark.parametrize("T", [1, 5, 13])
def test_matches_reference(reference, delays, T):
    import torch
    from audiocraft.modules.codebooks_patterns import DelayedPatternProvider

    K = len(delays)
    pattern = DelayedPatternProvider(K, list(delays)).get_pattern(T)
    codes = np.random.default_rng(T * 7 + K).integers(0, 2048, size=(2, K, T))

    ref_seq, _, ref_mask = pattern.build_pattern_sequence(torch.from_numpy(codes), SP)
    seq = patterns.build_delayed(codes, delays, SP)
    np.testing.assert_array_equal(seq, ref_seq.numpy())
    np.testing.assert_array_equal(patterns.delay_mask(delays, T), ref_mask.numpy())

    ref_codes, _, ref_back_mask = pattern.revert_pattern_sequence(torch.from_numpy(seq), SP)
    assert ref_back_mask.all()
    np.testing.assert_array_equal(patterns.revert_delayed(seq, delays, T), ref_codes.numpy())

    # The reference asks for frames t < T of its pattern (generation builds it for the full length).
    for t in range(T):
        assert patterns.first_step_with(t, delays) == pattern.get_first_step_with_timesteps(t)
        for k in range(K):
            assert [patterns.step_of(t, k, delays)] == pattern.get_steps_with_timestep(t, k)

    for valid_only in (False, True):
        # The reference's "valid steps" are the first T + 1 + min(delays) (its `valid_layout`).
        S = T + 1 + min(delays) if valid_only else T + max(delays) + 1
        logits = np.random.default_rng(T).standard_normal((2, K, S, 3)).astype(np.float32)
        ref_logits, _, ref_lmask = pattern.revert_pattern_logits(
            torch.from_numpy(logits).permute(0, 3, 1, 2),
            float("nan"),
            keep_only_valid_steps=valid_only,
        )
        out, lmask = patterns.revert_logits(logits, delays, T)
        np.testing.assert_array_equal(lmask, ref_lmask.numpy())
        # NaN in the same places, equal elsewhere (assert_array_equal treats NaN == NaN).
        np.testing.assert_array_equal(out, ref_logits.permute(0, 2, 3, 1).numpy())
