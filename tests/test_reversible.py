"""Reversible residual networks (RevNet, Gomez et al. 2017): the ops.

Inverse exactness and its float32 error over depth; gradients of the rebuild-based backward pass
against plain autodiff (float32) and `check_grads` (float64); compiled memory flat in depth; bad
input. The Flax modules and models are in test_reversible_modules.py.
"""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fastnets.ops.reversible import (
  additive_coupling,
  additive_coupling_inverse,
  reversible_sequence,
  reversible_sequence_inverse,
  split_channels,
)
from tests.reversible_cases import (
  EPS32,
  aux_mlp,
  dropout_mlp,
  mlp,
  normal,
  rel_err,
  stacked_params,
  unstack,
  vjp_with_cotangent,
)

# ------------------------------------------------------------------------------------------------
# Inverse.


@jax.jit
def _coupling_roundtrip(fp, gp, x1, x2, scale):
  x1, x2 = scale * x1, scale * x2
  y1, y2 = additive_coupling(mlp, mlp, fp, gp, x1, x2)
  r1, r2 = additive_coupling_inverse(mlp, mlp, fp, gp, y1, y2)
  return (x1, x2), (y1, y2), (x1 + mlp(fp, x2), x2 + mlp(gp, y1)), (r1, r2)


@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3))
def test_coupling_inverse_recovers_input(seed, scale):
  fp, gp = unstack(stacked_params(seed, 1, 3), 1)[0]
  (x1, x2), (y1, y2), (e1, e2), (r1, r2) = _coupling_roundtrip(
      fp, gp, normal(seed, (4, 3)), normal(seed + 1, (4, 3)), scale)
  assert np.allclose(y1, e1, rtol=1e-6, atol=1e-6) and np.allclose(y2, e2, rtol=1e-6, atol=1e-6)
  ymax = float(jnp.max(jnp.abs(jnp.concatenate([y1, y2]))))
  assert float(jnp.max(jnp.abs(r1 - x1))) <= 8 * EPS32 * ymax   # a few ulps of the largest value
  assert float(jnp.max(jnp.abs(r2 - x2))) <= 8 * EPS32 * ymax


def test_sequence_inverse_error_bound_over_depth():
  # float32: the rebuild error of a well-scaled stack (residual gain 1/sqrt(depth)) stays within
  # depth * eps * max|y| (measured growth is about sqrt(depth)); float64 is exact to 1e-12.
  half, errs = 16, {}

  @jax.jit
  def roundtrip(params, x):
    y = reversible_sequence(mlp, mlp, params, x)
    return y, reversible_sequence_inverse(mlp, mlp, params, y)

  for depth in (1, 8, 64):
    params = stacked_params(depth, depth, half, gain=depth ** -0.5)
    x = normal(1, (32, 2 * half))
    y, back = roundtrip(params, x)
    errs[depth] = float(jnp.max(jnp.abs(back - x)))
    assert errs[depth] <= depth * EPS32 * float(jnp.max(jnp.abs(y))) + 1e-7, errs
    assert errs[depth] > 0 or depth == 1  # float32 rounding is really there.
  with jax.enable_x64(True):
    params = stacked_params(0, 64, half, gain=0.125, dtype=np.float64)
    x = normal(1, (32, 2 * half), np.float64)
    y, back = roundtrip(params, x)
    assert y.dtype == jnp.float64 and float(jnp.max(jnp.abs(back - x))) < 1e-12


