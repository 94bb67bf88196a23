"""Tests of the shared argument checks (fastnets.checks)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastnets import checks


def test_check_key_accepts_typed_and_raw_keys():
  typed = jax.random.key(0)
  raw = jax.random.PRNGKey(0)
  assert checks.check_key(typed, "f") is typed
  assert checks.check_key(raw, "f") is raw
  assert checks.check_key(None, "f", optional=True) is None


def test_check_key_rejects_seeds_and_other_arrays():
  with pytest.raises(TypeError, match=r"f: key must be a jax.random key, got the int 3; pass "
                                      r"jax.random.key\(3\)"):
    checks.check_key(3, "f")
  with pytest.raises(TypeError, match="key must be a jax.random key"):
    checks.check_key(jnp.ones(2), "f")
  with pytest.raises(TypeError, match="key must be a jax.random key"):
    checks.check_key("seed", "f")
  with pytest.raises(ValueError, match="f: stochastic rounding needs a PRNG key"):
    checks.check_key(None, "f", purpose="stochastic rounding")
  with pytest.raises(ValueError, match=r"single key of shape \(\)"):
    checks.check_key(jax.random.split(jax.random.key(0), 2), "f")


def test_pair():
  assert checks.pair(3, "k") == (3, 3)
  assert checks.pair((2, np.int64(5)), "k") == (2, 5)
  for bad in [(1, 2, 3), "ab", 2.0, (True, 1), None]:
    with pytest.raises(ValueError, match="k must be a positive int or a pair"):
      checks.pair(bad, "k")
  with pytest.raises(ValueError, match="k must be positive"):
    checks.pair((0, 3), "k")


def test_powers_of_two_and_choice():
  assert [checks.next_power_of_two(n) for n in (1, 2, 3, 1025)] == [1, 2, 4, 2048]
  assert [checks.is_power_of_two(n) for n in (0, 1, 6, 64, True)] == [False, True, False, True,
                                                                      False]
  with pytest.raises(TypeError):
    checks.next_power_of_two(2.0)
  checks.check_choice("mode", "a", ("a", "b"), "f")
  with pytest.raises(ValueError, match=r"f: mode must be one of \('a', 'b'\), got 'c'"):
    checks.check_choice("mode", "c", ("a", "b"), "f")
