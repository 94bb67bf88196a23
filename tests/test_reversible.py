"""Reversible residual networks (RevNet, Gomez et al. 2017): ops, Flax modules, models.

Inverse exactness and its float32 error over depth; gradients of the rebuild-based backward pass
against plain autodiff (float32) and `check_grads` (float64), through dropout and batch norm;
running statistics updated once; compiled memory flat in depth; jit and 4 forced host devices;
bad input.
"""

import textwrap

import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fastnets.models import revnet as revnet_lib
from fastnets.nn.reversible import RevBlock, ReversibleStack
from fastnets.ops import losses
from fastnets.ops.reversible import (
  additive_coupling,
  additive_coupling_inverse,
  reversible_sequence,
  reversible_sequence_inverse,
  split_channels,
)
from tests.conftest import run_python

EPS32 = float(np.finfo(np.float32).eps)


# ------------------------------------------------------------------------------------------------
# Helpers.


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


def test_module_compiled_memory_flat_in_depth():
  def temp(depth):
    model = ReversibleStack(BNDropMLP(hidden=64, rate=0.0), num_blocks=depth)
    x = jnp.ones((512, 64))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    def loss(params, stats, x):
      y, new = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                           mutable=["batch_stats"])
      return jnp.mean(y ** 2), new

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    return step.lower(variables["params"], variables["batch_stats"],
                      x).compile().memory_analysis().temp_size_in_bytes

  small, large = temp(2), temp(8)
  assert large <= 1.1 * small, (small, large)


# ------------------------------------------------------------------------------------------------
# Flax modules: batch norm, dropout, running statistics, jit, inverse.


@pytest.fixture(scope="module")
def stack_setup():
  """Variables of StackModel and, from ONE compiled function, its training-mode results."""
  x = normal(1, (16, 5))
  variables = jax.jit(StackModel().init)(jax.random.key(0), x)

  def train_grads(backprop, seed):
    def loss(params):
      y, new = StackModel(backprop).apply(
          {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
          mutable=["batch_stats"], rngs={"dropout": jax.random.key(seed)})
      return jnp.sum(jnp.sin(y)), new
    return jax.value_and_grad(loss, has_aux=True)(variables["params"])

  @jax.jit
  def everything(variables):
    forward_only = StackModel().apply(variables, x, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": jax.random.key(5)})[1]
    return {"reversible": train_grads("reversible", 5), "store": train_grads("store", 5),
            "other_seed": train_grads("reversible", 6), "forward_only": forward_only}

  return x, variables, everything(variables)


def test_module_variables_created_by_init(stack_setup):
  x, variables, _ = stack_setup
  p = variables["params"]["ReversibleStack_0"]
  assert p["F"]["Dense_0"]["kernel"].shape == (3, 4, 8)   # Stacked over 3 blocks.
  assert variables["batch_stats"]["ReversibleStack_0"]["G"]["BatchNorm_0"]["mean"].shape == (3, 8)
  assert variables["params"]["RevBlock_0"]["G"]["Dense_1"]["kernel"].shape == (8, 4)
  # Blocks get different initial parameters.
  assert not np.allclose(p["F"]["Dense_0"]["kernel"][0], p["F"]["Dense_0"]["kernel"][1])
  assert not np.allclose(p["F"]["Dense_0"]["kernel"][0], p["G"]["Dense_0"]["kernel"][0])


def test_module_gradients_through_batchnorm_and_dropout(stack_setup):
  _, _, results = stack_setup
  (loss_r, stats_r), grads_r = results["reversible"]
  (loss_s, stats_s), grads_s = results["store"]
  assert np.allclose(loss_r, loss_s, rtol=1e-6)
  assert rel_err(grads_r, grads_s) < 1e-4
  assert rel_err(stats_r, stats_s) < 1e-6
  # Dropout is really active (another key changes the loss), and recomputed identically above.
  (loss_other, _), _ = results["other_seed"]
  assert not np.allclose(loss_other, loss_r)


def test_running_statistics_updated_exactly_once(stack_setup):
  x, variables, results = stack_setup
  (_, stats), _ = results["reversible"]
  # The first block's F sees x2 = second half of Dense_0(x); its BatchNorm input is Dense(x2).
  params = variables["params"]
  h = x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
  x2 = np.asarray(h)[:, 4:]
  f0 = jax.tree.map(lambda a: np.asarray(a[0]), params["ReversibleStack_0"]["F"])
  pre = x2 @ f0["Dense_0"]["kernel"] + f0["Dense_0"]["bias"]
  once = 0.1 * np.mean(pre, axis=0)               # momentum 0.9 from a zero running mean.
  twice = 0.9 * once + 0.1 * np.mean(pre, axis=0)  # what a second update would give.
  got = stats["batch_stats"]["ReversibleStack_0"]["F"]["BatchNorm_0"]["mean"][0]
  assert np.allclose(got, once, atol=1e-6) and not np.allclose(got, twice, atol=1e-4)
  # A forward-only apply gives the same statistics as the training step (no update in backward).
  assert rel_err(stats, results["forward_only"]) < 1e-7


def test_module_eval_mode_uses_running_statistics_and_inverse(stack_setup):
  _, variables, _ = stack_setup
  model = ReversibleStack(BNDropMLP(), num_blocks=3)
  sub = {"params": variables["params"]["ReversibleStack_0"],
         "batch_stats": variables["batch_stats"]["ReversibleStack_0"]}
  h = normal(2, (16, 8))
  y = jax.jit(lambda v, h: model.apply(v, h))(sub, h)          # eval: no mutable needed
  back = jax.jit(lambda v, y: model.apply(v, y, method="inverse"))(sub, y)
  assert np.allclose(back, h, atol=1e-5)
  # Training mode with dropout: the inverse draws the same key from the same rng.
  rngs = {"dropout": jax.random.key(3)}
  y_t, _ = jax.jit(lambda v, h: model.apply(v, h, True, rngs=rngs, mutable=["batch_stats"]))(
      sub, h)
  back_t = jax.jit(lambda v, y: model.apply(v, y, True, rngs=rngs, method="inverse"))(sub, y_t)
  assert np.allclose(back_t, h, atol=1e-4)
  block = RevBlock(BNDropMLP())
  bv = jax.jit(block.init)(jax.random.key(0), h)
  back_b = jax.jit(lambda v, h: block.apply(v, block.apply(v, h), method="inverse"))(bv, h)
  assert np.allclose(back_b, h, atol=1e-5)


def test_module_check_grads_float64():
  with jax.enable_x64(True):
    model = ReversibleStack(BNDropMLP(hidden=3, rate=0.3), num_blocks=2)
    x = normal(1, (6, 4), np.float64)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)

    @jax.jit
    def fn(params, x):
      y, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, True,
                         mutable=["batch_stats"], rngs={"dropout": jax.random.key(4)})
      return y

    check_grads(fn, (variables["params"], x), order=1, modes=["rev"])


