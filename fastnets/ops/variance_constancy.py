"""The variance-constancy loss (VCL; Littwin & Wolf, NeurIPS 2018).

VCL is a regulariser that asks a layer's activations to have the same sample variance on two
random, disjoint sub-batches of the mini-batch. For activations `x` of shape (batch, ..., units),
two sub-batches A and B of `sub_batch` examples each give, per activation element, the unbiased
sample variances s_A^2 and s_B^2 over their examples, and

    VCL(x) = mean over elements of (1 - s_A^2 / (s_B^2 + beta))^2          (the paper's Eq. 4)

with a learned `beta` > 0 per unit (last axis), which keeps the ratio finite when s_B^2 vanishes.
The paper shows that the expected loss is minimised by activations whose distribution makes the
sample variance constant (e.g. bimodal units), which is what batch norm's normalisation achieves
by construction, and trains unnormalised ELU networks with it.

The reference implementation takes the first two slices of the batch as the sub-batches; here
they are drawn with an explicit key (a random permutation per step), so the estimate does not
depend on the data order. Pure functions: the key is the first argument; nothing is stored.
"""

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from fastnets import checks

# The reference implementation clamps beta from below at this value after every update; here the
# loss uses max(beta, MIN_BETA), which keeps the ratio finite without touching the parameter.
MIN_BETA = 1e-3


def _check_sub_batch(sub_batch, batch: int, fn: str) -> int:
  if not isinstance(sub_batch, int) or isinstance(sub_batch, bool) or sub_batch < 2:
    raise ValueError(f"{fn}: sub_batch must be an int >= 2 (a variance needs two examples), got "
                     f"{sub_batch!r}.")
  if 2 * sub_batch > batch:
    raise ValueError(f"{fn}: sub_batch={sub_batch} is larger than half the batch ({batch} "
                     f"examples): the two sub-batches must be disjoint. Use sub_batch <= "
                     f"{batch // 2}.")
  return sub_batch


def sub_batch_indices(key: jax.Array, batch: int, sub_batch: int) -> tuple[jax.Array, jax.Array]:
  """Two disjoint random index sets of `sub_batch` examples each out of `batch`.

  Returns: (idx_a, idx_b), int32 arrays of shape (sub_batch,).
  """
  checks.check_key(key, "sub_batch_indices")
  _check_sub_batch(sub_batch, batch, "sub_batch_indices")
  perm = jax.random.permutation(key, batch)
  return perm[:sub_batch], perm[sub_batch:2 * sub_batch]


def variance_ratio_loss(x_a: jax.Array, x_b: jax.Array, beta: jax.Array,
                        min_beta: float = MIN_BETA) -> jax.Array:
  """VCL of two given sub-batches: mean of (1 - var(x_a) / (var(x_b) + beta))^2.

  Args:
    x_a, x_b: (n, ..., units) float arrays, n >= 2 (the same shape).
    beta: scalar or (units,) float, broadcast over the last axis.
    min_beta: beta counts as max(beta, min_beta) (the reference clamps it at 1e-3; 0 gives the
      plain ratio).

  Returns:
    Scalar (float32, or float64 for float64 inputs). Zero exactly when var(x_a) = var(x_b) +
    beta elementwise (for beta = 0: when the two sub-batches have equal variances).
  """
  if x_a.shape != x_b.shape:
    raise ValueError(f"variance_ratio_loss: x_a and x_b must have the same shape, got "
                     f"{x_a.shape} and {x_b.shape}.")
  if x_a.ndim < 2 or x_a.shape[0] < 2:
    raise ValueError(f"variance_ratio_loss: x_a must be (n >= 2, ..., units), got {x_a.shape}.")
  dtype = jnp.promote_types(x_a.dtype, jnp.float32)  # float64 stays float64 (gradient checks)
  var_a = jnp.var(x_a.astype(dtype), axis=0, ddof=1)
  var_b = jnp.var(x_b.astype(dtype), axis=0, ddof=1)
  beta = jnp.maximum(jnp.asarray(beta, var_b.dtype), min_beta)
  return jnp.mean(jnp.square(1.0 - var_a / (var_b + beta)))


def variance_constancy_loss(key: jax.Array, x: jax.Array, beta: jax.Array,
                            sub_batch: int = 5, min_beta: float = MIN_BETA) -> jax.Array:
  """VCL of one layer's activations, two disjoint sub-batches drawn with `key` (Eq. 4).

  Args:
    key: a `jax.random` key choosing the sub-batches.
    x: (batch, ..., units) activations (dense (batch, units) or NHWC (batch, h, w, channels)).
    beta: scalar or (units,) learned offset (see `variance_ratio_loss`).
    sub_batch: examples per sub-batch (the reference uses 5); at most half the batch.
    min_beta: see `variance_ratio_loss`.

  Returns:
    Scalar float32 loss.
  """
  checks.check_key(key, "variance_constancy_loss")
  if x.ndim < 2:
    raise ValueError(f"variance_constancy_loss: x must be (batch, ..., units), got {x.shape}.")
  idx_a, idx_b = sub_batch_indices(key, x.shape[0], sub_batch)
  return variance_ratio_loss(x[idx_a], x[idx_b], beta, min_beta)


def variance_constancy_total(key: jax.Array, activations: Sequence[jax.Array],
                             betas: Sequence[jax.Array], sub_batch: int = 5,
                             min_beta: float = MIN_BETA) -> jax.Array:
  """Sum of `variance_constancy_loss` over layers, layer i drawing with `fold_in(key, i)`.

  Args:
    key: a `jax.random` key.
    activations: one (batch, ..., units) array per layer (e.g. what a model sowed).
    betas: the matching learned betas.
    sub_batch, min_beta: see `variance_constancy_loss`.

  Raises:
    ValueError: no activations (a model that sows none), or a count mismatch.
  """
  checks.check_key(key, "variance_constancy_total")
  activations, betas = list(activations), list(betas)
  if not activations:
    raise ValueError("variance_constancy_total: activations is empty: the model sowed no "
                     "activations for VCL (add fastnets.nn.VarianceConstancy taps to it).")
  if len(activations) != len(betas):
    raise ValueError(f"variance_constancy_total: {len(activations)} activations but "
                     f"{len(betas)} betas.")
  total = jnp.zeros((), jnp.float32)
  for i, (x, beta) in enumerate(zip(activations, betas)):
    total = total + variance_constancy_loss(jax.random.fold_in(key, i), x, beta, sub_batch,
                                           min_beta)
  return total


def sown_pairs(sown: Mapping, value_name: str = "activation",
               beta_name: str = "beta") -> tuple[list, list]:
  """The (activations, betas) lists of a sown collection, matched by module path.

  `sown` is a collection as `Module.sow` fills it: {module: {..., value_name: (x,),
  beta_name: (beta,)}} at any nesting depth; each tuple holds one entry per call of the module.
  """
  acts, betas = [], []

  def walk(node):
    if not isinstance(node, Mapping):
      return
    if value_name in node:
      if beta_name not in node:
        raise ValueError(f"sown_pairs: a module sowed {value_name!r} without {beta_name!r}.")
      values, bs = node[value_name], node[beta_name]
      values = values if isinstance(values, tuple) else (values,)
      bs = bs if isinstance(bs, tuple) else (bs,)
      acts.extend(values)
      betas.extend(bs)
    for k, child in node.items():
      if k not in (value_name, beta_name):
        walk(child)

  walk(sown)
  return acts, betas
