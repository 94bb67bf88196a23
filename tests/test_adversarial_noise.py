"""Adversarial noise layers (ANL / CANL), their training losses, FGSM training and evaluation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fastnets import nn as fnn
from fastnets import ops, train


class NoisyMLP(nn.Module):
  num_classes: int = 3
  canl: bool = False

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.relu(nn.Dense(6, name="hidden")(x.reshape((x.shape[0], -1))))
    h = fnn.AdversarialNoise(eps=0.5, num_classes=self.num_classes if self.canl else 0,
                             name="anl")(h, train)
    return nn.Dense(self.num_classes, name="out")(h)


def _batch(n=8):
  return {"image": jax.random.normal(jax.random.key(0), (n, 2, 2, 1)),
          "label": jnp.arange(n, dtype=jnp.int32) % 3}


def _manual_activation_grad(variables, batch):
  """dCE/dh of the hidden activation h, with the model written out by hand."""
  p = variables["params"]
  h = nn.relu(batch["image"].reshape((batch["image"].shape[0], -1)) @ p["hidden"]["kernel"]
              + p["hidden"]["bias"])
  head = lambda h: ops.cross_entropy_loss(h @ p["out"]["kernel"] + p["out"]["bias"],
                                          batch["label"])
  return jax.grad(head)(h)


def test_noise_has_the_configured_norm():
  direction = jax.random.normal(jax.random.key(1), (5, 3, 4))
  magnitude = jnp.array([0.0, 0.1, 0.5, 1.0, 2.0])
  noise = ops.adversarial_noise(direction, magnitude)
  np.testing.assert_allclose(jnp.max(jnp.abs(noise), axis=(1, 2)), magnitude, rtol=1e-6)
  assert np.all(np.sign(noise[1:]) == np.sign(direction[1:]))
  assert not np.any(ops.adversarial_noise(jnp.zeros((2, 3)), jnp.ones(2)))  # no gradient yet
  r = ops.noise_magnitudes(jax.random.key(2), 10_000, 0.2)
  assert 0 <= float(r.min()) and float(r.max()) <= np.float32(0.2)
  assert float(jnp.mean(r)) == pytest.approx(0.1, abs=0.005)


def test_identity_at_evaluation_and_noise_in_training():
  model = NoisyMLP()
  batch = _batch()
  variables = model.init(jax.random.key(0), batch["image"])
  assert set(variables) == {"params", fnn.ANL_STATE}
  direction = {"anl": {"activation": jax.random.normal(jax.random.key(3), (8, 6))}}
  plain = model.apply(variables, batch["image"])
  with_dirs = {**variables, fnn.ANL_DIRECTIONS: direction}
  np.testing.assert_array_equal(model.apply(with_dirs, batch["image"]), plain)
  # In training the hidden activation moves by r * scale per example, r in [0, eps].
  def hidden(v):
    _, inter = model.apply(v, batch["image"], True, rngs={fnn.ANL_RNG: jax.random.key(4)},
                           capture_intermediates=lambda m, _: m.name == "anl",
                           mutable=["intermediates"])
    return inter["intermediates"]["anl"]["__call__"][0]

  moved = hidden(with_dirs) - hidden(variables)
  scale = float(variables[fnn.ANL_STATE]["anl"]["scale"])
  peaks = np.asarray(jnp.max(jnp.abs(moved), axis=1)) / scale
  assert np.all((peaks >= 0) & (peaks <= 0.5 + 1e-6)) and peaks.max() > 0.05
  moving = peaks > 0
  assert np.all(np.sign(moved[moving]) == np.sign(direction["anl"]["activation"][moving]))


def test_bad_eps():
  with pytest.raises(ValueError, match="eps"):
    fnn.AdversarialNoise(eps=0.0).init(jax.random.key(0), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="eps"):
    ops.noise_magnitudes(jax.random.key(0), 3, -0.1)
  with pytest.raises(ValueError, match="eps"):
    ops.fgsm(jnp.ones(3), jnp.ones(3), 0.0)


def test_anl_direction_is_the_activation_gradient():
  model = NoisyMLP()
  batch = _batch()
  variables = model.init(jax.random.key(0), batch["image"])
  rngs = {"dropout": jax.random.key(1), fnn.ANL_RNG: jax.random.key(2)}
  grads = jax.jit(lambda v: train.activation_grads(model, v, batch, rngs))(variables)
  np.testing.assert_allclose(grads["anl"]["activation"], _manual_activation_grad(variables, batch),
                             rtol=1e-5, atol=1e-7)
  loss, (state, metrics) = jax.jit(train.anl_loss_fn(model))(
      variables["params"], {fnn.ANL_STATE: variables[fnn.ANL_STATE]}, batch, jax.random.key(5))
  assert np.isfinite(float(loss)) and set(state) == {fnn.ANL_STATE}


def test_recorded_gradient_is_jax_grad_and_checks_in_float64():
  def f(params, side, x):
    h = jnp.tanh(x @ params["w"]) + side
    return jnp.sum(jnp.sin(h) * params["v"]), h

  with jax.enable_x64(True):
    keys = jax.random.split(jax.random.key(0), 3)
    params = {"w": jax.random.normal(keys[0], (3, 4), jnp.float64),
              "v": jax.random.normal(keys[1], (2, 4), jnp.float64)}
    x = jax.random.normal(keys[2], (2, 3), jnp.float64)
    side = jnp.zeros((2, 4), jnp.float64)
    loss, _, recorded = train.value_and_recorded_grad(f, params, side, x)
    np.testing.assert_allclose(recorded, jax.grad(lambda s: f(params, s, x)[0])(side), rtol=1e-12)
    assert float(loss) == pytest.approx(float(f(params, side, x)[0]))
    g = jax.grad(lambda p: train.value_and_recorded_grad(f, p, side, x)[0])(params)
    want = jax.grad(lambda p: f(p, side, x)[0])(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), g, want)
    check_grads(lambda p: train.value_and_recorded_grad(f, p, side, x)[0], (params,), order=1,
                modes=("rev",))


def test_canl_records_the_step_gradient_into_the_class_table():
  model = NoisyMLP(canl=True)
  batch = _batch()
  variables = model.init(jax.random.key(0), batch["image"])
  table = variables[fnn.ANL_STATE]["anl"]["class_direction"]
  assert table.shape == (3, 6) and not np.any(table)
  loss_fn = jax.jit(train.canl_loss_fn(model))
  state = {fnn.ANL_STATE: variables[fnn.ANL_STATE]}
  _, (new_state, _) = loss_fn(variables["params"], state, batch, jax.random.key(1))
  # With an all-zero table the first step adds no noise, so its recorded gradient is the clean one.
  want = ops.class_directions(_manual_activation_grad(variables, batch), batch["label"], 3)
  np.testing.assert_allclose(new_state[fnn.ANL_STATE]["anl"]["class_direction"], want,
                             rtol=1e-5, atol=1e-7)
  # The parameter gradient of the one-pass loss is jax.grad of the same (noise-free) loss.
  g = jax.grad(lambda p: loss_fn(p, state, batch, jax.random.key(1))[0])(variables["params"])
  want_g = jax.grad(lambda p: ops.cross_entropy_loss(model.apply(
      {"params": p, **state}, batch["image"]), batch["label"]))(variables["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, want_g)
  # A model without class tables is refused.
  plain = NoisyMLP().init(jax.random.key(0), batch["image"])
  with pytest.raises(ValueError, match="model"):
    train.canl_loss_fn(NoisyMLP())(plain["params"], {fnn.ANL_STATE: plain[fnn.ANL_STATE]}, batch,
                                   jax.random.key(1))


def test_fgsm_moves_every_input_by_eps_within_range():
  x = jnp.linspace(-1, 1, 12).reshape(3, 4)
  g = jax.random.normal(jax.random.key(0), (3, 4))
  out = ops.fgsm(x, g, 0.1, -1.0, 1.0)
  inside = (jnp.abs(x + 0.1 * jnp.sign(g)) <= 1.0)
  np.testing.assert_allclose(jnp.abs(out - x)[inside], 0.1, rtol=1e-6)
  assert float(jnp.max(jnp.abs(out))) <= 1.0


def test_fgsm_evaluator_clean_equals_evaluate_and_attack_does_not_help():
  from fastnets import data, models
  dataset = data.load_dataset("mnist_bundled")
  model = models.NoiseCNN(num_classes=10, channels=(4,), hidden=16)
  config = train.TrainConfig(steps=150, batch_size=64, learning_rate=1e-2, log_every=150,
                             checkpoint_every=0)
  state = train.fit(model, dataset, config).state
  acc = train.fgsm_evaluator(model, dataset, [0.0, 0.2], "validation", 500)(state)
  clean = train.evaluate(model, state, dataset, 500, split="validation")["accuracy"]
  assert clean > 0.3  # trained: the attack has something to break
  assert acc[0.0] == pytest.approx(clean, abs=1e-6)
  assert acc[0.2] < acc[0.0]
