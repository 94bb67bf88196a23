"""FFNet (Ibrahim et al. 2017): stage shapes, parameter counts of the released net and the
ablation, the generic fast-forward wrapper, registry names and bad inputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastnets import models
from fastnets.models import ffnet as ffnet_lib


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _stage_outputs(model, x):
  """Stage output shapes, traced abstractly (nothing is computed)."""
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  _, state = jax.eval_shape(lambda v, x: model.apply(v, x, capture_intermediates=True,
                                                     mutable=["intermediates"]), variables, x)
  inter = state["intermediates"]
  return variables, [inter[f"stage{i}"]["__call__"][0].shape for i in range(1, model.stages + 1)]


def test_released_ffnet_stage_shapes_on_28x28():
  model = models.FFNet(num_classes=10, features=8)
  _, shapes = _stage_outputs(model, jnp.zeros((2, 28, 28, 1)))
  assert [s[1] for s in shapes] == [24, 20, 16, 12, 8, 4] == ffnet_lib.ffnet_spatial_sizes(28)
  assert all(s[3] == 16 for s in shapes)        # concat of branch and main path: 2 x features
  ablation = models.FFNet(num_classes=10, features=8, fast_forward=False)
  _, shapes = _stage_outputs(ablation, jnp.zeros((2, 28, 28, 1)))
  assert [s[1:] for s in shapes] == [(n, n, 8) for n in (24, 20, 16, 12, 8, 4)]


def test_parameter_counts_of_the_released_net_and_the_ablation():
  # Hand count (MNIST 28x28x1, 10 classes): stage 1 = 640 + 2 * 36,928 + 1,664 (5x5 branch);
  # stages 2-6 = 73,792 + 2 * 36,928 + 204,864 each; FC 4*4*128*400 + 400, 40,100, 1,010.
  shapes = lambda m, c: jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 28, 28, c)))
  ff = models.create_model("ffnet", 10)
  assert _count(shapes(ff, 1)["params"]) == 76_160 + 5 * 352_512 + 819_600 + 40_100 + 1_010
  assert _count(shapes(ff, 1)["params"]) == 2_699_430
  assert _count(shapes(ff, 3)["params"]) == 2_703_782        # CIFAR-10 (RGB) crops of 28
  noff = models.create_model("ffnet_noff", 10)
  assert _count(shapes(noff, 1)["params"]) == 74_496 + 5 * 110_784 + 410_000 + 40_100 + 1_010
  params = shapes(ff, 1)["params"]
  assert params["stage1"]["ff"]["kernel"].shape == (5, 5, 1, 64)
  assert params["stage2"]["main"]["conv1"]["kernel"].shape == (3, 3, 128, 64)
  assert "ff" not in shapes(noff, 1)["params"]["stage1"]


def test_initialisation_matches_the_prototxt():
  model = models.FFNet(num_classes=10, features=16, stages=2)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 12, 12, 1)))["params"]
  np.testing.assert_allclose(params["stage2"]["main"]["conv2"]["bias"], 0.2)
  np.testing.assert_allclose(params["stage2"]["ff"]["bias"], 0.2)
  np.testing.assert_allclose(params["fc1"]["bias"], 0.0)
  kernel = np.asarray(params["stage2"]["main"]["conv1"]["kernel"])   # fan_in = 9 * 32
  limit = np.sqrt(3.0 / (9 * 32))
  assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
  np.testing.assert_allclose(kernel.var(), limit ** 2 / 3, rtol=0.1)   # uniform: a^2 / 3


def test_ffnet_head_is_linear_as_released_and_logits_are_float32():
  model = models.FFNet(num_classes=7, features=4, stages=2)
  x = jax.random.normal(jax.random.key(1), (3, 12, 12, 1))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  out = jax.jit(lambda v, x: model.apply(v, x, train=True))(variables, x)
  assert out.shape == (3, 7) and out.dtype == jnp.float32
  with_relu = models.FFNet(num_classes=7, features=4, stages=2, fc_activation=nn.relu)
  assert not np.allclose(jax.jit(with_relu.apply)(variables, x), out)


def test_fast_forward_wrapper_reproduces_an_ffnet_stage():
  x = jax.random.normal(jax.random.key(0), (2, 20, 20, 3))
  stage = ffnet_lib.FFNetStage(features=8)
  sv = jax.jit(stage.init)(jax.random.key(1), x)
  wrapper = models.FastForward(body=models.FFNetMainPath(features=8), features=8)
  wv = {"params": {"body": sv["params"]["main"], "branch": sv["params"]["ff"]}}
  assert (jax.tree.map(jnp.shape, wv)
          == jax.tree.map(jnp.shape, jax.eval_shape(wrapper.init, jax.random.key(2), x)))
  out = jax.jit(wrapper.apply)(wv, x)
  np.testing.assert_allclose(out, jax.jit(stage.apply)(sv, x), rtol=1e-5, atol=1e-6)
  assert out.shape == (2, 16, 16, 16)


def test_fast_forward_wrapper_on_other_blocks():
  x = jnp.ones((2, 16, 16, 4))
  # A strided ResNet block: 16 -> 8, the branch is a 2x2 stride-2 conv.
  block = models.FastForward(body=models.BasicBlock(8, strides=2), features=4, strides=2)
  variables = jax.jit(block.init)(jax.random.key(0), x)
  out, _ = jax.jit(lambda v, x: block.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  assert out.shape == (2, 8, 8, 12)
  assert variables["params"]["branch"]["kernel"].shape == (2, 2, 4, 4)
  # A same-size body without `train`, with a chosen 3x3 branch (padded to keep the size).
  same = models.FastForward(body=nn.Dense(5), features=2, kernel_size=3, branch_first=False)
  variables = jax.jit(same.init)(jax.random.key(0), x)
  out, grad = jax.jit(jax.value_and_grad(lambda x: same.apply(variables, x).sum()))(x)
  assert jax.eval_shape(same.apply, variables, x).shape == (2, 16, 16, 7)
  assert grad.shape == x.shape and np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_bad_inputs_are_rejected_clearly():
  with pytest.raises(ValueError, match="at least 25x25"):
    jax.eval_shape(models.FFNet().init, jax.random.key(0), jnp.zeros((1, 24, 24, 1)))
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(models.FFNet().init, jax.random.key(0), jnp.zeros((28, 28, 1)))
  with pytest.raises(ValueError, match="stages and features must be positive"):
    jax.eval_shape(models.FFNet(stages=0).init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  # Six 4-pixel stages on 25x25 leave 1x1: the smallest accepted input.
  assert jax.eval_shape(models.FFNet(features=2).init, jax.random.key(0),
                        jnp.zeros((1, 25, 25, 1)))
  # A strided body (16 -> 8) with a 3x3 stride-1 branch cannot match (it would need pad -6).
  bad = models.FastForward(body=models.BasicBlock(8, strides=2), features=4, kernel_size=3)
  with pytest.raises(ValueError, match="no fast-forward branch maps spatial size 16"):
    jax.eval_shape(bad.init, jax.random.key(0), jnp.ones((1, 16, 16, 4)))
  with pytest.raises(ValueError, match="kernel_size must be positive"):
    jax.eval_shape(models.FastForward(body=nn.Dense(3), kernel_size=(0, 3)).init,
                   jax.random.key(0), jnp.ones((1, 8, 8, 2)))


def test_registry_names():
  assert {"ffnet", "ffnet_noff"} <= set(models.model_names())
  assert models.create_model("ffnet", 10, features=8).features == 8
  assert not models.create_model("ffnet_noff", 10).fast_forward