# ------------------------------------------------------------------------------------------------
# Models.


def test_revnet_configs_match_paper_parameter_counts():
  # Gomez et al. 2017, Table 2: RevNet-38 0.46M, RevNet-110 1.73M, RevNet-164 1.75M parameters.
  for name, expected, depth in (("revnet38", 0.46e6, 38), ("revnet110", 1.73e6, 110),
                                ("revnet164", 1.75e6, 164)):
    model = revnet_lib.revnet(10, depth)
    assert model.depth == depth
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    count = sum(x.size for x in jax.tree.leaves(shapes["params"]))
    assert round(count / 1e6, 2) == round(expected / 1e6, 2), (name, count)  # paper's precision
  assert revnet_lib.revnet164().bottleneck and not revnet_lib.revnet110().bottleneck
  assert revnet_lib.revnet38().filters == (32, 32, 64, 112)
  base = revnet_lib.matching_resnet("revnet164")
  assert (base.depth, base.bottleneck, tuple(base.widths)) == (164, True, (16, 16, 32, 64))


def test_revnet_shapes_for_mnist_and_cifar_inputs():
  for shape in ((2, 28, 28, 1), (2, 32, 32, 3)):
    for model in (revnet_lib.revnet38(10), revnet_lib.revnet164(100)):
      variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
      logits, new = jax.eval_shape(lambda v, x: model.apply(v, x, train=True,
                                                            mutable=["batch_stats"]),
                                   variables, jnp.zeros(shape))
      assert logits.shape == (2, model.num_classes) and logits.dtype == jnp.float32
      assert jax.tree.structure(new["batch_stats"]) == jax.tree.structure(
          variables["batch_stats"])


