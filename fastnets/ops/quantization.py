"""Quantisation for training: rounding in the forward pass or of the gradient, and of pytrees.

Gupta et al. 2015 and Wang et al. 2018 train with the rounding invisible to back-propagation:
`quantize` rounds in the forward pass with a straight-through gradient (identity), and
`quantize_grad` is the identity whose backward pass rounds the cotangent, for gradients kept in
low precision. `quantize_tree` rounds every float leaf of a pytree (parameters) to its format.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from fastnets.checks import check_choice, check_key
from fastnets.ops.number_formats import (
  RNG_SOURCES,
  ROUNDING_MODES,
  FixedPoint,
  FloatFormat,
  Format,
  FormatSpec,
  check_format,
)
from fastnets.ops.rounding import (
  check_float_input,
  round_nearest,
  round_with_mode,
  stochastic_round,
)

__all__ = ["leaf_format", "quantize", "quantize_grad", "quantize_tree"]


def _check_quant_args(x, fmt, mode, key, rng, fn):
  x = check_float_input(x, fn)
  if fmt is not None:
    check_format(fmt)
  check_choice("mode", mode, ROUNDING_MODES, fn)
  check_choice("rng", rng, RNG_SOURCES, fn)
  if mode == "stochastic" and fmt is not None:
    key = check_key(key, fn, purpose="stochastic rounding")
  return x, key


def quantize(x: jax.Array, fmt: Format | None, mode: str = "nearest", *,
             key: jax.Array | None = None, rng: str = "hash") -> jax.Array:
  """Rounds x to fmt in the forward pass; straight-through gradient (identity, not rounded).

  Args:
    x: float array (float32, bfloat16, float16, float64).
    fmt: a format, or None for the identity (handy in configs).
    mode: "nearest" (`round_nearest`) or "stochastic" (`stochastic_round`, needs key).
    key: PRNG key for mode="stochastic".
    rng: random-bit source for stochastic rounding, "hash" or "jax".

  Returns:
    x's shape and dtype, representable in fmt.

  Raises:
    ValueError: unknown mode/rng, or mode="stochastic" without a key. TypeError: bad dtype/fmt.
  """
  x, key = _check_quant_args(x, fmt, mode, key, rng, "quantize")
  if fmt is None:
    return x
  if mode == "nearest":
    return round_nearest(x, fmt)
  return stochastic_round(key, x, fmt, rng=rng)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _quantize_grad(x, key, fmt, mode, rng):
  del key, fmt, mode, rng
  return x


def _quantize_grad_fwd(x, key, fmt, mode, rng):
  del fmt, mode, rng
  return x, key


def _quantize_grad_bwd(fmt, mode, rng, key, g):
  return round_with_mode(g, fmt, mode, key, rng), None


_quantize_grad.defvjp(_quantize_grad_fwd, _quantize_grad_bwd)


def quantize_grad(x: jax.Array, fmt: Format | None, mode: str = "nearest", *,
                  key: jax.Array | None = None, rng: str = "hash") -> jax.Array:
  """Identity in the forward pass; rounds the incoming cotangent (gradient) to fmt.

  Used to keep gradients (Wang's error and weight gradients, Gupta's gradients) in low precision:
  `y = quantize_grad(x, FP8_E5M2)` makes dL/dx = round(dL/dy). A `jax.custom_vjp`: the forward
  saves only the key (nothing for mode="nearest"); the backward rounds the cotangent with it
  (`stochastic_round(key, g, fmt)` or `round_nearest(g, fmt)`); nothing is recomputed.

  Args:
    x: float array; returned unchanged.
    fmt: format of the gradient, or None for the identity.
    mode: "nearest" or "stochastic" (needs key).
    key: PRNG key for mode="stochastic" (use a different key from the forward rounding).
    rng: "hash" or "jax".

  Raises:
    ValueError / TypeError as `quantize`.
  """
  x, key = _check_quant_args(x, fmt, mode, key, rng, "quantize_grad")
  if fmt is None:
    return x
  if mode == "nearest":
    key = jnp.zeros((2,), jnp.uint32)
  return _quantize_grad(x, key, fmt, mode, rng)


def leaf_format(fmt_spec: FormatSpec, path: tuple, leaf: Any) -> Format | None:
  """The format of one pytree leaf under `fmt_spec` (a format, None, or a callable
  `(path, leaf) -> format`); None for non-float leaves, which are never rounded."""
  if fmt_spec is None or isinstance(fmt_spec, (FixedPoint, FloatFormat)):
    fmt = fmt_spec
  elif callable(fmt_spec):
    fmt = fmt_spec(path, leaf)
    if fmt is not None:
      check_format(fmt, "fmt(path, leaf)")
  else:
    raise TypeError(f"fmt must be a FixedPoint, FloatFormat, None or a callable (path, leaf) -> "
                    f"format, got {type(fmt_spec).__name__}.")
  if fmt is not None and not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
    return None  # integer leaves (step counters, ...) are left alone
  return fmt


def quantize_tree(tree: Any, fmt: FormatSpec, mode: str = "nearest", *,
                  key: jax.Array | None = None, rng: str = "hash") -> Any:
  """Rounds every float leaf of a pytree (e.g. parameters) to its format.

  Args:
    tree: pytree of arrays; non-float leaves are returned unchanged.
    fmt: one format for all leaves, or a callable (key_path, leaf) -> format or None (None keeps
      the leaf as it is), e.g. to give biases more integer bits.
    mode: "nearest" or "stochastic".
    key: PRNG key for mode="stochastic"; leaf i uses `jax.random.fold_in(key, i)`.
    rng: "hash" or "jax".

  Returns:
    A pytree of the same structure with rounded float leaves (straight-through gradients).
  """
  check_choice("mode", mode, ROUNDING_MODES, "quantize_tree")
  if mode == "stochastic":
    key = check_key(key, "quantize_tree", purpose="stochastic rounding")
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  out = []
  for i, (path, leaf) in enumerate(leaves):
    leaf_fmt = leaf_format(fmt, path, leaf)
    if leaf_fmt is None:
      out.append(leaf)
      continue
    leaf_key = jax.random.fold_in(key, i) if mode == "stochastic" else None
    out.append(quantize(leaf, leaf_fmt, mode, key=leaf_key, rng=rng))
  return jax.tree_util.tree_unflatten(treedef, out)
