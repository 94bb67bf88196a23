"""Reversible residual sequences: backprop that rebuilds activations instead of storing them.

RevNet (Gomez, Ren, Urtasun, Grosse, NeurIPS 2017, "The Reversible Residual Network"), Sec. 3,
Eqs. (3)-(4) and Algorithm 1. The channels of `x` are split into halves (x1, x2) and one additive
coupling block computes

    y1 = x1 + F(x2)          (3)
    y2 = x2 + G(y1)

whose inverse is exact in real arithmetic:

    x2 = y2 - G(y1)          (4)
    x1 = y1 - F(x2)

`reversible_sequence` chains such blocks as ONE `jax.custom_vjp`: the forward pass keeps only the
final output, and the backward pass walks the blocks in reverse (a `lax.scan` with `reverse=True`
over block parameters stacked along a leading axis), rebuilding each block's input from its output
and taking the VJP of F and G at the rebuilt values (Algorithm 1). Activation memory is therefore
that of one block whatever the depth; the price is one extra evaluation of F and G per block.

F and G are arbitrary pure functions `(params, x) -> array of x's shape` (or
`(params, x, key) -> ...` when a `key` is given: every block gets its own key derived with
`fold_in(block index)`, so dropout inside F or G is recomputed identically in the rebuild). With
`has_aux=True` they return `(out, aux)`; the auxiliary outputs of the forward pass (for example
updated batch-norm running statistics) are returned stacked over blocks, and those computed again
during the rebuild are discarded, so state derived from them is updated exactly once.

No Flax state here: `fastnets.nn.reversible` wraps this for Linen modules.
"""

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fastnets.checks import check_key

PyTree = Any
BlockFn = Callable[..., Any]

BACKPROP_MODES = ("reversible", "store", "checkpoint")


# ------------------------------------------------------------------------------------------------
# One coupling block.


def _call(fn: BlockFn, params: PyTree, x: jax.Array, key: jax.Array | None, has_aux: bool):
  """Calls F or G; returns (out, aux) with aux=() when `has_aux` is False."""
  out = fn(params, x) if key is None else fn(params, x, key)
  if has_aux:
    return out[0], out[1]
  return out, ()


def _block_keys(key: jax.Array | None, index) -> tuple[jax.Array | None, jax.Array | None]:
  """Keys for F and G of block `index`: fold_in(fold_in(key, index), 0 or 1)."""
  if key is None:
    return None, None
  block_key = jax.random.fold_in(key, index)
  return jax.random.fold_in(block_key, 0), jax.random.fold_in(block_key, 1)


def _coupling(f, g, f_params, g_params, x1, x2, f_key, g_key, has_aux):
  """Eq. (3): returns (y1, y2, (f_aux, g_aux))."""
  fx2, f_aux = _call(f, f_params, x2, f_key, has_aux)
  y1 = x1 + fx2
  gy1, g_aux = _call(g, g_params, y1, g_key, has_aux)
  y2 = x2 + gy1
  return y1, y2, (f_aux, g_aux)


def _coupling_inverse(f, g, f_params, g_params, y1, y2, f_key, g_key, has_aux):
  """Eq. (4): returns (x1, x2)."""
  gy1, _ = _call(g, g_params, y1, g_key, has_aux)
  x2 = y2 - gy1
  fx2, _ = _call(f, f_params, x2, f_key, has_aux)
  x1 = y1 - fx2
  return x1, x2


def _is_float(leaf) -> bool:
  return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


def _vjp_float_params(fn, params, x):
  """`jax.vjp` of `fn(params, x) -> (out, aux)` w.r.t. the floating leaves of params and x.

  Returns (out, vjp) where vjp(ct) -> (float-leaf cotangents as a list, x cotangent).
  Integer leaves of `params` (step counters and the like) are held constant.
  """
  leaves, treedef = jax.tree_util.tree_flatten(params)
  float_idx = [i for i, leaf in enumerate(leaves) if _is_float(leaf)]

  def on_floats(float_leaves, x):
    full = list(leaves)
    for i, leaf in zip(float_idx, float_leaves):
      full[i] = leaf
    return fn(jax.tree_util.tree_unflatten(treedef, full), x)

  out, vjp, _ = jax.vjp(on_floats, [leaves[i] for i in float_idx], x, has_aux=True)
  return out, vjp