@pytest.mark.parametrize("bottleneck", [False, True])
def test_small_revnet_under_jit_gradients_equal_plain_autodiff(bottleneck):
  # Every kind of unit: the stem-side transition (no pre-activation), strided transitions with
  # pooling/padding (basic) or projections (bottleneck), and a reversible stack.
  kw = dict(units=(1, 1, 2), filters=(8, 4, 4, 8), bottleneck=True) if bottleneck else dict(
      units=(2, 1, 1), filters=(4, 4, 8, 8), bottleneck=False)
  model = revnet_lib.RevNet(num_classes=10, **kw)
  x = normal(1, (4, 8, 8, 3))
  labels = jnp.arange(4) % 10
  variables = random_variables(model, x)

  @jax.jit
  def grads(variables):
    def loss(params, mode, unroll):
      logits, new = revnet_lib.RevNet(num_classes=10, backprop=mode, unroll=unroll, **kw).apply(
          {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
          mutable=["batch_stats"])
      return losses.cross_entropy_loss(logits, labels), new
    return [jax.grad(loss, has_aux=True)(variables["params"], m, u)
            for m, u in (("reversible", 1), ("store", 1), ("reversible", True))]

  (g_rev, s_rev), (g_ref, s_ref), (g_unrolled, s_unrolled) = grads(variables)
  assert rel_err(g_rev, g_ref) < 1e-4 and rel_err(s_rev, s_ref) < 1e-6
  assert rel_err(g_unrolled, g_rev) < 1e-5 and rel_err(s_unrolled, s_rev) < 1e-6
  assert not np.allclose(flat(s_rev), flat(variables["batch_stats"]))  # stats did move


# ------------------------------------------------------------------------------------------------
# Several devices.


def test_module_sharded_over_four_devices():
  out = run_python(textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import NamedSharding, PartitionSpec as P
      from tests.test_reversible import StackModel, flat, normal, random_variables
      assert len(jax.devices()) == 4
      x = normal(1, (16, 5))
      variables = random_variables(StackModel(), x)

      @jax.jit
      def step(variables, x):
        def loss(params):
          y, new = StackModel().apply({"params": params, "batch_stats": variables["batch_stats"]},
                                      x, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": jax.random.key(5)})
          return jnp.sum(jnp.sin(y)), new
        return jax.value_and_grad(loss, has_aux=True)(variables["params"])

      ref = step(variables, x)
      mesh = jax.make_mesh((4,), ("data",))
      xs = jax.device_put(x, NamedSharding(mesh, P("data")))
      vs = jax.device_put(variables, NamedSharding(mesh, P()))
      got = step(vs, xs)
      assert len(got[1]["ReversibleStack_0"]["F"]["Dense_0"]["kernel"].sharding.device_set) == 4
      err = np.abs(flat(got) - flat(ref)).max() / np.abs(flat(ref)).max()
      print("MAXERR", err)
      """), devices=4, timeout=120)
  err = float(out.split("MAXERR")[1])
  assert err < 1e-5


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


def test_bad_module_and_model_configurations():
  with pytest.raises(ValueError, match="even size along axis 1"):
    ReversibleStack(BNDropMLP(), num_blocks=2).init(jax.random.key(0), jnp.ones((2, 5)))

  class Widen(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(2 * x.shape[-1])(x)

  with pytest.raises(ValueError, match="may not change the shape"):
    ReversibleStack(Widen(), num_blocks=2).init(jax.random.key(0), jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="num_blocks must be a positive int"):
    ReversibleStack(BNDropMLP(), num_blocks=0).init(jax.random.key(0), jnp.ones((2, 4)))
  with pytest.raises(TypeError, match="f must be a flax.linen Module"):
    ReversibleStack(mlp).init(jax.random.key(0), jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="depth must be one of 38, 110, 164"):
    revnet_lib.revnet(10, 56)
  with pytest.raises(ValueError, match="NHWC"):
    revnet_lib.revnet38().init(jax.random.key(0), jnp.ones((2, 32, 32)))
  with pytest.raises(ValueError, match="even"):
    revnet_lib.RevNet(filters=(8, 8, 8, 9), units=(1, 1, 1)).init(jax.random.key(0),
                                                                   jnp.ones((1, 8, 8, 1)))


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
