"""Shared functions, parameters and modules of the reversible-network tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastnets.nn.reversible import RevBlock, ReversibleStack

EPS32 = float(np.finfo(np.float32).eps)


def mlp(params, x):
  return jnp.tanh(x @ params["w"] + params["b"]) @ params["v"]


def dropout_mlp(params, x, key):
  keep = jax.random.bernoulli(key, 0.8, x.shape)
  return mlp(params, jnp.where(keep, x / 0.8, 0.0))


def aux_mlp(params, x):
  h = x @ params["w"] + params["b"]
  return jnp.tanh(h) @ params["v"], {"mean": jnp.mean(h, axis=0)}


def normal(seed, shape, dtype=np.float32):
  """numpy random arrays: no XLA compilation per shape (the tests are compile-bound)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def stacked_params(seed, depth, half, hidden=None, gain=1.0, dtype=np.float32):
  hidden = hidden or half
  rng = np.random.default_rng(seed)

  def one():
    return {"w": jnp.asarray((rng.standard_normal((depth, half, hidden)) / np.sqrt(half))
                             .astype(dtype)),
            "b": jnp.asarray((0.1 * rng.standard_normal((depth, hidden))).astype(dtype)),
            "v": jnp.asarray((rng.standard_normal((depth, hidden, half)) * gain / np.sqrt(hidden))
                             .astype(dtype))}

  return one(), one()


def unstack(params, depth):
  return [tuple(jax.tree.map(lambda a: a[i], p) for p in params) for i in range(depth)]


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def rel_err(a, b):
  a, b = flat(a), flat(b)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def vjp_with_cotangent(fn, args, seed=7):
  """Gradient of <fn(*args), r> for a random cotangent r (w.r.t. all args)."""
  out = jax.eval_shape(fn, *args)
  r = normal(seed, out.shape, out.dtype)
  return jax.grad(lambda *a: jnp.sum(fn(*a) * r), argnums=tuple(range(len(args))))(*args)


def random_variables(model, x, seed=0):
  """Variables of `model` with random values, without compiling its init (the slow part here)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'var'" in name:
      value = 1.0 + 0.1 * rng.random(leaf.shape)
    elif "'scale'" in name:
      value = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
    else:
      fan_in = np.prod(leaf.shape[:-1]) / (leaf.shape[0] if "'F'" in name or "'G'" in name
                                           else 1) if leaf.ndim > 1 else 1
      value = rng.standard_normal(leaf.shape) / np.sqrt(max(fan_in, 1))
    return jnp.asarray(value.astype(leaf.dtype))

  return jax.tree_util.tree_map_with_path(fill, shapes)


class BNDropMLP(nn.Module):
  """F/G for module tests: Dense - BatchNorm - ReLU - Dropout - Dense (keeps the width)."""
  hidden: int = 8
  rate: float = 0.2

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Dense(self.hidden)(x)
    h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
    h = nn.Dropout(self.rate, deterministic=not train)(h)
    return nn.Dense(x.shape[-1])(h)


class StackModel(nn.Module):
  """An ordinary Linen model with a reversible stack and a reversible block inside."""
  backprop: str = "reversible"
  num_blocks: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(8)(x)
    x = ReversibleStack(BNDropMLP(), num_blocks=self.num_blocks, backprop=self.backprop)(x, train)
    x = RevBlock(BNDropMLP(rate=0.1), backprop=self.backprop)(x, train)
    return nn.Dense(3)(x)
