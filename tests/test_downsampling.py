"""Dynamic input and kernel downsampling: pooling ops, the pooled-kernel interceptor, FLOP
counting, schedules, and the two compiled step variants in `fit`."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import monitoring

from fastnets import data, models, ops, train
from fastnets import nn as fnn
from fastnets.train import downsampling as dsm


def _conv_ref(x, w, padding):
  return jax.lax.conv_general_dilated(x, w, (1, 1), padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


# --- ops ---------------------------------------------------------------------------------------

def test_pool_input_shape_and_values():
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  y = ops.pool_input(x, 2)
  assert y.shape == (2, 2, 3, 3) and y.dtype == x.dtype
  np.testing.assert_allclose(y[1, 1, 2, 0], np.mean(np.asarray(x)[1, 2:4, 4:6, 0]))
  assert ops.pool_input(x, 1) is x
  assert ops.pool_input(x, (1, 3)).shape == (2, 4, 2, 3)


def test_pool_input_rejects_bad_factors_and_inputs():
  x = jnp.zeros((1, 6, 6, 1))
  with pytest.raises(ValueError, match="divisible by factor"):
    ops.pool_input(x, 4)
  with pytest.raises(ValueError, match="factor must be a positive int"):
    ops.pool_input(x, 2.0)
  with pytest.raises(ValueError, match="factor must be positive"):
    ops.pool_input(x, 0)
  with pytest.raises(ValueError, match="NHWC"):
    ops.pool_input(jnp.zeros((6, 6, 1)), 2)
  with pytest.raises(TypeError, match="floating"):
    ops.pool_input(jnp.zeros((1, 6, 6, 1), jnp.int32), 2)


@pytest.mark.parametrize("k,t", [(3, 2), (5, 3), (5, 2), (3, 1), (3, 3)])
def test_pool_kernel_matches_the_explicit_linear_map(k, t):
  w = jax.random.normal(jax.random.key(0), (k, k, 2, 3))
  p = ops.kernel_pooling_matrix(k, t)
  ref = np.einsum("ia,abco,jb->ijco", p, np.asarray(w), p)
  np.testing.assert_allclose(ops.pool_kernel(w, t, rescale=False), ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ops.pool_kernel(w, t, rescale=True), ref * k * k / (t * t),
                             rtol=1e-5, atol=1e-5)


def test_pool_kernel_3x3_to_2x2_is_a_stride_one_2x2_average():
  w = jnp.arange(9.0).reshape(3, 3, 1, 1)
  got = ops.pool_kernel(w, 2, rescale=False)[..., 0, 0]
  np.testing.assert_allclose(got, [[(0 + 1 + 3 + 4) / 4, (1 + 2 + 4 + 5) / 4],
                                   [(3 + 4 + 6 + 7) / 4, (4 + 5 + 7 + 8) / 4]])


@settings(max_examples=5, deadline=None)
@given(k=st.integers(1, 6), data=st.data())
def test_pool_kernel_is_linear_and_rescaling_keeps_a_constant_kernels_sum(k, data):
  t = data.draw(st.integers(1, k))
  a, b = data.draw(st.floats(-2, 2)), data.draw(st.floats(-2, 2))
  w1, w2 = jax.random.normal(jax.random.key(k * 7 + t), (2, k, k, 2, 2))
  np.testing.assert_allclose(ops.pool_kernel(a * w1 + b * w2, t),
                             a * ops.pool_kernel(w1, t) + b * ops.pool_kernel(w2, t),
                             rtol=1e-4, atol=1e-4)
  const = jnp.full((k, k, 1, 1), 0.3)
  np.testing.assert_allclose(ops.pool_kernel(const, t).sum(), const.sum(), rtol=1e-5)
  np.testing.assert_allclose(ops.pool_kernel(const, t, rescale=False), 0.3, rtol=1e-6)


def test_pool_kernel_rejects_a_kernel_smaller_than_the_pool():
  with pytest.raises(ValueError, match="kernel is smaller than the pool"):
    ops.pool_kernel(jnp.zeros((1, 1, 2, 2)), (2, 2))
  with pytest.raises(ValueError, match="HWIO"):
    ops.pool_kernel(jnp.zeros((3, 3, 2)), 2)
  with pytest.raises(ValueError, match="target must be a positive int"):
    ops.pool_kernel(jnp.zeros((3, 3, 1, 1)), (2, 2, 2))
  with pytest.raises(ValueError, match="target must be in 1..3"):
    ops.kernel_pooling_matrix(3, 4)


def test_pooled_conv_gradient_reaches_every_original_tap():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 2))
  w = jax.random.normal(jax.random.key(2), (3, 3, 2, 4))
  p = jnp.asarray(ops.kernel_pooling_matrix(3, 2), jnp.float32)
  loss = lambda w: jnp.sum(jnp.tanh(_conv_ref(ops.pool_input(x, 2), ops.pool_kernel(w, 2),
                                              "SAME")))
  ref_loss = lambda w: jnp.sum(jnp.tanh(_conv_ref(
      ops.pool_input(x, 2), jnp.einsum("ia,abco,jb->ijco", p, w, p) * 9 / 4, "SAME")))
  g, g_ref = jax.jit(jax.grad(loss))(w), jax.jit(jax.grad(ref_loss))(w)
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)
  assert np.all(np.abs(np.asarray(g)) > 0)


def test_conv_flops_of_counts_forward_and_backward():
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 3, 4), jnp.float32)
  fwd = 2 * 2 * 8 * 8 * 4 * 3 * 9
  assert ops.conv_flops_of(lambda x, w: _conv_ref(x, w, "SAME"), x, w) == fwd
  both = jax.grad(lambda x, w: _conv_ref(x, w, "SAME").sum(), argnums=(0, 1))
  assert ops.conv_flops_of(both, x, w) == 3 * fwd
  strided = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
  fwd2 = ops.conv_flops_of(strided, x, w)
  assert fwd2 == fwd // 4 and ops.conv_flops_of(jax.grad(strided, (0, 1)), x, w) == 3 * fwd2
  records = ops.conv_flops_of(lambda x, w: _conv_ref(x, w, "SAME"), x, w, per_conv=True)
  assert records == [{"lhs": (2, 8, 8, 3), "rhs": (3, 3, 3, 4), "out": (2, 8, 8, 4),
                      "flops": fwd}]
  # A scan body counts once per iteration.
  scanned = lambda x, w: jax.lax.scan(lambda c, _: (c, _conv_ref(x, w, "SAME")), 0.0, None,
                                      length=3)[1]
  assert ops.conv_flops_of(scanned, x, w) == 3 * fwd


# --- the interceptor -----------------------------------------------------------------------------

class _TwoConv(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(4, (3, 3), padding=1, name="c1")(x))   # explicit "pad 1"
    x = nn.Conv(5, (5, 5), padding="VALID", name="c2")(x)
    x = nn.Conv(3, (1, 1), name="c3")(x)                       # 1x1: unchanged
    return x.mean(axis=(1, 2))


def _two_conv_reference(params, x):
  """The downsampled forward written out with lax and explicit pooling matrices."""
  def pooled(w, t):
    k = w.shape[0]
    p = jnp.asarray(ops.kernel_pooling_matrix(k, t), w.dtype)
    return jnp.einsum("ia,abco,jb->ijco", p, w, p) * (k * k) / (t * t)
  x = ops.pool_input(x, 2)
  x = _conv_ref(x, pooled(params["c1"]["kernel"], 2), ((0, 1), (0, 1))) + params["c1"]["bias"]
  x = jax.nn.relu(x)
  x = _conv_ref(x, pooled(params["c2"]["kernel"], 3), "VALID") + params["c2"]["bias"]
  x = _conv_ref(x, params["c3"]["kernel"], "VALID") + params["c3"]["bias"]
  return x.mean(axis=(1, 2))


def test_pooled_kernels_match_an_explicit_reference_with_gradients():
  model = _TwoConv()
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 2))
  params = model.init(jax.random.key(1), x)["params"]
  loss = lambda p: jnp.sum(jnp.sin(fnn.downsampled_apply(model, {"params": p}, x)))
  ref = lambda p: jnp.sum(jnp.sin(_two_conv_reference(p, x)))
  (value, g), (ref_value, g_ref) = (jax.jit(jax.value_and_grad(f))(params) for f in (loss, ref))
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  chex_close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  jax.tree.map(chex_close, g, g_ref)
  # The full-size kernels are what receives the gradient, every tap of them.
  assert g["c1"]["kernel"].shape == (3, 3, 2, 4) and g["c2"]["kernel"].shape == (5, 5, 4, 5)
  assert np.all(np.asarray(g["c1"]["kernel"]) != 0) and np.all(np.asarray(g["c2"]["kernel"]) != 0)
  # Outside the context the model is untouched.
  out = model.apply({"params": params}, x)
  assert out.shape == (2, 3)


def test_resnet_downsampled_step_reaches_every_parameter():
  model = models.ResNet(num_classes=10, depth=8, widths=(4, 4, 8, 8))
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  batch = {"image": x, "label": jnp.arange(4) % 10}
  model_state = {"batch_stats": variables["batch_stats"]}

  @jax.jit
  def both(params):
    grads, (kept, metrics) = jax.grad(dsm.downsampled_loss(model), has_aux=True)(
        params, model_state, batch, jax.random.key(2))
    _, (updated, _) = dsm.downsampled_loss(model, update_model_state=True)(
        params, model_state, batch, jax.random.key(2))
    return grads, kept, metrics, updated

  grads, new_state, metrics, updated = both(variables["params"])
  flat = jax.tree_util.tree_leaves_with_path(grads)
  assert all(float(jnp.abs(g).sum()) > 0 for _, g in flat), "some parameter got no gradient"
  assert grads["stem"]["kernel"].shape == (3, 3, 1, 4)
  # Running statistics are left alone by default, and updated when asked.
  chex_same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new_state["batch_stats"],
                           variables["batch_stats"])
  assert all(jax.tree.leaves(chex_same))
  assert not jnp.allclose(updated["batch_stats"]["stem_bn"]["mean"],
                          variables["batch_stats"]["stem_bn"]["mean"])
  assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_resolve_target_and_select():
  assert fnn.resolve_target(None, (3, 3)) == (2, 2)
  assert fnn.resolve_target(None, (5, 1)) == (3, 1)
  assert fnn.resolve_target(2, (1, 1)) == (1, 1)          # clipped: runs unchanged
  assert fnn.resolve_target(lambda k: (1, 1), (3, 3)) == (1, 1)
  with pytest.raises(ValueError, match="target"):
    fnn.resolve_target((0, 2), (3, 3))
  model = _TwoConv()
  x = jnp.ones((1, 12, 12, 2))
  params = model.init(jax.random.key(0), x)["params"]
  # Only c1 pooled: c2 (5x5, VALID) on the 6x6 map gives 2x2; all pooled: 6 - 2 = 4x4.
  shapes = {}
  for label, select in (("one", lambda m: m.name == "c1"), ("all", None)):
    def capture(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.module.name == "c2":
        shapes[label] = out.shape
      return out
    with fnn.pooled_kernels(select=select), nn.intercept_methods(capture):
      model.apply({"params": params}, ops.pool_input(x, 2))
  assert shapes == {"one": (1, 2, 2, 5), "all": (1, 4, 4, 5)}


def test_model_conv_flops_of_the_downsampled_step_is_about_eleven_percent():
  model = models.ResNet(num_classes=10, depth=8)
  full = fnn.model_conv_flops(model, (1, 32, 32, 3))
  forward = fnn.model_conv_flops(model, (1, 32, 32, 3), training_step=False)
  down = fnn.model_conv_flops(model, (1, 32, 32, 3), downsampled=True)
  assert 2.9 < full / forward <= 3.0  # weight + input gradients (none for the image)
  assert 0.10 < down / full < 0.14    # 1/4 x 4/9 = 11%, 1x1 projections unpooled


# --- schedules -----------------------------------------------------------------------------------

def test_schedules_choose_the_right_batches():
  assert [dsm.every_k(3)(s) for s in range(7)] == [False, False, True, False, False, True, False]
  assert [dsm.every_k(3, full_every=True)(s) for s in range(4)] == [True, True, False, True]
  assert [dsm.first_fraction(0.3, 10)(s) for s in range(10)] == [True] * 3 + [False] * 7
  assert not any(dsm.Never()(s) for s in range(10))
  p = dsm.with_probability(0.25, seed=3)
  draws = [p(s) for s in range(2000)]
  assert draws == [dsm.with_probability(0.25, seed=3)(s) for s in range(2000)]  # deterministic
  assert draws[500:520] == [p(s) for s in range(500, 520)]                       # resumable
  assert abs(np.mean(draws) - 0.25) < 0.04
  assert draws != [dsm.with_probability(0.25, seed=4)(s) for s in range(2000)]
  assert dsm.every_k(4).downsampled_fraction(100) == 0.25
  choose = dsm.variant_chooser(dsm.every_k(2))
  assert [choose(s) for s in range(4)] == ["full", "downsampled", "full", "downsampled"]
  until = dsm.Until(dsm.every_k(2), 0.6, 10)  # every 2nd batch up to step 6, then full only
  assert [until(s) for s in range(10)] == [False, True, False, True, False, True] + [False] * 4
  assert until.downsampled_fraction(10) == 0.3
  assert not any(dsm.Until(dsm.with_probability(1.0), 0.0, 10)(s) for s in range(10))


def test_parse_schedule_and_bad_specs():
  assert dsm.parse_schedule("every:4", 100) == dsm.EveryK(4)
  assert dsm.parse_schedule("full_every:3", 100) == dsm.EveryK(3, True)
  assert dsm.parse_schedule("prob:0.5", 100, seed=2) == dsm.Probability(0.5, 2)
  assert dsm.parse_schedule("phase:0.25", 100) == dsm.Phase(0.25, 100)
  assert dsm.parse_schedule("none", 100) == dsm.Never()
  assert dsm.parse_schedule("every:2,until:0.6", 100) == dsm.Until(dsm.EveryK(2), 0.6, 100)
  assert dsm.parse_schedule("prob:0.5,until:0.5", 100, seed=2) == dsm.Until(
      dsm.Probability(0.5, 2), 0.5, 100)
  for bad, msg in (("every:0", "k must be"), ("prob:1.5", "probability"), ("phase:x", "bad"),
                   ("sometimes", "unknown schedule"), ("every", "bad schedule"),
                   ("every:2,until", "bad schedule suffix"), ("every:2,after:0.5", "suffix"),
                   ("every:2,until:x", "suffix"), ("every:2,until:1.5", "until fraction"),
                   ("every:0,until:0.5", "k must be")):
    with pytest.raises(ValueError, match=msg):
      dsm.parse_schedule(bad, 100)


# --- fit: two compiled variants, no recompilation ------------------------------------------------

class _CompileCounter:
  """Counts XLA backend compilations (jax.monitoring), registered once per process."""
  count = 0
  registered = False

  @classmethod
  def install(cls):
    if not cls.registered:
      def listener(name, duration, **kw):
        if name == "/jax/core/compile/backend_compile_duration":
          cls.count += 1
      monitoring.register_event_duration_secs_listener(listener)
      cls.registered = True


def test_fit_compiles_two_step_variants_once_each(mnist):
  _CompileCounter.install()
  # A 16x16 crop and a small validation split keep the test fast.
  crop = lambda src, n: data.InMemorySource(src.images[:n, 6:22, 6:22], src.labels[:n])
  mnist = dataclasses.replace(mnist, train=crop(mnist.train, 512),
                              validation=crop(mnist.validation, 100), image_shape=(16, 16, 1))
  model = models.ResNet(num_classes=10, depth=8, widths=(4, 4, 8, 8))
  kw = dsm.dynamic_downsampling(model, dsm.every_k(2))
  traces = {"full": 0, "downsampled": 0}

  def counted(name, fn):
    def wrapped(*args):
      traces[name] += 1
      return fn(*args)
    return wrapped

  variants = {name: counted(name, fn) for name, fn in kw["step_variants"].items()}
  seen = []
  callback = lambda step, state: seen.append((step, dict(traces), _CompileCounter.count))
  config = train.TrainConfig(steps=8, batch_size=16, eval_batch_size=100, log_every=8,
                             checkpoint_every=0)
  result = train.fit(model, mnist, config, None, step_variants=variants,
                     choose_variant=kw["choose_variant"], callbacks=[callback], verbose=False)
  assert result.metrics["steps"] == 8
  # After step 2 both variants have run once; steps 3..8 trace and compile nothing new.
  (_, traces_2, compiles_2), (_, traces_8, compiles_8) = seen[1], seen[-1]
  assert traces_2 == traces_8 and compiles_8 == compiles_2
  # "downsampled" traced once (its jit); "full" twice (fit's shape-only metric probe + its jit).
  assert traces_8 == {"full": 2, "downsampled": 1}
  assert np.isfinite(result.metrics["train_loss"])


def test_downsampled_step_rejects_indivisible_inputs():
  model = models.ResNet(num_classes=10, depth=8, widths=(4, 4, 8, 8))
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 9, 9, 1)))
  loss_fn = dsm.downsampled_loss(model, factor=2)
  batch = {"image": jnp.zeros((2, 9, 9, 1)), "label": jnp.zeros((2,), jnp.int32)}
  with pytest.raises(ValueError, match="divisible by factor"):
    jax.eval_shape(loss_fn, variables["params"], {"batch_stats": variables["batch_stats"]},
                   batch, jax.random.key(0))
  with pytest.raises(ValueError, match="factor must be a positive int"):
    dsm.dynamic_downsampling(model, dsm.every_k(2), factor=0)
