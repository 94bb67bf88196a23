"""fastnets.models: shapes, parameter counts of the paper configurations, registry errors."""

import jax
import jax.numpy as jnp
import pytest

from fastnets import models, ops
from fastnets.ops import FixedPoint, QuantConfig


def _count(variables):
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name,shape", [("cnn", (2, 28, 28, 1)), ("resnet8", (2, 32, 32, 3)),
                                        ("resnet14", (2, 28, 28, 1))])
def test_forward_shapes(name, shape):
  model = models.create_model(name, 7)
  variables = model.init(jax.random.key(0), jnp.zeros(shape))
  logits, state = model.apply(variables, jnp.ones(shape), train=True, mutable=["batch_stats"],
                              rngs={"dropout": jax.random.key(1)})
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32


def test_resnet_parameter_counts_match_he_et_al():
  # ResNet-20 / ResNet-110 on CIFAR-10: 0.27M and 1.7M parameters (He et al. 2016, Table 6).
  for depth, expected in ((20, 0.27e6), (110, 1.7e6)):
    model = models.ResNet(num_classes=10, depth=depth)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert abs(_count(shapes) - expected) / expected < 0.05


def test_bad_model_names_and_depths():
  with pytest.raises(ValueError, match="unknown model 'vgg16'.*known models"):
    models.create_model("vgg16", 10)
  with pytest.raises(ValueError, match="depth must be 6n\\+2"):
    models.ResNet(depth=21).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="NHWC"):
    models.SmallCNN().init(jax.random.key(0), jnp.zeros((8, 8)))


def test_register_model():
  models.register_model("test_only_cnn", lambda num_classes, **kw: models.SmallCNN(num_classes))
  assert isinstance(models.create_model("test_only_cnn", 3), models.SmallCNN)
  with pytest.raises(ValueError, match="already registered"):
    models.register_model("test_only_cnn", lambda num_classes: None)


@pytest.mark.parametrize("kind,features,layers", [("mlp", (8, 6), 3), ("cnn", (4,), 3)])
def test_low_precision_net_layers_formats_and_quantised_eval(kind, features, layers):
  fmt = FixedPoint(2, 4)
  model = models.LowPrecisionNet(num_classes=5, kind=kind, features=features, dense=6)
  assert model.num_layers() == layers
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
  params = model.init(jax.random.key(0), x)["params"]
  assert sorted(params) == [f"layer{i}" for i in range(layers)]
  rounded = models.LowPrecisionNet(num_classes=5, kind=kind, features=features, dense=6,
                                   kernel_formats=(fmt,) + (None,) * (layers - 1))
  p = rounded.init(jax.random.key(0), x)["params"]
  k0 = p["layer0"]["kernel"]
  assert bool(jnp.all(ops.is_representable(k0, fmt))) and not jnp.array_equal(
      k0, params["layer0"]["kernel"])
  assert jnp.array_equal(p["layer1"]["kernel"], params["layer1"]["kernel"])
  coarse = QuantConfig(activations=FixedPoint(2, 1))
  ev = models.LowPrecisionNet(num_classes=5, kind=kind, features=features, dense=6,
                              eval_select=lambda m: coarse)
  float_logits = model.apply({"params": params}, x)
  assert jnp.array_equal(ev.apply({"params": params}, x, train=True), float_logits)
  assert not jnp.allclose(ev.apply({"params": params}, x), float_logits)
  with pytest.raises(ValueError, match="kind"):
    models.LowPrecisionNet(kind="rnn").init(jax.random.key(0), x)
