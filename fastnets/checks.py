"""Argument checks and small integer helpers shared by every layer and by the kernels.

A leaf module: it imports only jax and numpy, so `fastnets.kernels` may use it without depending on
`fastnets.ops`. Every check raises an error that names the argument and the function, and says how
to fix the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_choice",
    "check_key",
    "check_sparsity",
    "is_power_of_two",
    "next_power_of_two",
    "pair",
]


def _is_int(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_power_of_two(n: int) -> bool:
  """Whether the int `n` is a positive power of two (1, 2, 4, ...)."""
  return _is_int(n) and n >= 1 and (int(n) & (int(n) - 1)) == 0


def next_power_of_two(n: int) -> int:
  """Smallest power of two that is >= `n`.

  Args:
    n: a positive Python int.

  Returns:
    `2 ** ceil(log2(n))` as a Python int (1 for n = 1).

  Raises:
    TypeError: if `n` is not an int.
    ValueError: if `n < 1`.
  """
  if not _is_int(n):
    raise TypeError(f"next_power_of_two: n must be a positive int, got {n!r}")
  n = int(n)
  if n < 1:
    raise ValueError(f"next_power_of_two: n must be a positive int, got {n}")
  return 1 << (n - 1).bit_length()


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
  """`(a, b)` from a positive int (used twice) or a length-2 sequence of positive ints.

  Args:
    value: an int, or a tuple/list of two ints (numpy integers allowed, bools not).
    name: the argument's name, used in the error message.

  Returns:
    A tuple of two Python ints.

  Raises:
    ValueError: `value` is not of that form or not positive.
  """
  if _is_int(value):
    out = (int(value), int(value))
  elif (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
        and all(_is_int(v) for v in value)):
    out = (int(value[0]), int(value[1]))
  else:
    raise ValueError(f"{name} must be a positive int or a pair of positive ints; got {value!r}.")
  if min(out) < 1:
    raise ValueError(f"{name} must be positive; got {value!r}.")
  return out


def check_choice(name: str, value: Any, choices: Sequence[str], fn: str) -> None:
  """Raises ValueError naming `fn` and the argument `name` unless `value` is one of `choices`."""
  if value not in choices:
    raise ValueError(f"{fn}: {name} must be one of {tuple(choices)}, got {value!r}.")


def check_key(key: Any, fn: str, *, purpose: str = "it", optional: bool = False):
  """Validates a `jax.random` key argument, following JAX's own conventions.

  Accepted: a typed key of shape `()` (`jax.random.key(seed)`) or a raw uint32 key, a 1-D uint32
  array (`jax.random.PRNGKey(seed)`, shape `(2,)` for threefry). Python ints (a seed passed where
  a key belongs) are rejected with a message saying how to make a key.

  Args:
    key: the argument to check.
    fn: name of the calling function, for the message.
    purpose: what needs the key, for the message when it is missing (e.g. "stochastic rounding").
    optional: if True, `None` is allowed and returned.

  Returns:
    `key` unchanged (or None when optional and missing).

  Raises:
    ValueError: `key` is None and not optional, or a typed key array of shape other than `()`.
    TypeError: `key` is not a key (an int, a float array, a string, ...).
  """
  if key is None:
    if optional:
      return None
    raise ValueError(
        f"{fn}: {purpose} needs a PRNG key (make one with jax.random.key(seed)); got None.")
  if _is_int(key):
    raise TypeError(
        f"{fn}: key must be a jax.random key, got the int {key!r}; pass jax.random.key({key!r}) "
        "instead of the seed.")
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"{fn}: key must be a single key of shape (), got shape {key.shape}; "
                       "split it with jax.random.split and pass one key.")
    return key
  if dtype is not None and dtype == jnp.uint32 and getattr(key, "ndim", None) == 1:
    if key.shape[0] < 2:  # No PRNG implementation has keys of fewer than two words.
      raise ValueError(f"{fn}: a raw uint32 key has at least 2 words (jax.random.PRNGKey(seed) "
                       f"has shape (2,)), got shape {key.shape}.")
    return key  # a raw key, e.g. jax.random.PRNGKey(0)
  desc = (f"an array of dtype {dtype} and shape {getattr(key, 'shape', None)}"
          if dtype is not None else type(key).__name__)
  raise TypeError(
      f"{fn}: key must be a jax.random key (jax.random.key(seed)) or a raw uint32 key "
      f"(jax.random.PRNGKey(seed)), got {desc}.")


def check_sparsity(sparsity: Any, name: str = "sparsity") -> None:
  """Raises unless `sparsity` is a concrete number in [0, 1); a traced value is not checked."""
  if isinstance(sparsity, jax.core.Tracer):
    return
  s = np.asarray(sparsity)
  if s.ndim != 0 or not np.isfinite(s) or not 0.0 <= float(s) < 1.0:
    raise ValueError(f"{name} must be a number in [0, 1); got {sparsity!r}.")
