"""Selective convolutional units: expected channel damage, bilinear channel shifts, re-allocation.

Jeong & Shin (ICML 2019, "Training CNNs with Selective Allocation of Channels") put a
channel-selectivity layer in front of a convolution (BN, ReLU, channel gate, conv, as in a
DenseNet bottleneck). It de-allocates input channels whose removal would change the convolution's
output least, measured by the *expected channel damage score* (ECDS), and re-allocates their
slots to copies of important channels, each copy moved by a learned sub-pixel spatial shift so
that it adds information. This module holds the array-level pieces:

* `expected_channel_damage(gamma, beta, kernel)`: ECDS of each input channel of a conv whose
  input is ReLU(BN(x)). With the normalised pre-activation z ~ N(0, 1), the channel's expected
  activation is E[ReLU(gamma z + beta)] = beta Phi(beta / |gamma|) + |gamma| phi(beta / |gamma|)
  (Phi, phi: the standard normal CDF and density), and removing the channel changes the conv's
  output by that times the magnitude of its weights, sum over output channels and taps of |W|.
  (Our reading of the paper's score: the expected output change of zeroing the channel under the
  Gaussian assumption that batch norm makes.)
* `bilinear_shift(x, shifts)`: each channel of an NHWC map moved by its own real-valued (dy, dx),
  bilinear interpolation, zeros from outside; differentiable in `x` and in `shifts`.
* `reallocate(index, mask, ecds, num)`: de-allocate the `num` active slots of lowest ECDS and
  point them at the `num` highest-ECDS channels (new copies).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["bilinear_shift", "expected_channel_damage", "reallocate"]


def expected_channel_damage(gamma: jax.Array, beta: jax.Array, kernel: jax.Array) -> jax.Array:
  """Expected channel damage score (ECDS) of each input channel of a conv after BN-ReLU.

  Args:
    gamma, beta: (C,) batch-norm scale and bias of the conv's input channels.
    kernel: (KH, KW, C, O) conv kernel (or (C, O) for a dense layer).

  Returns:
    (C,) float32: E[ReLU(gamma z + beta)] * sum |kernel[..., c, :]|, z ~ N(0, 1).
  """
  gamma = jnp.asarray(gamma, jnp.float32)
  beta = jnp.asarray(beta, jnp.float32)
  kernel = jnp.asarray(kernel, jnp.float32)
  if gamma.ndim != 1 or gamma.shape != beta.shape or kernel.shape[-2] != gamma.shape[0]:
    raise ValueError(f"gamma and beta must be (C,) and kernel (..., C, O); got {gamma.shape}, "
                     f"{beta.shape} and {kernel.shape}.")
  s = jnp.maximum(jnp.abs(gamma), 1e-12)
  t = beta / s
  expected = beta * jax.scipy.stats.norm.cdf(t) + s * jax.scipy.stats.norm.pdf(t)
  weight = jnp.sum(jnp.abs(kernel), axis=tuple(i for i in range(kernel.ndim) if
                                               i != kernel.ndim - 2))
  return expected * weight


def _shift_int(x, s, axis):
  """x moved by integer s[c] along `axis` (1: H, 2: W) per channel, zeros from outside."""
  n = x.shape[axis]
  pos = jnp.arange(n)[:, None] - s[None, :]  # (n, C): source index of each output position.
  valid = (pos >= 0) & (pos < n)
  pos = jnp.clip(pos, 0, n - 1)
  shape = [1, 1, 1, x.shape[-1]]
  shape[axis] = n
  idx = jnp.broadcast_to(pos.reshape(shape), x.shape)
  return jnp.take_along_axis(x, idx, axis=axis) * valid.reshape(shape).astype(x.dtype)


def bilinear_shift(x: jax.Array, shifts: jax.Array) -> jax.Array:
  """Moves every channel of `x` by its own sub-pixel offset (bilinear interpolation).

  out[n, h, w, c] = x[n, h - dy_c, w - dx_c, c], interpolated bilinearly, zero outside the map.
  Piecewise linear in `shifts`, so its gradient with respect to the shifts exists everywhere but
  at integer offsets (the paper learns the shifts by gradient descent).

  Args:
    x: (N, H, W, C) float.
    shifts: (C, 2) float offsets (dy, dx) in pixels.

  Returns:
    (N, H, W, C), the dtype of `x`.
  """
  if x.ndim != 4 or shifts.shape != (x.shape[-1], 2):
    raise ValueError(f"x must be (N, H, W, C) and shifts (C, 2); got {x.shape} and "
                     f"{shifts.shape}.")
  out = x
  for axis, d in ((1, shifts[:, 0]), (2, shifts[:, 1])):
    lo = jnp.floor(d)
    frac = (d - lo).astype(x.dtype)
    lo = lo.astype(jnp.int32)
    out = (1 - frac) * _shift_int(out, lo, axis) + frac * _shift_int(out, lo + 1, axis)
  return out


def reallocate(index: np.ndarray, mask: np.ndarray, ecds: np.ndarray, num: int):
  """De-allocate the `num` active slots of lowest ECDS and re-allocate them to copies of the
  `num` highest-ECDS channels.

  Args:
    index: (S,) int, the input channel each slot reads.
    mask: (S,) bool, active slots.
    ecds: (S,) float, the score of each slot (its channel as the slot reads it).
    num: how many slots to move (at most half the active slots, so that no slot is both
      moved and copied).

  Returns:
    (new index, new mask, moved slots): moved slots are active and read the chosen channels;
    give them fresh shifts so that the copies differ from the originals.

  Raises:
    ValueError: `num` larger than the active slots allow.
  """
  index, mask, ecds = np.asarray(index).copy(), np.asarray(mask, bool).copy(), np.asarray(ecds)
  active = np.flatnonzero(mask)
  if not 0 <= num <= active.size // 2:
    raise ValueError(f"num must be in [0, {active.size // 2}] (half the active slots); got "
                     f"{num}.")
  order = active[np.argsort(ecds[active], kind="stable")]
  low, high = order[:num], order[::-1][:num]
  index[low] = index[high]
  return index, mask, low
