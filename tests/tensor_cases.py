"""Shared cases and independent references of the Block-Term / Tensor-Train tests.

`bt_reference` and `tt_reference` build W as a sum of Kronecker products in numpy, without einsum
subscripts, so they check `fastnets.ops.block_term` / `tensor_train` independently of their
contraction code.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from fastnets.ops import block_term, tensor_train


def param_size(tree) -> int:
  return sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(tree))


def variable_shapes(module, *args):
  """Variables' shapes without running anything (jax.eval_shape: no compilation)."""
  return jax.eval_shape(module.init, jax.random.key(0), *args)


def randn(seed, shape):
  """Standard normal array from numpy (float64 under enable_x64, else float32)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def np_bt(seed, in_f, out_f, rank, blocks):
  """Random float64 BT parameters from numpy (no compilation, unlike jax.random eagerly)."""
  rng = np.random.default_rng(seed)
  f_shapes, c_shape = block_term.bt_shapes(in_f, out_f, rank, blocks)
  return ([jnp.asarray(rng.standard_normal(s) / math.sqrt(s[1] * s[3])) for s in f_shapes],
          jnp.asarray(rng.standard_normal(c_shape)))


def np_tt(seed, in_f, out_f, ranks):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal(s) / math.sqrt(s[1] * s[3]))
          for s in tensor_train.tt_shapes(in_f, out_f, ranks)]


def bt_reference(factors, cores) -> np.ndarray:
  factors = [np.asarray(f) for f in factors]
  cores = np.asarray(cores)
  c_blocks = cores.shape[0]
  w = 0.0
  for c in range(c_blocks):
    for r in itertools.product(*[range(s) for s in cores.shape[1:]]):
      term = np.ones((1, 1))
      for n, f in enumerate(factors):
        term = np.kron(term, f[c, :, :, r[n]])
      w = w + cores[(c,) + r] * term
  return w


def tt_reference(cores) -> np.ndarray:
  cores = [np.asarray(g) for g in cores]
  ranks = [g.shape[3] for g in cores[:-1]]
  w = 0.0
  for alpha in itertools.product(*[range(r) for r in ranks]):
    a = (0,) + alpha + (0,)
    term = np.ones((1, 1))
    for n, g in enumerate(cores):
      term = np.kron(term, g[a[n], :, :, a[n + 1]])
    w = w + term
  return w


BT_CASES = [
    # input_factors, output_factors, rank, num_blocks
    ((6,), (5,), 3, 2),
    ((2, 3), (3, 2), 2, 1),
    ((2, 3, 4), (3, 2, 2), 2, 3),
    ((2, 3, 4), (4, 1, 2), (1, 2, 3), 2),
    ((3, 2, 2, 2), (2, 2, 2, 3), 2, 2),
]


TT_CASES = [
    ((6,), (5,), 1),
    ((2, 3), (3, 2), 3),
    ((2, 3, 4), (3, 2, 2), (3, 2)),
    ((3, 2, 2, 2), (2, 2, 2, 3), (1, 2, 3, 2, 1)),
]
