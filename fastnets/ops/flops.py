"""Analytic FLOP counts of convolutions: from shapes, from a traced function, of a Flax model.

One home for FLOP counting: `conv_flops` (one convolution from its shapes, dense or with a given
number of nonzero weights, as in Escort's sparse convolutions), `conv_flops_of` (every
`lax.conv_general_dilated` a traced function executes, forward and backward),
`model_conv_flops` (a Flax model's forward pass or training step), and for every primitive, not
only convolutions, `primitive_flops` (one equation, from its abstract values: what a
`jax.checkpoint` policy sees) and `flops_of` (a whole traced function, recomputation included).
FLOPs are 2 per multiply-accumulate; zero padding counts as work, as usual for analytic counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp

from fastnets.sparse_format import Padding, conv_output_geometry

__all__ = ["conv_flops", "conv_flops_of", "dense_flops", "flops_of", "model_conv_flops",
           "primitive_flops"]


def conv_flops(x_shape, kernel_shape, strides=(1, 1), padding: Padding = "SAME",
               nonzeros: int | None = None) -> int:
  """Multiply-add FLOPs (2 per MAC) of a convolution; with `nonzeros`, of the sparse one.

  From shapes alone. To count every convolution a traced function (a model's forward or training
  step) executes, use `conv_flops_of`.

  Args:
    x_shape: (N, H, W, I).
    kernel_shape: (KH, KW, I, O).
    strides, padding: as in `sparse_conv2d`.
    nonzeros: number of nonzero weights (default: dense, KH KW I O).

  Returns:
    2 * N * Ho * Wo * (nonzeros or KH KW I O).
  """
  n, h, w, _ = x_shape
  kh, kw, ci, co = kernel_shape
  _, (ho, wo) = conv_output_geometry((h, w), (kh, kw), strides, padding)
  nz = kh * kw * ci * co if nonzeros is None else int(nonzeros)
  return 2 * n * ho * wo * nz


def dense_flops(batch: int, in_features: int, out_features: int,
                nonzeros: int | None = None) -> int:
  """Multiply-add FLOPs (2 per MAC) of a dense layer's forward pass on `batch` examples; with
  `nonzeros`, of the sparse layer (only nonzero weights multiply). A training step costs about 3x
  (the input and the weight gradients each cost one more product of the same size)."""
  nz = in_features * out_features if nonzeros is None else int(nonzeros)
  return 2 * int(batch) * nz


def _conv_eqn_flops(eqn) -> int:
  """2 x (MACs) of one conv_general_dilated equation, whatever its dimension numbers.

  Every output element is a dot product over the rhs's input-feature dim and its spatial window,
  so FLOPs = 2 * prod(out shape) * rhs_in_features * prod(rhs spatial). This holds for the
  forward conv and for both backward convs XLA/JAX emit (the weight gradient contracts over the
  batch, which appears as the rhs "in-feature" dim), and for grouped convs (rhs in-feature is
  already in / groups). Taps that fall on the zeros of an lhs (input) dilation are not counted,
  so the input gradient of a strided conv costs what its forward costs.
  """
  rhs_shape = eqn.invars[1].aval.shape
  out_shape = eqn.outvars[0].aval.shape
  rhs_spec = eqn.params["dimension_numbers"].rhs_spec
  macs = math.prod(out_shape) * rhs_shape[rhs_spec[1]] * math.prod(
      rhs_shape[d] for d in rhs_spec[2:])
  # The input gradient of a strided conv is a conv over the input-dilated (zero-interleaved)
  # output gradient: only 1 / prod(lhs_dilation) of its taps multiply non-zeros.
  macs /= math.prod(eqn.params.get("lhs_dilation") or (1,))
  return 2 * int(round(macs))


def _jaxpr_conv_flops(jaxpr, multiplier: int = 1) -> list[dict]:
  records = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      records.append({
          "lhs": tuple(eqn.invars[0].aval.shape), "rhs": tuple(eqn.invars[1].aval.shape),
          "out": tuple(eqn.outvars[0].aval.shape), "flops": multiplier * _conv_eqn_flops(eqn)})
      continue
    inner_mult = multiplier * int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" \
        else multiplier
    subs = _sub_jaxprs(eqn)
    if eqn.primitive.name == "cond":  # Only one branch runs: count the most expensive.
      branches = [_jaxpr_conv_flops(sub, inner_mult) for sub in subs]
      records.extend(max(branches, key=lambda r: sum(x["flops"] for x in r), default=[]))
    else:  # pjit, remat, custom_jvp/vjp calls, scan (x length), while (body counted once).
      for sub in subs:
        records.extend(_jaxpr_conv_flops(sub, inner_mult))
  return records


def conv_flops_of(fn: Callable[..., Any], *args: Any, per_conv: bool = False,
                  **kwargs: Any) -> int | list[dict]:
  """Analytic FLOPs of all convolutions that `fn(*args, **kwargs)` executes.

  Traces `fn` to a jaxpr (nothing runs; args may be `jax.ShapeDtypeStruct`s) and adds
  2 x multiply-accumulates of every `lax.conv_general_dilated` in it, including nested jaxprs
  (jit, remat, custom_vjp, scan bodies times their length; the costliest branch of a cond; a
  while body once). Pass a gradient function to count the backward convolutions too: then the
  count is the whole training step's conv FLOPs (about 3x the forward). Zero padding is counted
  as work, as is usual for analytic counts. For one convolution given by shapes (and the FLOPs of
  its sparse version) see `conv_flops`.

  Args:
    fn: any JAX-traceable function.
    *args, **kwargs: its arguments (arrays or ShapeDtypeStructs).
    per_conv: return one record per conv {"lhs", "rhs", "out", "flops"} instead of the total.

  Returns:
    The total FLOPs (int) or the per-conv records.
  """
  closed = jax.make_jaxpr(fn)(*args, **kwargs)
  records = _jaxpr_conv_flops(closed.jaxpr)
  return records if per_conv else int(sum(r["flops"] for r in records))


def model_conv_flops(model: Any, input_shape: Sequence[int], *, training_step: bool = True,
                     variables: Any = None, apply_fn: Callable[..., Any] | None = None) -> int:
  """Analytic convolution FLOPs of one forward pass or one training step of a Linen model.

  Traces the model with abstract inputs (nothing is computed) and counts every convolution with
  `conv_flops_of`. A training step is the forward plus the gradient with respect to the
  parameters (the backward convs that produce weight and activation gradients; the input's own
  gradient is not computed), so it is about 3x the forward.

  Args:
    model: a Linen module called as `model(x, train=...)`.
    input_shape: (N, H, W, C) of the input.
    training_step: forward + backward (True) or forward only (False).
    variables: the model's variables (default: `model.init` traced abstractly).
    apply_fn: `apply_fn(variables, x, **apply_kwargs) -> (out, mutated)` used in place of
      `model.apply` (e.g. `fastnets.nn.downsampled_apply` bound to the model, to count the
      downsampled step).

  Returns:
    FLOPs (2 per multiply-accumulate) as an int.
  """
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  if variables is None:
    variables = jax.eval_shape(lambda inp: model.init(
        {"params": jax.random.key(0), "dropout": jax.random.key(0)}, inp, train=False), x)
  variables = dict(variables)
  params = variables.pop("params")
  rngs = {"dropout": jax.random.key(0)}
  apply = model.apply if apply_fn is None else apply_fn

  def forward(p, rest, inp):
    out, _ = apply({"params": p, **rest}, inp, train=True, rngs=rngs, mutable=list(rest))
    return jnp.sum(out)

  fn = jax.grad(forward) if training_step else forward
  return conv_flops_of(fn, params, variables, x)


def _size(aval) -> int:
  return int(math.prod(getattr(aval, "shape", ())))


def primitive_flops(primitive: Any, in_avals: Sequence[Any], out_avals: Sequence[Any],
                    **params: Any) -> int:
  """Analytic FLOPs of one primitive application, from abstract values only.

  Matrix products (`dot_general`: 2 x output size x contracted size) and convolutions (as in
  `conv_flops_of`) count their multiply-adds; a reduction counts one operation per input element;
  every other primitive (elementwise arithmetic, transcendental functions, comparisons, copies,
  reshapes) counts one per output element. This is the cost model of cost-aware recomputation
  (SuperNeurons, Wang et al. 2018, Sec. 3.3: convolutions and matrix products are the expensive
  layers, normalisation, activations and pooling the cheap ones), not a timing.

  Args:
    primitive: a `jax.extend.core.Primitive` (or anything with a `name`).
    in_avals, out_avals: the equation's input and output abstract values (shapes and dtypes).
    **params: the equation's parameters (dimension numbers and the like).

  Returns:
    FLOPs as an int (0 for primitives whose outputs have no elements).
  """
  name = getattr(primitive, "name", str(primitive))
  if name == "dot_general":
    (contract, _), _ = params["dimension_numbers"]
    lhs = in_avals[0].shape
    return 2 * sum(_size(a) for a in out_avals) * int(math.prod(lhs[d] for d in contract))
  if name == "conv_general_dilated":
    rhs_shape = in_avals[1].shape
    rhs_spec = params["dimension_numbers"].rhs_spec
    macs = _size(out_avals[0]) * rhs_shape[rhs_spec[1]] * math.prod(
        rhs_shape[d] for d in rhs_spec[2:])
    macs /= math.prod(params.get("lhs_dilation") or (1,))
    return 2 * int(round(macs))
  if name.startswith(("reduce_", "argmax", "argmin", "cumsum", "cumprod", "cummax", "cummin")):
    return sum(_size(a) for a in in_avals)
  return sum(_size(a) for a in out_avals)


def _sub_jaxprs(eqn) -> list:
  """The jaxprs nested in an equation's parameters (scan/while bodies, cond branches, pjit)."""
  subs = []
  for value in eqn.params.values():
    for item in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        subs.append(item.jaxpr)
      elif isinstance(item, jax.extend.core.Jaxpr):
        subs.append(item)
  return subs


def _jaxpr_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    subs = _sub_jaxprs(eqn)
    if not subs:
      total += primitive_flops(eqn.primitive, [v.aval for v in eqn.invars],
                               [v.aval for v in eqn.outvars], **eqn.params)
    elif eqn.primitive.name == "cond":  # Only one branch runs: count the most expensive.
      total += max(_jaxpr_flops(sub) for sub in subs)
    else:  # pjit, remat, custom_jvp/vjp calls (their primal body), scan (x length), while.
      mult = int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" else 1
      total += mult * sum(_jaxpr_flops(sub) for sub in subs)
  return total


def flops_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
  """Analytic FLOPs of every primitive `fn(*args, **kwargs)` executes (see `primitive_flops`).

  Traces `fn` (args may be `jax.ShapeDtypeStruct`s). Pass a gradient function to count a training
  step: the forward, the backward and any recomputation that `jax.checkpoint` inserts. A
  `custom_vjp` function's backward is traced only when the gradient is (its rule counts then).
  """
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)
