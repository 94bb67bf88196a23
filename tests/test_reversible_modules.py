"""Reversible residual networks (RevNet, Gomez et al. 2017): Flax modules and models.

Gradients through dropout and batch norm against plain autodiff and `check_grads` (float64);
running statistics updated once; compiled memory flat in depth; RevNet parameter counts of the
paper; jit and 4 forced host devices; bad configurations. The ops are in test_reversible.py.
"""

import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fastnets.models import revnet as revnet_lib
from fastnets.nn.reversible import RevBlock, ReversibleStack
from fastnets.ops import losses
from tests.conftest import run_python
from tests.reversible_cases import (
  BNDropMLP,
  StackModel,
  flat,
  mlp,
  normal,
  random_variables,
  rel_err,
)

# ------------------------------------------------------------------------------------------------
# Memory: what XLA compiles, at two depths.


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
      from tests.reversible_cases import StackModel, flat, normal, random_variables
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


# ------------------------------------------------------------------------------------------------
# Bad configurations.


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
