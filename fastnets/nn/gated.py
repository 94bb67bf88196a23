"""Gated batch norm (Gate Decorator, You et al. NeurIPS 2019) and access to its gates and masks.

`GatedBatchNorm` is a batch norm whose output channel c is multiplied by a trainable gate phi_c
(initialised to 1) and by a fixed 0/1 channel mask m_c (the "channel_mask" collection):

    y_c = m_c * phi_c * (gamma_c * (x_c - mu_c) / sqrt(var_c + eps) + beta_c)     (paper, Eq. 3)

The gate's gradient gives the Taylor score (`fastnets.ops.taylor_scores`); a pruned channel has
m_c = 0, so it outputs exactly zero and its gate gets no gradient. With `gated=False` the module
is a plain batch norm under the same parameter path (`<name>/bn/...`), which is what channel
surgery produces: it folds phi into gamma and beta.

Variables of a gated module named `g`: params `g/bn/{scale,bias}`, `g/gate` (C,);
batch_stats `g/bn/{mean,var}`; channel_mask `g/mask` (C,) float32.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GATE_COLLECTION", "GatedBatchNorm", "gate_masks", "gate_values", "with_gate_masks"]

GATE_COLLECTION = "channel_mask"


class GatedBatchNorm(nn.Module):
  """Batch norm with a per-channel gate and a fixed channel mask (You et al. 2019, Eq. 3).

  Attributes:
    gated: add the gate and the mask (False: a plain batch norm, e.g. after surgery).
    momentum, epsilon: as in `flax.linen.BatchNorm`.
  """
  gated: bool = True
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: (..., C) float. Returns the gated, normalised (..., C) array."""
    y = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                     epsilon=self.epsilon, name="bn")(x)
    if not self.gated:
      return y
    c = x.shape[-1]
    gate = self.param("gate", nn.initializers.ones, (c,), jnp.float32)
    mask = self.variable(GATE_COLLECTION, "mask", lambda: jnp.ones((c,), jnp.float32))
    return y * (gate * mask.value).astype(y.dtype)


def _gate_leaves(tree, leaf_name):
  """{module path: leaf} of every `leaf_name` leaf in a nested dict."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [getattr(k, "key", str(k)) for k in path]
    if keys and keys[-1] == leaf_name:
      out["/".join(str(k) for k in keys[:-1])] = leaf
  return out


def gate_masks(variables: Mapping) -> dict:
  """{gate name: (C,) numpy bool alive mask} of a gated model's variables.

  Raises:
    ValueError: the variables have no "channel_mask" collection (a model without gates).
  """
  if GATE_COLLECTION not in variables:
    raise ValueError(f"the variables have no {GATE_COLLECTION!r} collection: the model has no "
                     "GatedBatchNorm gates (build it with gated=True).")
  return {k: np.asarray(v) > 0 for k, v in _gate_leaves(variables[GATE_COLLECTION], "mask").items()}


def gate_values(params: Mapping) -> dict:
  """{gate name: (C,) gate phi} of a gated model's params (names as in `gate_masks`)."""
  return _gate_leaves(params, "gate")


def with_gate_masks(variables: Mapping, masks: Mapping) -> dict:
  """A copy of `variables` whose channel masks are `masks` ({gate name: (C,) bool}); the
  input is not modified. Raises ValueError for an unknown gate name or a wrong length."""
  current = gate_masks(variables)
  unknown = sorted(set(masks) - set(current))
  if unknown:
    raise ValueError(f"unknown gates {unknown}; the model has {sorted(current)}.")

  def rebuild(node, prefix):
    out = {}
    for k, v in node.items():
      name = f"{prefix}/{k}" if prefix else str(k)
      if isinstance(v, Mapping):
        out[k] = rebuild(v, name)
      elif k == "mask" and prefix in masks:
        m = np.asarray(masks[prefix], bool)
        if m.shape != tuple(v.shape):
          raise ValueError(f"mask of gate {prefix!r} must have shape {tuple(v.shape)}; got "
                           f"{m.shape}.")
        out[k] = jnp.asarray(m, v.dtype)
      else:
        out[k] = v
    return out

  new = dict(variables)
  new[GATE_COLLECTION] = rebuild(variables[GATE_COLLECTION], "")
  return new
