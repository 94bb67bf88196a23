"""Random bits for stochastic rounding: a fast keyed counter hash, or `jax.random.bits`.

`random_bits(key, shape, nbits, rng)` returns uniform unsigned integers of `nbits` (32 or 64) bits:

  * rng="hash": a counter-based integer hash of (element index, key) computed in one fused pass:
    r_i = lowbias32(i * (s1 | 1) + s0) (C. Wellons' 32-bit integer hash, two multiplies and three
    xor-shifts), with (s0, s1) mixed from all words of the key once per call (`key_words`). It
    costs about as much as the rounding itself. Its quality is checked in tests (uniform bits,
    no correlation between neighbouring elements, between keys or between shifted streams); it is
    not a cryptographic or statistically certified generator: for one key the bits are a fixed
    bijection of the index, so use a fresh key (e.g. `jax.random.fold_in(key, step)`) for every
    call; arrays beyond 2^32 elements repeat the index.
  * rng="jax": `jax.random.bits(key, shape)`, the key's own PRNG (threefry by default), a separate
    and slower pass; use it when certified randomness matters.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["hash_bits32", "key_words", "random_bits"]


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser (a bijection of uint32 with full avalanche)."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def key_words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Two uint32 seeds derived from all words of the key."""
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  data = jnp.ravel(data).astype(jnp.uint32)
  s0, s1 = jnp.uint32(0x243F6A88), jnp.uint32(0x85A308D3)
  for i in range(data.shape[0]):
    s0 = _fmix32(s0 ^ data[i])
    s1 = _fmix32(s1 + data[i] * jnp.uint32(0x9E3779B9))
  return s0, _fmix32(s1 ^ s0)


def _lowbias32(h: jax.Array) -> jax.Array:
  """C. Wellons' "lowbias32" integer hash: a uint32 bijection with very low avalanche bias."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x7FEB352D)
  h = h ^ (h >> 15)
  h = h * jnp.uint32(0x846CA68B)
  return h ^ (h >> 16)


def hash_bits32(s0: jax.Array, s1: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """lowbias32(i * (s1 | 1) + s0) for the flat element index i: one keyed bijection per key."""
  size = int(np.prod(shape, dtype=np.int64))
  idx = lax.iota(jnp.uint32, size).reshape(shape) if size else jnp.zeros(shape, jnp.uint32)
  return _lowbias32(idx * (s1 | jnp.uint32(1)) + s0)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def random_bits(key: jax.Array, shape: tuple[int, ...], nbits: int, rng: str) -> jax.Array:
  """Uniform uint32 (nbits=32) or uint64 (nbits=64) bits of `shape` from `key` by `rng`.

  Arguments are not checked (the rounding functions check them); shape, nbits and rng are
  static.
  """
  if rng == "jax":
    return jax.random.bits(key, shape, dtype=jnp.uint32 if nbits == 32 else jnp.uint64)
  # The barrier keeps XLA from fusing (and so recomputing) the scalar key mixing per element.
  s0, s1 = lax.optimization_barrier(key_words(key))
  h = hash_bits32(s0, s1, shape)
  if nbits == 32:
    return h
  h2 = hash_bits32(_fmix32(s0 ^ jnp.uint32(0x3C6EF372)), _fmix32(s1 ^ jnp.uint32(0xA54FF53A)),
                    shape)
  return (h.astype(jnp.uint64) << jnp.uint64(32)) | h2.astype(jnp.uint64)
