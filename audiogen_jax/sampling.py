"""Choosing the next token: classifier-free guidance, temperature, top-k, top-p, greedy.

Pure functions on logits whose last axis is the codebook vocabulary V; every other axis (usually
`[B, K]`) is a batch axis. They run under `jax.jit` with the sampling settings static: the
settings live in `SamplingParams`, a frozen, hashable dataclass, which is also the one place they
are validated (the API and the command line build one to check what they are given).

The order of operations follows the reference's `LMModel._sample_next_token`
(audiocraft/models/lm.py) and its helpers `sample_top_k` / `sample_top_p`
(audiocraft/utils/utils.py):

1. guidance: `logits = uncond + (cond - uncond) * cfg_coef` (this exact operation order);
2. if sampling: `probs = softmax(logits / temperature)`, then top-p if `top_p > 0`, else top-k if
   `top_k > 0`, else the full distribution; draw one id per row;
3. otherwise greedy: `argmax(logits)`.

Differences from the reference:
- The draw uses `jax.random` (Gumbel-max on the log of the filtered probabilities) instead of
  `torch.multinomial`, so the same distribution is sampled with a different random stream; ids
  match the reference only in greedy mode. Filtered-out ids have log-probability -inf and can
  never be drawn.
- The filters return the kept distribution over vocabulary ids (`top_p_filter` maps its sorted
  mask back to id order); the reference draws straight from the sorted list. Same distribution.
- Ties: `top_k_filter` keeps every id tied with the k-th probability, like the reference. In
  `top_p_filter` the sort is stable (among equal probabilities the lower id counts as larger),
  which only matters when a tie straddles the top-p boundary; torch's sort order is unspecified.
- The reference silently falls back to greedy when `use_sampling` is set with `temperature == 0`;
  here that combination is a `ValueError` (ask for `use_sampling=False` instead).
- Logits are shifted by their maximum before the division by the temperature (`softmax((logits -
  max) / T)`, the same distribution): then any temperature down to float32's smallest normal
  number, `MIN_TEMPERATURE` (1.2e-38), samples correctly, tiny ones approaching greedy decoding.
  Dividing first (`softmax(logits / T)`, the reference's order) gives NaN probabilities under XLA
  from about T = 1e-9 with logits of magnitude 10. Smaller temperatures are a `ValueError`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from audiogen_jax import checks

# float32's smallest normal number: a smaller temperature is not representable in the float32
# division (it flushes to zero or loses precision).
MIN_TEMPERATURE = float(jnp.finfo(jnp.float32).tiny)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How to pick each token. Frozen and hashable: pass it to `jax.jit` as a static argument."""

    use_sampling: bool = True  # False: greedy argmax of the guided logits
    temperature: float = 1.0  # softmax temperature (>= MIN_TEMPERATURE when sampling)
    top_k: int = 250  # keep the k most probable ids (0 = off); ignored when top_p > 0
    top_p: float = 0.0  # keep the smallest set with probability mass >= p (0 = off)
    cfg_coef: float = 3.0  # classifier-free guidance coefficient (1 = conditional logits only)

    def __post_init__(self):
        if not isinstance(self.use_sampling, bool):
            raise ValueError(f"use_sampling must be a bool, got {self.use_sampling!r}")
        # Plain ints and floats (numpy scalars are accepted): the dataclass stays hashable and
        # equal across int/float spellings.
        object.__setattr__(self, "top_k", checks.integer("top_k", self.top_k))
        for name in ("temperature", "top_p", "cfg_coef"):
            object.__setattr__(self, name, checks.finite_number(name, getattr(self, name)))
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1] (0 disables it), got {self.top_p}")
        if self.use_sampling and self.temperature <= 0.0:
            raise ValueError(
                f"temperature must be > 0 when sampling, got {self.temperature}; "
                "use use_sampling=False for greedy decoding"
            )
        if self.use_sampling and self.temperature < MIN_TEMPERATURE:
            raise ValueError(
                f"temperature {self.temperature:g} is below {MIN_TEMPERATURE:.3g}, the smallest "
                "float32 temperature that can be sampled; use use_sampling=False for greedy "
                "decoding (what such a temperature amounts to)"
            )

    def validate(self, card: int) -> SamplingParams:
        """Checks the settings against a vocabulary of `card` ids; returns self.

        top_k is checked only where it is used (sampling with top_p == 0), as in the reference,
        where `torch.topk` would fail on it.
        """
        if self.use_sampling and self.top_p == 0.0 and self.top_k > card:
            raise ValueError(f"top_k={self.top_k} exceeds the codebook size {card}")
        return self

    @classmethod
    def from_lm_config(cls, cfg, **overrides) -> SamplingParams:
        """The generation defaults stored with a checkpoint (`LMConfig`), plus overrides."""
        defaults = dict(
            use_sampling=cfg.use_sampling,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            cfg_coef=cfg.cfg_coef,
        )
        return cls(**{**defaults, **overrides}).validate(cfg.card)


