"""fastnets.train.fit_seeds: seed k is fit(seed=k) (batch norm, dropout, both seed mappings), one
compilation for all seeds, no test numbers from a hidden test split, 1 vs 4 devices, bad input."""

import json
import logging
import textwrap

import flax.linen as nn
import jax
import numpy as np
import pytest

from fastnets import train
from tests.conftest import run_python

CONFIG = train.TrainConfig(steps=4, batch_size=32, eval_batch_size=1000, learning_rate=3e-3,
                           log_every=2, eval_every=3, seed=2)


class _ConvBatchNormDropout(nn.Module):
  """Small enough to compile fast; has a convolution, batch statistics and dropout."""

  @nn.compact
  def __call__(self, x, train=False):
    # No bias before batch norm: its true gradient is zero, and Adam would turn the float noise of
    # that zero into full-size steps that differ between summation orders.
    x = nn.Conv(4, (3, 3), strides=(2, 2), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.Dropout(0.3, deterministic=not train)(x.reshape((x.shape[0], -1)))
    return nn.Dense(10)(x)


def _assert_trees_close(a, b, what):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5, err_msg=what)


@pytest.fixture
def compile_log(caplog):
  """Names of the functions jax compiles while the fixture is active."""
  caplog.set_level(logging.WARNING)
  with jax.log_compiles():
    yield lambda name: sum(f"Compiling jit({name})" in r.getMessage() for r in caplog.records)


def test_seed_k_is_fit_with_seed_k_and_compiles_once(mnist, compile_log):
  model = _ConvBatchNormDropout()
  single = train.fit(model, mnist, CONFIG, verbose=False)
  base = train.classification_loss(model)
  traces = []

  def counted_loss(params, model_state, batch, rng):
    traces.append(1)
    return base(params, model_state, batch, rng)

  strip = lambda hist: [{k: v for k, v in h.items() if k != "steps_per_sec"} for h in hist]
  for mode, dataset in (("unroll", mnist), ("vmap", mnist.without_test())):
    traces.clear()
    before = compile_log("seeds_train_step"), compile_log("seeds_eval_step")
    multi = train.fit_seeds(model, dataset, CONFIG, [7, 2], loss_fn=counted_loss,
                            seed_batching=mode, verbose=False)
    # At most one shape-only trace, then the program's: once (vmap) or once per seed (unroll),
    # however many steps and evaluations.
    assert 1 <= len(traces) <= 1 + (1 if mode == "vmap" else 2), (mode, len(traces))
    # One compiled train program and one eval program, for all steps, seeds and both splits.
    assert compile_log("seeds_train_step") - before[0] == 1, mode
    assert compile_log("seeds_eval_step") - before[1] == 1, mode
    assert multi.seed_batching == mode and multi.seeds == (7, 2)
    mine = multi.state_for(2)
    _assert_trees_close(mine.params, single.state.params, f"{mode} params")
    assert "batch_stats" in mine.model_state
    _assert_trees_close(mine.model_state, single.state.model_state, f"{mode} batch_stats")
    with_test = dataset.has_test
    if not with_test:  # Same rule as fit: no test numbers from a dataset that hides them.
      assert multi.metrics["test_accuracy"] is None and multi.metrics["test_loss"] is None
    splits = ("val", "train", "test") if with_test else ("val", "train")
    for split in splits:
      np.testing.assert_allclose(multi.metrics[f"{split}_loss"][1], single.metrics[f"{split}_loss"],
                                 rtol=1e-4, err_msg=f"{mode} {split}")
      accuracy = f"{split}_accuracy"
      assert abs(multi.metrics[accuracy][1] - single.metrics[accuracy]) <= 1e-3, (mode, accuracy)
    assert [h["step"] for h in multi.history[1]] == [h["step"] for h in single.history]
    for mine_h, fit_h in zip(strip(multi.history[1]), strip(single.history)):
      assert mine_h.keys() == fit_h.keys()
      np.testing.assert_allclose(list(mine_h.values()), list(fit_h.values()), rtol=1e-4,
                                 atol=1e-3)
    # Seed 7 is another run (its own data order, initialisation and dropout).
    assert abs(multi.metrics["train_loss"][0] - multi.metrics["train_loss"][1]) > 1e-4
    assert multi.metrics["steps"] == CONFIG.steps and multi.metrics["wall_time_s"] > 0
    assert len(multi.history) == 2 and jax.tree.leaves(multi.state.params)[0].shape[0] == 2
  # Another batch size, a fresh program: the same numbers.
  evaluated = train.evaluate_seeds(model, multi.state, mnist, "validation", 700)
  np.testing.assert_allclose(evaluated["accuracy"], multi.metrics["val_accuracy"], atol=1e-6)
  assert evaluated["count"] == len(mnist.validation)


def test_bad_input(mnist, tiny_cnn):
  for seeds, match in (([], "at least one seed"), ([1, 1], "distinct"), ([0.5], "integers")):
    with pytest.raises(ValueError, match=match):
      train.fit_seeds(tiny_cnn, mnist, CONFIG, seeds, verbose=False)
  with pytest.raises(ValueError, match=r"workdir \(fit_seeds neither checkpoints.*Use fit"):
    train.fit_seeds(tiny_cnn, mnist, CONFIG, [0], workdir="/tmp/x", verbose=False)
  with pytest.raises(ValueError, match="callbacks"):
    train.fit_seeds(tiny_cnn, mnist, CONFIG, [0], callbacks=[print], verbose=False)
  with pytest.raises(TypeError, match="unexpected arguments"):
    train.fit_seeds(tiny_cnn, mnist, CONFIG, [0], sead=3, verbose=False)
  with pytest.raises(ValueError, match="seed_batching must be one of"):
    train.fit_seeds(tiny_cnn, mnist, CONFIG, [0], seed_batching="pmap", verbose=False)


def test_same_per_seed_losses_on_one_and_four_devices():
  out = run_python(textwrap.dedent("""
      import json, jax
      from fastnets import data, models, train
      ds = data.load_dataset()
      model = models.SmallCNN(channels=(4, 8), hidden=16, dropout_rate=0.1)
      config = train.TrainConfig(steps=2, batch_size=32, log_every=1, learning_rate=3e-3)
      runs = {}
      for n in (1, 4):
        r = train.fit_seeds(model, ds, config, [0, 3], mesh=train.make_mesh(jax.devices()[:n]),
                            seed_batching="vmap", verbose=False)
        runs[n] = {"loss": [[h["train_loss"] for h in hist if "train_loss" in h]
                            for hist in r.history],
                   "val": r.metrics["val_accuracy"], "devices": r.devices,
                   "replicated": jax.tree.leaves(r.state.params)[0].sharding.is_fully_replicated}
      try:
        train.fit_seeds(model, ds, train.TrainConfig(steps=1, batch_size=30), [0], verbose=False)
      except ValueError as e:
        runs["error"] = str(e)
      print(json.dumps(runs))
      """), devices=4)
  runs = json.loads(out.strip().splitlines()[-1])
  assert runs["1"]["devices"] == 1 and runs["4"]["devices"] == 4
  # Seed axis replicated, batch split over the devices: the same numbers on 1 and 4 devices.
  assert runs["4"]["replicated"]
  np.testing.assert_allclose(runs["1"]["loss"], runs["4"]["loss"], rtol=2e-5)
  np.testing.assert_allclose(runs["1"]["val"], runs["4"]["val"], atol=1e-3)
  assert "batch_size=30 does not divide over the 4 devices" in runs["error"]
