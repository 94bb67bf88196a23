"""fastnets.train: loss goes down, exact resume, NaN guard, workdir guard, 1 vs 4 devices."""

import dataclasses
import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fastnets import train
from tests.conftest import run_python

TINY = train.TrainConfig(steps=6, batch_size=32, eval_batch_size=1000, learning_rate=3e-3,
                         log_every=2, checkpoint_every=2, seed=1)


def test_loss_goes_down(mnist, tiny_cnn):
  config = dataclasses.replace(TINY, steps=40, log_every=10, learning_rate=1e-2,
                               schedule="constant")
  result = train.fit(tiny_cnn, mnist, config, verbose=False)
  losses = [h["train_loss"] for h in result.history if "train_loss" in h]
  assert losses[-1] < 0.6 * losses[0], losses
  assert result.metrics["val_accuracy"] > 0.5


def _params_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


class _Interrupt(Exception):
  pass


def test_stopped_run_resumes_to_identical_end(mnist, tiny_cnn, tmp_path):
  full = train.fit(tiny_cnn, mnist, TINY, str(tmp_path / "full"), verbose=False)

  def stop_at_3(step, state):
    if step == 3:
      raise _Interrupt()

  with pytest.raises(_Interrupt):
    train.fit(tiny_cnn, mnist, TINY, str(tmp_path / "cut"), callbacks=[stop_at_3], verbose=False)
  resumed = train.fit(tiny_cnn, mnist, TINY, str(tmp_path / "cut"), verbose=False)
  assert resumed.resumed_from == 2
  assert _params_equal(full.state.params, resumed.state.params)
  assert _params_equal(full.state.model_state, resumed.state.model_state)
  for key in ("val_accuracy", "val_loss", "train_loss", "train_accuracy"):
    assert full.metrics[key] == resumed.metrics[key], key
  strip = lambda hist: [{k: v for k, v in h.items() if k != "steps_per_sec"} for h in hist]
  assert strip(full.history) == strip(resumed.history)


def test_finished_run_is_not_retrained(mnist, tiny_cnn, tmp_path):
  first = train.fit(tiny_cnn, mnist, TINY, str(tmp_path), verbose=False)
  again = train.fit(tiny_cnn, mnist, TINY, str(tmp_path), verbose=False)
  assert again.resumed_from == TINY.steps
  assert _params_equal(first.state.params, again.state.params)


def test_workdir_of_another_config_is_refused(mnist, tiny_cnn, tmp_path):
  train.fit(tiny_cnn, mnist, TINY, str(tmp_path), verbose=False)
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  other = dataclasses.replace(TINY, learning_rate=0.1)
  with pytest.raises(train.WorkdirMismatchError,
                     match=r"learning_rate: 0\.003 -> 0\.1.*new --workdir"):
    train.fit(tiny_cnn, mnist, other, str(tmp_path), verbose=False)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
  # Reporting frequencies may change on resume.
  train.fit(tiny_cnn, mnist, dataclasses.replace(TINY, log_every=3), str(tmp_path), verbose=False)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(mnist, tiny_cnn, tmp_path):
  def poison(step, state):
    if step == 3:
      return state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))

  config = dataclasses.replace(TINY, log_every=100)
  with pytest.raises(train.NonFiniteLossError, match=r"NaN/Inf at step 4.*checkpoint \(step 2\)"):
    train.fit(tiny_cnn, mnist, config, str(tmp_path), callbacks=[poison], verbose=False)
  ckpt = train.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == 2
  ckpt.close()


def test_custom_loss_variants_and_optimizer_wrapper(mnist, tiny_cnn):
  calls = {"n": 0}
  base = train.classification_loss(tiny_cnn)

  def scaled(params, model_state, batch, rng):
    loss, (state, metrics) = base(params, model_state, batch, rng)
    return 2.0 * loss, (state, metrics)

  def wrapper(tx):
    calls["n"] += 1
    return optax.chain(optax.clip_by_global_norm(1.0), tx)

  config = dataclasses.replace(TINY, steps=4)
  result = train.fit(tiny_cnn, mnist, config, step_variants={"a": base, "b": scaled},
                     choose_variant=lambda step: "ab"[step % 2], tx_wrapper=wrapper,
                     verbose=False)
  assert calls["n"] == 1 and result.metrics["steps"] == 4
  with pytest.raises(ValueError, match="either loss_fn"):
    train.fit(tiny_cnn, mnist, config, loss_fn=base, step_variants={"a": base}, verbose=False)