def apply_cfg(cond: jax.Array, uncond: jax.Array, coef: float) -> jax.Array:
    """Classifier-free guidance, in the reference's operation order.

    Args:
      cond: logits given the text, `[..., V]`.
      uncond: logits given the null condition, same shape.
      coef: guidance coefficient; 1 gives (up to rounding) `cond`.

    Returns:
      Guided logits `[..., V]`.
    """
    return uncond + (cond - uncond) * coef


def top_k_filter(probs: jax.Array, k: int) -> jax.Array:
    """Keeps the ids whose probability is at least the k-th largest, renormalised.

    Args:
      probs: probabilities `[..., V]`.
      k: static int, 1 <= k <= V. Every id tied with the k-th value is kept, as in the reference.

    Returns:
      Probabilities `[..., V]`, zero outside the kept set.
    """
    kth = jax.lax.top_k(probs, k)[0][..., -1:]
    kept = probs * (probs >= kth)
    return kept / kept.sum(axis=-1, keepdims=True)


def top_p_filter(probs: jax.Array, p: float) -> jax.Array:
    """Nucleus filter: keeps the most probable ids until their mass reaches p, renormalised.

    Sorted descending, an id is dropped when the mass strictly before it already exceeds p
    (`cumsum - sorted > p`, the reference's rule), so the id that crosses p is kept.

    Args:
      probs: probabilities `[..., V]`.
      p: static float in [0, 1].

    Returns:
      Probabilities `[..., V]` in id order, zero outside the kept set.
    """
    order = jnp.argsort(-probs, axis=-1, stable=True)
    sorted_probs = jnp.take_along_axis(probs, order, axis=-1)
    keep_sorted = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs <= p
    # Back to id order: position j of the sorted list holds id order[j].
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
    kept = probs * keep
    return kept / kept.sum(axis=-1, keepdims=True)


def filtered_probs(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """The distribution a sampling step draws from: softmax(logits / T), then top-p or top-k."""
    params.validate(logits.shape[-1])
    logits = logits.astype(jnp.float32)
    # Shifted first, so the largest is exactly 0 at any temperature (see the module docstring).
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    probs = jax.nn.softmax(shifted / params.temperature, axis=-1)
    if params.top_p > 0.0:
        return top_p_filter(probs, params.top_p)
    if params.top_k > 0:
        return top_k_filter(probs, params.top_k)
    return probs


def sample_next(
    key: jax.Array,
    logits: jax.Array,
    params: SamplingParams | None = None,
    *,
    use_sampling: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> jax.Array:
    """Picks one id per row of (already guided) logits.

    Settings come either as a `SamplingParams` or as keywords (the unset ones take the
    `SamplingParams` defaults); both spellings are accepted because callers were promised both.
    Under `jax.jit` they must be static.

    Args:
      key: PRNG key; the same key gives the same ids.
      logits: `[..., V]`, e.g. `logits_BKV`.
      params: the sampling settings (`cfg_coef` is not used here: guide with `apply_cfg` first).

    Returns:
      int32 ids `[...]`, e.g. `ids_BK`.
    """
    keywords = dict(use_sampling=use_sampling, temperature=temperature, top_k=top_k, top_p=top_p)
    keywords = {name: value for name, value in keywords.items() if value is not None}
    if params is None:
        params = SamplingParams(**keywords)
    elif keywords:
        raise ValueError(
            f"pass either params or keyword settings, not both (got {sorted(keywords)})"
        )
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(
            f"logits need a non-empty last (vocabulary) axis, got shape {logits.shape}"
        )
    params.validate(logits.shape[-1])
    if not params.use_sampling:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    probs = filtered_probs(logits, params)
    # log(0) = -inf: an id outside the kept set loses every Gumbel-max comparison.
    return jax.random.categorical(key, jnp.log(probs), axis=-1).astype(jnp.int32)