def _merge_float_cotangents(params, float_cts):
  """Rebuilds a cotangent tree for `params`: float0 zeros on non-float leaves."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  float_cts = iter(float_cts)
  out = [next(float_cts) if _is_float(leaf)
         else np.zeros(np.shape(leaf), dtype=jax.dtypes.float0) for leaf in leaves]
  return jax.tree_util.tree_unflatten(treedef, out)


def _coupling_backward(f, g, f_params, g_params, y1, y2, dy1, dy2, f_key, g_key, has_aux):
  """Algorithm 1 for one block: rebuilds (x1, x2) from (y1, y2) and back-propagates.

  Evaluates G at y1 and F at the rebuilt x2 once each (the extra forward pass) and takes their
  VJPs there. Returns (x1, x2, dx1, dx2, f_param_cts, g_param_cts), the parameter cotangents as
  lists over floating leaves.
  """
  gy1, g_vjp = _vjp_float_params(lambda p, v: _call(g, p, v, g_key, has_aux), g_params, y1)
  x2 = y2 - gy1
  fx2, f_vjp = _vjp_float_params(lambda p, v: _call(f, p, v, f_key, has_aux), f_params, x2)
  x1 = y1 - fx2
  # y2 = x2 + G(y1): dL/dy1 gains G's input cotangent; dL/dx2 starts at dy2.
  dg_params, dy1_from_g = g_vjp(dy2)
  dy1_total = dy1 + dy1_from_g
  # y1 = x1 + F(x2): dL/dx1 = dy1_total, dL/dx2 gains F's input cotangent.
  df_params, dx2_from_f = f_vjp(dy1_total)
  return x1, x2, dy1_total, dy2 + dx2_from_f, df_params, dg_params


# ------------------------------------------------------------------------------------------------
# Validation (trace time).


def _split(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  return tuple(jnp.split(x, 2, axis=axis))


def _check_x(x, axis: int, name: str) -> int:
  if not (hasattr(x, "shape") and hasattr(x, "dtype")):
    raise TypeError(f"{name} must be an array, got {type(x).__name__}.")
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    raise TypeError(f"{name} must be a floating array (the coupling adds and subtracts), "
                    f"got dtype {x.dtype}.")
  if x.ndim == 0:
    raise ValueError(f"{name} must have at least one axis to split, got a scalar.")
  if not -x.ndim <= axis < x.ndim:
    raise ValueError(f"axis must be in [-{x.ndim}, {x.ndim}) for {name} of shape {x.shape}, "
                     f"got {axis}.")
  axis = axis % x.ndim
  if x.shape[axis] % 2:
    raise ValueError(
        f"{name} must have an even size along axis {axis} to split into halves (x1, x2) for the "
        f"additive coupling, got shape {x.shape} ({x.shape[axis]} channels). Use an even number "
        "of channels (e.g. pad or project to an even width first).")
  return axis


def _check_block_output(name: str, out, half, has_aux: bool, role: str) -> None:
  """Checks F(x2) against x1 (or G(y1) against x2): shape and dtype must match exactly."""
  if has_aux:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
      raise ValueError(f"{name} must return a pair (out, aux) when has_aux=True, got "
                       f"{type(out).__name__}.")
    out = out[0]
  if not hasattr(out, "shape"):
    raise TypeError(f"{name} must return an array (or (array, aux) with has_aux=True), got "
                    f"{type(out).__name__}.")
  if tuple(out.shape) != tuple(half.shape):
    raise ValueError(
        f"{name} must return an array of the shape of {role} {tuple(half.shape)} so that the "
        f"coupling stays invertible, got shape {tuple(out.shape)}. F and G may not change the "
        "shape (no strides, no change of channels) inside a reversible block; put downsampling "
        "in an ordinary (non-reversible) layer between reversible stacks.")
  if out.dtype != half.dtype:
    raise TypeError(f"{name} must return dtype {half.dtype} (the dtype of {role}), got "
                    f"{out.dtype}; cast inside the function.")


def _check_mode(backprop: str) -> None:
  if backprop not in BACKPROP_MODES:
    raise ValueError(f"backprop must be one of {BACKPROP_MODES}, got {backprop!r}.")


def _num_stacked(params: PyTree, num_blocks: int | None) -> int:
  leaves = jax.tree_util.tree_leaves(params)
  sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
  if None in sizes:
    raise ValueError("params must be stacked per block: every leaf needs a leading block axis, "
                     "found a scalar leaf.")
  if len(sizes) > 1:
    raise ValueError(f"params must be stacked per block with one common leading axis, got "
                     f"leading sizes {sorted(sizes)}.")
  if not sizes:
    if num_blocks is None:
      raise ValueError("params has no arrays, so the number of blocks is unknown: pass "
                       "num_blocks=.")
    return num_blocks
  (n,) = sizes
  if num_blocks is not None and num_blocks != n:
    raise ValueError(f"num_blocks={num_blocks} does not match the leading axis {n} of params.")
  if n < 1:
    raise ValueError("params must hold at least one block (leading axis 0).")
  return n


@dataclasses.dataclass(frozen=True)
class _Spec:
  """Static description of a sequence: the functions and how to call them."""
  fs: tuple[BlockFn, ...]      # one per block (list form) or (f,) (stacked form)
  gs: tuple[BlockFn, ...]
  stacked: bool
  num_blocks: int
  axis: int
  has_aux: bool
  unroll: int | bool = 1       # lax.scan's unroll for the stacked form's passes

  def fg(self, i: int) -> tuple[BlockFn, BlockFn]:
    return (self.fs[0], self.gs[0]) if self.stacked else (self.fs[i], self.gs[i])


def _differentiated_closure(fn, args) -> tuple[bool, Any]:
  """(whether `fn(*args)` closes over a value that jax.grad / jax.jvp is differentiating, its
  output shapes). Such a value is an autodiff tracer among the constants of fn's jaxpr; the
  reversible backward pass, a custom_vjp, cannot send it a cotangent."""
  jaxpr, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
  leaky = any(isinstance(c, jax.core.Tracer) and type(c).__module__.endswith("interpreters.ad")
              for c in jaxpr.consts)
  return leaky, out_shape


def _make_spec(f, g, params, x, key, axis, has_aux, num_blocks, name="x", unroll=1,
               backprop="store") -> _Spec:
  axis = _check_x(x, axis, name)
  if not (unroll is True or (type(unroll) is int and unroll >= 1)):
    raise ValueError(f"unroll must be a positive int or True, got {unroll!r}.")
  check_key(key, "reversible_sequence", optional=True)
  if callable(f) != callable(g):
    raise TypeError("f and g must both be callables (stacked params) or both be sequences of "
                    "callables (one per block).")
  if callable(f):
    if not (isinstance(params, (tuple, list)) and len(params) == 2):
      raise ValueError("params must be a pair (f_params, g_params) of pytrees stacked along a "
                       "leading block axis when f and g are single functions.")
    n = _num_stacked(params, num_blocks)
    spec = _Spec((f,), (g,), True, n, axis, has_aux, unroll)
    first = jax.tree_util.tree_map(lambda leaf: leaf[0], params)
    checks = [(0, first)]
  else:
    fs, gs = tuple(f), tuple(g)
    if not fs or len(fs) != len(gs) or not all(map(callable, fs + gs)):
      raise ValueError(f"f and g must be non-empty sequences of callables of equal length, got "
                       f"{len(fs)} and {len(gs)}.")
    if not (isinstance(params, (tuple, list)) and len(params) == len(fs)
            and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in params)):
      raise ValueError(f"params must be a sequence of {len(fs)} pairs (f_params, g_params), one "
                       "per block, when f and g are sequences.")
    if num_blocks is not None and num_blocks != len(fs):
      raise ValueError(f"num_blocks={num_blocks} does not match len(f)={len(fs)}.")
    spec = _Spec(fs, gs, False, len(fs), axis, has_aux, unroll)
    checks = list(enumerate(params))
  x1, x2 = jax.eval_shape(lambda v: _split(v, axis), x)
  for i, (fp, gp) in checks:
    fi, gi = spec.fg(i)
    kf, kg = jax.eval_shape(lambda k: _block_keys(k, i), key) if key is not None else (None, None)
    args_f = (fp, x2) if key is None else (fp, x2, kf)
    args_g = (gp, x1) if key is None else (gp, x1, kg)
    for role, fn, args, half, what in (("f", fi, args_f, x1, "x1"),
                                       ("g", gi, args_g, x2, "x2 (G maps y1 to x2's shape)")):
      if backprop == "reversible":
        leaky, out = _differentiated_closure(fn, args)
        if leaky:
          raise ValueError(
              f"{role} (block {i}) closes over a value that is being differentiated (a JAX "
              "tracer of jax.grad/jax.jvp); the reversible backward pass cannot send it a "
              f"gradient. Pass that value to {role} through its params instead of a closure, "
              "or use backprop='store'.")
      else:
        out = jax.eval_shape(fn, *args)
      _check_block_output(f"{role} (block {i})", out, half, has_aux, what)
  return spec


# ------------------------------------------------------------------------------------------------
# Forward, inverse and backward over the whole sequence.


def _forward(spec: _Spec, params, x, key, backprop: str):
  """Runs every block; returns (y, aux) with aux stacked over blocks (or a list)."""
  x1, x2 = _split(x, spec.axis)
  if spec.stacked:
    f, g = spec.fg(0)

    def body(carry, xs):
      (fp, gp), i = xs
      kf, kg = _block_keys(key, i)
      y1, y2, aux = _coupling(f, g, fp, gp, *carry, kf, kg, spec.has_aux)
      return (y1, y2), aux

    if backprop == "checkpoint":
      body = jax.checkpoint(body)
    (y1, y2), aux = lax.scan(body, (x1, x2), (params, jnp.arange(spec.num_blocks)),
                             unroll=spec.unroll)
  else:
    aux = []
    for i, (fp, gp) in enumerate(params):
      f, g = spec.fg(i)
      kf, kg = _block_keys(key, i)
      block = functools.partial(_coupling, f, g)
      if backprop == "checkpoint":
        block = jax.checkpoint(block, static_argnums=(6,))
      x1, x2, a = block(fp, gp, x1, x2, kf, kg, spec.has_aux)
      aux.append(a)
    y1, y2 = x1, x2
  return jnp.concatenate([y1, y2], axis=spec.axis), aux


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _reversible(spec: _Spec, params, x, key):
  """The reversible sequence as one custom_vjp.

  Saved for the backward pass: only the sequence's final output y, the parameters and the key
  (no per-block activation). Recomputed in the backward pass, block by block from the last:
  G(y1) to rebuild x2 = y2 - G(y1), then F(x2) to rebuild x1 = y1 - F(x2), each evaluated once
  together with its VJP (RevNet Algorithm 1), with the block's own key so that dropout masks
  match the forward pass. Auxiliary outputs of the rebuild are discarded, and the cotangent of
  the auxiliary outputs is ignored (they are treated as not differentiable).
  """
  return _forward(spec, params, x, key, "store")


def _reversible_fwd(spec, params, x, key):
  y, aux = _forward(spec, params, x, key, "store")
  return (y, aux), (y, params, key)


def _reversible_bwd(spec, residuals, cts):
  y, params, key = residuals
  dy, _ = cts  # cotangent of aux: ignored (aux is not differentiable).
  y1, y2 = _split(y, spec.axis)
  dy1, dy2 = _split(dy, spec.axis)
  if spec.stacked:
    f, g = spec.fg(0)

    def body(carry, xs):
      (fp, gp), i = xs
      kf, kg = _block_keys(key, i)
      x1, x2, dx1, dx2, dfp, dgp = _coupling_backward(f, g, fp, gp, *carry, kf, kg, spec.has_aux)
      return (x1, x2, dx1, dx2), (dfp, dgp)

    (_, _, dx1, dx2), (dfp, dgp) = lax.scan(
        body, (y1, y2, dy1, dy2), (params, jnp.arange(spec.num_blocks)), reverse=True,
        unroll=spec.unroll)
    dparams = (_merge_float_cotangents(params[0], dfp), _merge_float_cotangents(params[1], dgp))
    dparams = type(params)(dparams) if isinstance(params, list) else dparams
  else:
    dparams = [None] * spec.num_blocks
    for i in reversed(range(spec.num_blocks)):
      f, g = spec.fg(i)
      fp, gp = params[i]
      kf, kg = _block_keys(key, i)
      y1, y2, dy1, dy2, dfp, dgp = _coupling_backward(f, g, fp, gp, y1, y2, dy1, dy2, kf, kg,
                                                      spec.has_aux)
      pair = (_merge_float_cotangents(fp, dfp), _merge_float_cotangents(gp, dgp))
      dparams[i] = type(params[i])(pair) if isinstance(params[i], list) else pair
    dparams = type(params)(dparams)
    dx1, dx2 = dy1, dy2
  return dparams, jnp.concatenate([dx1, dx2], axis=spec.axis), None


_reversible.defvjp(_reversible_fwd, _reversible_bwd)


# ------------------------------------------------------------------------------------------------
# Public API.


def split_channels(x: jax.Array, axis: int = -1) -> tuple[jax.Array, jax.Array]:
  """Splits x into the halves (x1, x2) of a coupling block, first half first (RevNet Sec. 3).

  Args:
    x: float array with an even size along `axis`.
    axis: the channel axis (default last, NHWC).

  Returns:
    (x1, x2), each with half of x's channels.

  Raises:
    ValueError: odd size along `axis` or axis out of range. TypeError: non-float x.
  """
  return _split(x, _check_x(x, axis, "x"))


def additive_coupling(
    f: BlockFn,
    g: BlockFn,
    f_params: PyTree,
    g_params: PyTree,
    x1: jax.Array,
    x2: jax.Array,
    *,
    f_key: jax.Array | None = None,
    g_key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """One additive coupling block, RevNet Eq. (3): y1 = x1 + F(x2), y2 = x2 + G(y1).

  Differentiated by ordinary autodiff (stores its activations); use `reversible_sequence` for the
  memory-saving backward pass.

  Args:
    f: F, `(f_params, x2) -> array like x1` (or `(f_params, x2, f_key)` when f_key is given).
    g: G, `(g_params, y1) -> array like x2` (or with g_key).
    f_params: parameters of F (any pytree).
    g_params: parameters of G.
    x1: first half, float array of any shape.
    x2: second half, same dtype as x1 (the same shape for a channel split).
    f_key: optional `jax.random` key passed to F.
    g_key: optional key passed to G.

  Returns:
    (y1, y2) with the shapes and dtypes of (x1, x2).

  Raises:
    ValueError/TypeError: F or G returns a different shape or dtype than the half it is added to.
  """
  _check_block_output("f", jax.eval_shape(lambda *a: _call(f, *a, False)[0], f_params, x2, f_key),
                      x1, False, "x1")
  _check_block_output("g", jax.eval_shape(lambda *a: _call(g, *a, False)[0], g_params, x1, g_key),
                      x2, False, "x2 (G maps y1 to x2's shape)")
  y1, y2, _ = _coupling(f, g, f_params, g_params, x1, x2, f_key, g_key, False)
  return y1, y2


def additive_coupling_inverse(
    f: BlockFn,
    g: BlockFn,
    f_params: PyTree,
    g_params: PyTree,
    y1: jax.Array,
    y2: jax.Array,
    *,
    f_key: jax.Array | None = None,
    g_key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Exact inverse of `additive_coupling`, RevNet Eq. (4): x2 = y2 - G(y1), x1 = y1 - F(x2).

  Args: as `additive_coupling`, with the block outputs (y1, y2) in place of (x1, x2); pass the
    same keys as the forward call to undo dropout exactly.

  Returns:
    (x1, x2), equal to the forward inputs up to floating-point rounding (a few ulps of the
    largest intermediate per block).

  Raises:
    ValueError/TypeError: G or F returns a different shape or dtype than the half it is
      subtracted from (as the forward checks).
  """
  _check_block_output("g", jax.eval_shape(lambda *a: _call(g, *a, False)[0], g_params, y1, g_key),
                      y2, False, "y2 (G maps y1 to x2's shape)")
  _check_block_output("f", jax.eval_shape(lambda *a: _call(f, *a, False)[0], f_params, y2, f_key),
                      y1, False, "y1")
  return _coupling_inverse(f, g, f_params, g_params, y1, y2, f_key, g_key, False)


