"""Argument checks shared across the package: one wording for each kind of bad input.

Public entry points check their inputs before any work and raise `ValueError` with the reason.
Checks of values (ranges, finiteness) need the numbers, which exist only outside `jax.jit`: on a
tracer they are skipped and only the shape checks run (shapes are static under tracing).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax


def is_concrete(x: Any) -> bool:
    """True when x's values can be read here: anything but a tracer (inside `jit`, `scan`, `vmap`)
    or an array with shards on other processes (multi-host)."""
    return not isinstance(x, jax.core.Tracer) and getattr(x, "is_fully_addressable", True)


def finite_number(name: str, value: Any) -> float:
    """`value` as a float: a real number (Python or numpy, not a bool) that is finite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def integer(name: str, value: Any) -> int:
    """`value` as an int: a Python or numpy integer, not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


SEED_RANGE = (-(2**63), 2**64)  # what torch.manual_seed accepts: int64 and uint64 values


def seed(name: str, value: Any) -> int:
    """A random seed as an int in [0, 2**64): any integer in [-2**63, 2**64), negative ones taken
    modulo 2**64 (two's complement, as `torch.manual_seed` does)."""
    value = integer(name, value)
    low, high = SEED_RANGE
    if not low <= value < high:
        raise ValueError(f"{name} must be an integer in [-2**63, 2**64), got {value}")
    return value % 2**64