@pytest.mark.parametrize("optimizer", train.OPTIMIZERS)
def test_every_optimizer_takes_a_step(optimizer):
  config = train.TrainConfig(optimizer=optimizer, weight_decay=1e-4, grad_clip_norm=1.0)
  tx = train.make_optimizer(config)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
  assert float(jnp.sum(jnp.abs(updates["w"]))) > 0


def test_schedules():
  step = train.make_schedule(train.TrainConfig(schedule="step", learning_rate=0.1,
                                               decay_boundaries=(10, 20), steps=30))
  np.testing.assert_allclose([step(0), step(15), step(25)], [0.1, 0.01, 0.001], rtol=1e-6)
  warm = train.make_schedule(train.TrainConfig(schedule="cosine", learning_rate=1.0,
                                               warmup_steps=10, steps=110))
  np.testing.assert_allclose([warm(5), warm(10), warm(110)], [0.5, 1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("field,value,match", [
    ("optimizer", "rmsprop", "optimizer must be one of"),
    ("steps", 0, "steps must be positive"),
    ("schedule", "linear", "schedule must be one of"),
    ("augment", "mixup", "augment must be"),
])
def test_bad_config(field, value, match):
  with pytest.raises(ValueError, match=match):
    train.TrainConfig(**{field: value})


def test_same_loss_on_one_and_four_devices_and_batch_check():
  out = run_python(textwrap.dedent("""
      import json, jax
      from fastnets import data, models, train
      ds = data.load_dataset()
      model = models.SmallCNN(channels=(4, 8), hidden=16, dropout_rate=0.1)
      config = train.TrainConfig(steps=4, batch_size=32, log_every=1, learning_rate=3e-3)
      runs = {}
      for n in (1, 4):
        r = train.fit(model, ds, config, mesh=train.make_mesh(jax.devices()[:n]), verbose=False)
        runs[n] = {"loss": [h["train_loss"] for h in r.history if "train_loss" in h],
                   "val": r.metrics["val_accuracy"], "devices": r.devices}
      try:
        train.fit(model, ds, train.TrainConfig(steps=1, batch_size=30), verbose=False)
      except ValueError as e:
        runs["error"] = str(e)
      print(json.dumps(runs))
      """), devices=4)
  runs = json.loads(out.strip().splitlines()[-1])
  assert runs["1"]["devices"] == 1 and runs["4"]["devices"] == 4
  np.testing.assert_allclose(runs["1"]["loss"], runs["4"]["loss"], rtol=2e-5)
  assert abs(runs["1"]["val"] - runs["4"]["val"]) <= 1e-3
  assert "batch_size=30 does not divide over the 4 devices" in runs["error"]


def test_run_config_without_checkpoint_is_replaced(tmp_path):
  train.check_or_record_run_config(str(tmp_path), {"train": {"lr": 1}}, has_checkpoint=False)
  train.check_or_record_run_config(str(tmp_path), {"train": {"lr": 2}}, has_checkpoint=False)
  with pytest.raises(train.WorkdirMismatchError, match=r"train\.lr: 2 -> 3"):
    train.check_or_record_run_config(str(tmp_path), {"train": {"lr": 3}}, has_checkpoint=True)
  train.check_or_record_run_config(str(tmp_path), {"train": {"lr": 2, "log_every": 5}},
                                   ignore=("log_every",), has_checkpoint=True)


@pytest.mark.parametrize("name, rtol", [("cnn", 0.0), ("deep_fried", 3e-7)])
def test_op_by_op_initialisation_equals_the_jitted_one(name, rtol):
  """`fit` and `fit_seeds` initialise op by op (for compile time): plain initializer draws are
  bit for bit those of one jitted initialisation; parameters computed from draws (Fastfood's
  scaling S) may differ in the last bit, where one program fuses the arithmetic differently."""
  from fastnets import models
  model = models.create_model(name, 10)
  tx = train.make_optimizer(train.TrainConfig(steps=1, batch_size=8))
  x = jnp.zeros((1, 28, 28, 1))
  eager = train.init_train_state(model, tx, train.init_key(3), x)
  jitted = jax.jit(lambda k: train.init_train_state(model, tx, k, x))(train.init_key(3))
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=0)