def reversible_sequence(
    f: BlockFn | Sequence[BlockFn],
    g: BlockFn | Sequence[BlockFn],
    params: PyTree,
    x: jax.Array,
    *,
    key: jax.Array | None = None,
    axis: int = -1,
    has_aux: bool = False,
    num_blocks: int | None = None,
    backprop: str = "reversible",
    unroll: int | bool = 1,
) -> jax.Array | tuple[jax.Array, Any]:
  """A stack of additive coupling blocks whose gradient rebuilds activations (RevNet Alg. 1).

  Two forms:
  * stacked (preferred): `f` and `g` are single functions and `params = (f_params, g_params)`
    with every leaf stacked along a leading block axis of size `num_blocks`; the forward and the
    backward pass are `lax.scan`s, so compile time and activation memory do not grow with depth.
  * list: `f` and `g` are sequences of functions, `params` a sequence of `(f_params, g_params)`
    pairs, one per block (heterogeneous blocks); the passes are unrolled Python loops.

  With `backprop="reversible"` the whole sequence is one `jax.custom_vjp` (see `_reversible`):
  the forward pass saves only the final output (and the parameters and key); the backward pass
  rebuilds each block's input from its output, Eq. (4), and takes the VJP of F and G there.
  Gradients equal those of plain autodiff up to the rebuild's rounding. `backprop="store"`
  differentiates the same computation by ordinary autodiff (stores every block's activations:
  the reference), `"checkpoint"` wraps each block in `jax.checkpoint` (stores block inputs).

  F and G must be pure: anything they depend on (including values being differentiated) must
  come through their params, not a Python closure over traced values. Forward-mode autodiff
  (`jax.jvp`) is not supported in the reversible mode (custom_vjp).

  Args:
    f: F, `(params, x2) -> array of x1's shape and dtype` (`(params, x2, key) -> ...` when `key`
      is given; `(out, aux)` when has_aux), or a sequence of such functions.
    g: G, `(params, y1) -> array of x2's shape and dtype`, or a sequence.
    params: `(f_params, g_params)` stacked along axis 0 (stacked form) or a sequence of pairs.
    x: float array (..., C, ...), split into halves along `axis`; C must be even.
    key: optional `jax.random` key; block i's F gets `fold_in(fold_in(key, i), 0)` and its G
      `fold_in(fold_in(key, i), 1)`, in the forward pass and again in the rebuild.
    axis: the channel axis that is split (default last, NHWC).
    has_aux: F and G return `(out, aux)`; aux values from the forward pass are returned, those
      from the rebuild are discarded; gradients do not flow through aux.
    num_blocks: needed only when the stacked params have no arrays; checked otherwise.
    backprop: "reversible" (default), "store" or "checkpoint".
    unroll: `lax.scan`'s `unroll` for the stacked form (True: no loop). On XLA:CPU the gradient
      of a convolution inside a loop body takes a slow path, which `unroll=True` avoids. The
      price: compile time grows with depth, and once unrolled XLA schedules the rebuilds as it
      likes, so the memory saving is no longer guaranteed (it holds for a plain conv stack, not
      for RevNet's stacks with batch norm). `tools/measure_revnet_unroll.py` measures both. Keep
      the default where memory is the point; use True for fast CPU experiments.

  Returns:
    y with x's shape and dtype; with has_aux, `(y, (f_aux, g_aux))` where each aux is stacked
    over blocks along axis 0 (stacked form), or `(y, [(f_aux, g_aux), ...])` (list form).

  Raises:
    ValueError: odd size along `axis`; F or G changing the shape; params not stacked
      consistently; unknown backprop mode.
    TypeError: non-float x; F or G changing the dtype; a bad key.
  """
  _check_mode(backprop)
  spec = _make_spec(f, g, params, x, key, axis, has_aux, num_blocks, unroll=unroll,
                    backprop=backprop)
  if backprop == "reversible":
    y, aux = _reversible(spec, params, x, key)
  else:
    y, aux = _forward(spec, params, x, key, backprop)
  return (y, aux) if has_aux else y


