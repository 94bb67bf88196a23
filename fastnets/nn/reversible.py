"""Reversible residual blocks as Flax Linen modules (RevNet, Gomez et al. 2017, Sec. 3).

`RevBlock` is one additive coupling block, y1 = x1 + F(x2), y2 = x2 + G(y1) (Eq. (3));
`ReversibleStack` is `num_blocks` such blocks with parameters stacked along a leading axis, run
by `lax.scan`. Both call `fastnets.ops.reversible_sequence`, whose backward pass rebuilds the
activations from the outputs (Eq. (4), Algorithm 1) instead of storing them.

F and G are ordinary Linen modules given as templates (`f=ConvBNReLU(...)`); the wrapper owns
their variables and applies them functionally:

* parameters are created by `init` as usual, under the names "F" and "G" (stacked along axis 0
  in `ReversibleStack`), so `model.init` / `model.apply` of any enclosing model just work;
* batch norm (and any other state collection of F and G, e.g. "batch_stats"): in training mode
  F and G normalise with batch statistics both in the forward pass and in the rebuild of the
  backward pass (the rebuild re-evaluates F and G in the same mode on the rebuilt inputs, so the
  gradient is that of the forward computation); the running statistics are the forward pass's
  updated values, written back exactly once per call (the rebuild's are discarded). Call the
  model with `mutable=["batch_stats"]` in training, as for any Flax model with batch norm;
* dropout: a key is drawn from the "dropout" rng stream (if the caller supplied one) and split per
  block, so the rebuild recomputes exactly the same masks.

If F's or G's `__call__` has a `train` argument it receives the wrapper's `train`.
"""

import inspect

import flax.linen as nn
import jax

from fastnets.ops.reversible import (
  BACKPROP_MODES,
  reversible_sequence,
  reversible_sequence_inverse,
  split_channels,
)

_NAMES = ("F", "G")


def _accepts_train(module: nn.Module) -> bool:
  try:
    return "train" in inspect.signature(type(module).__call__).parameters
  except (TypeError, ValueError):
    return False


def _templates(module) -> tuple[nn.Module, nn.Module]:
  if not isinstance(module.f, nn.Module):
    raise TypeError(f"f must be a flax.linen Module (the template of F), got "
                    f"{type(module.f).__name__}.")
  if module.g is not None and not isinstance(module.g, nn.Module):
    raise TypeError(f"g must be a flax.linen Module or None, got {type(module.g).__name__}.")
  f_def = module.f.clone(parent=None, name=None)
  g_def = (module.g if module.g is not None else module.f).clone(parent=None, name=None)
  return f_def, g_def


def _own_vars(module, name: str) -> dict:
  return {col: tree[name] for col, tree in module.variables.items() if name in tree}


def _block_fn(defn: nn.Module, train: bool, state_cols: tuple[str, ...], rng_collection: str):
  """F or G as a pure function `(variables, x[, key]) -> (out, updated state collections)`."""
  train_kw = {"train": train} if _accepts_train(defn) else {}

  def fn(variables, x, key=None):
    rngs = {rng_collection: key} if key is not None else None
    if state_cols:
      return defn.apply(variables, x, rngs=rngs, mutable=list(state_cols), **train_kw)
    return defn.apply(variables, x, rngs=rngs, **train_kw), {}

  return fn


def _setup(module, x, train: bool, stacked: bool):
  """Creates (at init) or reads the variables; returns the pieces the op needs."""
  if module.backprop not in BACKPROP_MODES:
    raise ValueError(f"backprop must be one of {BACKPROP_MODES}, got {module.backprop!r}.")
  n = module.num_blocks if stacked else 1
  if not isinstance(n, int) or n < 1:
    raise ValueError(f"num_blocks must be a positive int, got {n!r}.")
  f_def, g_def = _templates(module)
  x1, x2 = split_channels(x, module.axis)
  if module.is_initializing() and not any(_own_vars(module, name) for name in _NAMES):
    f_kw = {"train": False} if _accepts_train(f_def) else {}
    g_kw = {"train": False} if _accepts_train(g_def) else {}

    def init_one(rng):
      rf, rg = jax.random.split(rng)
      return f_def.init(rf, x2, **f_kw), g_def.init(rg, x1, **g_kw)

    rng = module.make_rng("params")
    init = jax.vmap(init_one)(jax.random.split(rng, n)) if stacked else init_one(rng)
    for name, variables in zip(_NAMES, init):
      for col, tree in variables.items():
        if col == "params":
          module.param(name, lambda _, t=tree: t)
        else:
          module.variable(col, name, lambda t=tree: t)
  f_vars, g_vars = (_own_vars(module, name) for name in _NAMES)
  return f_def, g_def, f_vars, g_vars


def _key(module, train: bool):
  if train and module.has_rng(module.rng_collection):
    return module.make_rng(module.rng_collection)
  return None


def _state_cols(f_vars: dict, g_vars: dict) -> tuple[str, ...]:
  return tuple(sorted((set(f_vars) | set(g_vars)) - {"params"}))