def test_inverse_with_keys_and_list_form():
  depth, half = 4, 3
  params = stacked_params(0, depth, half)
  x = normal(1, (5, 2 * half))
  fs = [dropout_mlp] * depth

  @jax.jit
  def run(params, x, key, other):
    y = reversible_sequence(dropout_mlp, dropout_mlp, params, x, key=key)
    back = reversible_sequence_inverse(dropout_mlp, dropout_mlp, params, y, key=key)
    # The list form (heterogeneous blocks) is the same computation.
    y_list = reversible_sequence(fs, fs, unstack(params, depth), x, key=key)
    back_list = reversible_sequence_inverse(fs, fs, unstack(params, depth), y, key=key)
    wrong = reversible_sequence_inverse(dropout_mlp, dropout_mlp, params, y, key=other)
    return y, back, y_list, back_list, wrong

  y, back, y_list, back_list, wrong = run(params, x, jax.random.key(3), jax.random.key(4))
  assert np.allclose(back, x, atol=1e-5) and np.allclose(back_list, x, atol=1e-5)
  assert np.allclose(y_list, y, atol=1e-6)
  # A different key gives different masks: the inverse then does not recover x.
  assert not np.allclose(wrong, x, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# Gradients.


@pytest.mark.parametrize("with_key", [False, True])
def test_gradients_equal_plain_autodiff_float32(with_key):
  depth, half = 6, 4
  params = stacked_params(0, depth, half)
  x = normal(1, (7, 2 * half))
  fn = dropout_mlp if with_key else mlp
  kw = {"key": jax.random.key(5)} if with_key else {}

  modes = ("store", "reversible", "checkpoint")
  results = jax.jit(lambda p, x: [vjp_with_cotangent(
      lambda p, x: reversible_sequence(fn, fn, p, x, backprop=mode, **kw), (p, x))
      for mode in modes])(params, x)
  ref = results[0]
  for mode, got in zip(modes[1:], results[1:]):
    assert rel_err(got, ref) < 1e-4, mode
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
      assert np.allclose(a, b, rtol=1e-3, atol=1e-5)


def test_unrolled_scan_gives_the_same_values_and_gradients():
  params = stacked_params(0, 5, 4)
  x = normal(1, (7, 8))
  looped, unrolled = (jax.jit(lambda p, x, u=u: vjp_with_cotangent(
      lambda p, x: reversible_sequence(mlp, mlp, p, x, unroll=u), (p, x)))(params, x)
      for u in (1, True))
  for a, b in zip(jax.tree.leaves(looped), jax.tree.leaves(unrolled)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="unroll"):
    reversible_sequence(mlp, mlp, params, x, unroll=0)


def test_gradients_list_form_equal_stacked():
  depth, half = 3, 4
  params = stacked_params(0, depth, half)
  x = normal(1, (5, 2 * half))
  kw = dict(key=jax.random.key(2))
  wrapped = [lambda p, v, k: mlp(p, v), dropout_mlp, lambda p, v, k: mlp(p, v)]
  got, ref = jax.jit(lambda p, x: [vjp_with_cotangent(
      lambda p, x: reversible_sequence(wrapped, wrapped, p, x, backprop=mode, **kw), (p, x))
      for mode in ("reversible", "store")])(unstack(params, depth), x)
  assert rel_err(got, ref) < 1e-5
  assert len(got[0]) == depth


def test_check_grads_float64():
  with jax.enable_x64(True):
    params = stacked_params(0, 3, 2, hidden=3, dtype=np.float64)
    x = normal(1, (2, 4), np.float64)
    key = jax.random.key(9)

    @jax.jit
    def fn(p, x):
      return jnp.concatenate([
          reversible_sequence(mlp, mlp, p, x),
          reversible_sequence(dropout_mlp, dropout_mlp, p, x, key=key),
          # Auxiliary outputs are not differentiated; the main output is.
          reversible_sequence(aux_mlp, aux_mlp, p, x, has_aux=True)[0]])

    check_grads(fn, (params, x), order=1, modes=["rev"])


def test_aux_outputs_from_forward_pass_and_integer_leaves():
  depth, half = 3, 2
  params = stacked_params(0, depth, half)
  x = normal(1, (6, 2 * half))
  (y, (f_aux, g_aux)), (y_ref, (f_ref, g_ref)) = jax.jit(lambda p, x: [
      reversible_sequence(aux_mlp, aux_mlp, p, x, has_aux=True, backprop=mode)
      for mode in ("reversible", "store")])(params, x)
  assert f_aux["mean"].shape == (depth, half) and np.allclose(f_aux["mean"], f_ref["mean"])
  assert np.allclose(g_aux["mean"], g_ref["mean"]) and np.allclose(y, y_ref)
  # An integer leaf in params (e.g. a counter) is held constant and gets a float0 cotangent.
  with_int = ({**params[0], "n": jnp.arange(depth)}, params[1])
  grads = jax.jit(jax.grad(lambda p: jnp.sum(reversible_sequence(mlp, mlp, p, x)),
                           allow_int=True))(with_int)
  assert grads[0]["n"].dtype == jax.dtypes.float0
  ref = jax.jit(jax.grad(
      lambda p: jnp.sum(reversible_sequence(mlp, mlp, p, x, backprop="store"))))(params)
  assert rel_err(grads[0]["w"], ref[0]["w"]) < 1e-5


# ------------------------------------------------------------------------------------------------
# Memory: what XLA compiles, at two depths.


def _temp_bytes(mode, depth, half=32, batch=256):
  params = stacked_params(0, depth, half)
  x = jnp.ones((batch, 2 * half))
  step = jax.jit(jax.value_and_grad(
      lambda p, x: jnp.mean(reversible_sequence(mlp, mlp, p, x, backprop=mode) ** 2)))
  return step.lower(params, x).compile().memory_analysis().temp_size_in_bytes


def test_compiled_memory_flat_in_depth():
  rev = [_temp_bytes("reversible", d) for d in (4, 16)]
  plain = [_temp_bytes("store", d) for d in (4, 16)]
  assert rev[1] <= 1.1 * rev[0], rev           # The rebuild is not undone by XLA.
  assert plain[1] >= 2.5 * plain[0], plain      # Plain backprop stores every block.
  assert rev[1] < plain[1] / 4


# ------------------------------------------------------------------------------------------------
# Bad input: clear errors at trace time.



def test_bad_inputs_raise_clear_errors():
  params = stacked_params(0, 2, 3)
  x = jnp.ones((4, 6))
  with pytest.raises(ValueError, match="even size along axis 1.*7 channels"):
    reversible_sequence(mlp, mlp, params, jnp.ones((4, 7)))
  with pytest.raises(ValueError, match="even size along axis 0"):
    split_channels(jnp.ones((3, 4)), axis=0)
  with pytest.raises(ValueError, match="axis must be in"):
    split_channels(jnp.ones((3, 4)), axis=2)
  with pytest.raises(ValueError, match="f \\(block 0\\) must return an array of the shape of x1"):
    reversible_sequence(lambda p, v: jnp.concatenate([v, v], -1), mlp, params, x)
  with pytest.raises(ValueError, match="g \\(block 0\\) must return .*shape"):
    reversible_sequence(mlp, lambda p, v: v[:, :2], params, x)
  with pytest.raises(TypeError, match="f \\(block 0\\) must return dtype float32"):
    reversible_sequence(lambda p, v: v.astype(jnp.float16), mlp, params, x)
  with pytest.raises(ValueError, match="common leading axis"):
    reversible_sequence(mlp, mlp, (params[0], unstack(params, 2)[0][1]), x)
  with pytest.raises(ValueError, match="num_blocks=3 does not match"):
    reversible_sequence(mlp, mlp, params, x, num_blocks=3)
  with pytest.raises(ValueError, match="equal length"):
    reversible_sequence([mlp, mlp], [mlp], unstack(params, 2), x)
  with pytest.raises(ValueError, match="backprop must be one of"):
    reversible_sequence(mlp, mlp, params, x, backprop="magic")
  with pytest.raises(TypeError, match="floating"):
    reversible_sequence(mlp, mlp, params, jnp.ones((4, 6), jnp.int32))
  with pytest.raises(TypeError, match="key must be a jax.random key"):
    reversible_sequence(dropout_mlp, dropout_mlp, params, x, key=jnp.ones(3))
  with pytest.raises(ValueError, match="g must return an array of the shape of x2"):
    additive_coupling(mlp, lambda p, v: v[:1], *unstack(params, 2)[0], x[:, :3], x[:, 3:])
  with pytest.raises(ValueError, match="pair \\(out, aux\\)"):
    reversible_sequence(mlp, mlp, params, x, has_aux=True)


def test_closure_over_a_differentiated_value_is_a_clear_error():
  params = (jnp.full((3, 2), 0.3), jnp.full((3, 2), 0.3))  # tanh far from saturation
  x = jnp.ones((4, 4))

  def loss(scale, params, backprop):
    f = lambda p, h: jnp.tanh(h * p * scale)
    return reversible_sequence(f, f, params, x, backprop=backprop).sum()

  with pytest.raises(ValueError, match="closes over a value that is being differentiated.*params"):
    jax.grad(loss)(2.0, params, "reversible")
  # A closure over a constant, or a differentiated value in the store mode, is fine.
  np.testing.assert_allclose(jax.grad(loss, 1)(2.0, params, "reversible")[0],
                             jax.grad(loss, 1)(2.0, params, "store")[0], rtol=1e-4, atol=1e-6)
  assert np.isfinite(jax.grad(loss)(2.0, params, "store"))