def reversible_sequence_inverse(
    f: BlockFn | Sequence[BlockFn],
    g: BlockFn | Sequence[BlockFn],
    params: PyTree,
    y: jax.Array,
    *,
    key: jax.Array | None = None,
    axis: int = -1,
    has_aux: bool = False,
    num_blocks: int | None = None,
) -> jax.Array:
  """Rebuilds the input of `reversible_sequence` from its output (Eq. (4), last block first).

  Args: as `reversible_sequence`, with its output `y` in place of `x` and the same `key`.

  Returns:
    x with y's shape and dtype. In float32 the error grows roughly linearly with depth: each
    block adds a few ulps of its largest intermediate (see tests/test_reversible.py for the
    bound that is checked).
  """
  spec = _make_spec(f, g, params, y, key, axis, has_aux, num_blocks, name="y")
  y1, y2 = _split(y, spec.axis)
  if spec.stacked:
    f0, g0 = spec.fg(0)

    def body(carry, xs):
      (fp, gp), i = xs
      kf, kg = _block_keys(key, i)
      return _coupling_inverse(f0, g0, fp, gp, *carry, kf, kg, has_aux), None

    (x1, x2), _ = lax.scan(body, (y1, y2), (params, jnp.arange(spec.num_blocks)), reverse=True)
  else:
    for i in reversed(range(spec.num_blocks)):
      fi, gi = spec.fg(i)
      kf, kg = _block_keys(key, i)
      y1, y2 = _coupling_inverse(fi, gi, *params[i], y1, y2, kf, kg, has_aux)
    x1, x2 = y1, y2
  return jnp.concatenate([x1, x2], axis=spec.axis)