def _call(module, x, train: bool, stacked: bool):
  f_def, g_def, f_vars, g_vars = _setup(module, x, train, stacked)
  # In training, F and G update their state (batch-norm running statistics) in the forward pass
  # and again in the rebuild; the op returns the forward pass's values and drops the rebuild's.
  cols = _state_cols(f_vars, g_vars) if train else ()
  f_fn = _block_fn(f_def, train, cols, module.rng_collection)
  g_fn = _block_fn(g_def, train, cols, module.rng_collection)
  if stacked:
    fs, gs, params = f_fn, g_fn, (f_vars, g_vars)
  else:
    fs, gs, params = [f_fn], [g_fn], [(f_vars, g_vars)]
  y, aux = reversible_sequence(fs, gs, params, x, key=_key(module, train), axis=module.axis,
                               has_aux=True, num_blocks=module.num_blocks if stacked else None,
                               backprop=module.backprop, unroll=getattr(module, "unroll", 1))
  # Exactly one update per call, with the forward pass's values; none during init (as BatchNorm).
  if not module.is_initializing():
    f_new, g_new = aux if stacked else aux[0]
    for name, new in zip(_NAMES, (f_new, g_new)):
      for col, tree in new.items():
        module.put_variable(col, name, tree)
  return y


def _inverse(module, y, train: bool, stacked: bool):
  f_def, g_def = _templates(module)
  f_vars, g_vars = (_own_vars(module, name) for name in _NAMES)
  if not f_vars and not g_vars:
    raise ValueError("inverse needs initialised variables: call it through "
                     "`module.apply(variables, y, method='inverse')`.")
  cols = _state_cols(f_vars, g_vars) if train else ()  # updated state is discarded
  f_fn = _block_fn(f_def, train, cols, module.rng_collection)
  g_fn = _block_fn(g_def, train, cols, module.rng_collection)
  if stacked:
    fs, gs, params = f_fn, g_fn, (f_vars, g_vars)
  else:
    fs, gs, params = [f_fn], [g_fn], [(f_vars, g_vars)]
  return reversible_sequence_inverse(fs, gs, params, y, key=_key(module, train), axis=module.axis,
                                     has_aux=True,
                                     num_blocks=module.num_blocks if stacked else None)


class ReversibleStack(nn.Module):
  """`num_blocks` additive coupling blocks with a memory-saving backward pass (RevNet Alg. 1).

  Block i computes y1 = x1 + F_i(x2), y2 = x2 + G_i(y1) (Eq. (3)) on the channel halves of its
  input; F_i and G_i share the architecture of the templates `f` and `g` and have their own
  parameters, stored stacked along a leading axis of size `num_blocks` under the names "F" and
  "G" (also in "batch_stats" when F and G use batch norm). Activation memory of the backward pass
  does not grow with `num_blocks` (see `fastnets.ops.reversible_sequence`).

  Attributes:
    f: template Linen module for F: maps an array of x2's shape to the same shape (no strides,
      no change of channels).
    g: template for G (defaults to `f`'s architecture with its own parameters).
    num_blocks: number of coupling blocks.
    axis: channel axis that is split into halves (default last, NHWC).
    backprop: "reversible" (default), "store" (plain autodiff, the reference) or "checkpoint"
      (`jax.checkpoint` per block).
    rng_collection: rng stream whose key drives randomness in F and G in training ("dropout").
    unroll: `lax.scan` unroll of the block loop (True: none): much faster on XLA:CPU, whose
      convolution gradients inside loops are slow, but it may give up the memory saving (see
      `fastnets.ops.reversible_sequence`).

  Call: `__call__(x, train=False)`, x float with an even size along `axis`; returns an array of
  x's shape. In training with batch norm, apply with `mutable=["batch_stats"]`.
  """
  f: nn.Module
  g: nn.Module | None = None
  num_blocks: int = 1
  axis: int = -1
  backprop: str = "reversible"
  rng_collection: str = "dropout"
  unroll: int | bool = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return _call(self, x, train, stacked=True)

  def inverse(self, y: jax.Array, train: bool = False) -> jax.Array:
    """Rebuilds the input from the output (Eq. (4)); no state is updated.

    Call as `stack.apply(variables, y, train, rngs=..., method="inverse")`. With dropout in
    training, pass the same "dropout" rng as the forward `apply` (the key is drawn the same way).
    """
    return _inverse(self, y, train, stacked=True)


class RevBlock(nn.Module):
  """One additive coupling block y1 = x1 + F(x2), y2 = x2 + G(y1) (RevNet Eq. (3)).

  Same as a `ReversibleStack` of one block, with unstacked variables "F" and "G". Its backward
  pass rebuilds the block input from the output (Eq. (4)); to save memory over many blocks, use
  `ReversibleStack` (one rebuild chain for the whole stack).

  Attributes:
    f: template Linen module for F (x2's shape -> x1's shape).
    g: template for G (defaults to `f`'s architecture with its own parameters).
    axis: channel axis split into halves.
    backprop: "reversible", "store" or "checkpoint".
    rng_collection: rng stream for randomness in F and G in training.
  """
  f: nn.Module
  g: nn.Module | None = None
  axis: int = -1
  backprop: str = "reversible"
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return _call(self, x, train, stacked=False)

  def inverse(self, y: jax.Array, train: bool = False) -> jax.Array:
    """Rebuilds the block input from its output (Eq. (4)); see `ReversibleStack.inverse`."""
    return _inverse(self, y, train, stacked=False)
