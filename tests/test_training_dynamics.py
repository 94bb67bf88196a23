"""Batch-norm study tooling (layer statistics, the recorder, the learning-rate sweep), the models
of the training-dynamics experiments, and everything on 4 forced host devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastnets import models, train
from fastnets.train import NonFiniteLossError
from tests.conftest import run_python


def _batch(n=8, key=0):
  return {"image": jax.random.normal(jax.random.key(key), (n, 8, 8, 1)),
          "label": jnp.arange(n, dtype=jnp.int32) % 10}


@pytest.mark.parametrize("batch_norm", [True, False])
def test_layer_statistics_match_direct_computation(batch_norm):
  model = models.ResNet(depth=8, widths=(4, 4, 8, 8), batch_norm=batch_norm)
  batch = _batch()
  variables = model.init(jax.random.key(0), batch["image"])
  assert ("batch_stats" in variables) == batch_norm
  stats = jax.jit(lambda v: train.layer_statistics(model, v, batch))(variables)
  want = {"stem", "stage1_block1", "stage2_block1", "stage3_block1", "head"}
  want |= {"stem_bn"} if batch_norm else set()
  assert set(stats) == want
  mutable = ["batch_stats", "intermediates"] if batch_norm else ["intermediates"]
  logits, inter = model.apply(variables, batch["image"], train=True, mutable=mutable,
                              capture_intermediates=True)
  block = inter["intermediates"]["stage2_block1"]["__call__"][0]
  assert float(stats["stage2_block1"]["act_std"]) == pytest.approx(float(jnp.std(block)), rel=1e-5)
  assert float(stats["stage2_block1"]["act_max_abs"]) == pytest.approx(
      float(jnp.max(jnp.abs(block))), rel=1e-6)
  # The head's output is the logits: dCE/dlogits = (softmax - onehot) / batch.
  dlogits = (jax.nn.softmax(logits) - jax.nn.one_hot(batch["label"], 10)) / 8
  assert float(stats["head"]["grad_max_abs"]) == pytest.approx(
      float(jnp.max(jnp.abs(dlogits))), rel=1e-5)
  assert float(stats["head"]["grad_mean"]) == pytest.approx(0.0, abs=1e-7)


def test_recorder_adds_no_parameters_and_compiles_once(mnist):
  model = models.EluMLP(hidden=(8,), norm="vcl")  # layers dense1, vcl1, head
  probe = {"image": np.zeros((4, 28, 28, 1), np.float32), "label": np.zeros(4, np.int32)}
  recorder = train.LayerStatsRecorder(model, probe, steps=(1, 2, 3))
  config = train.TrainConfig(steps=3, batch_size=8, eval_batch_size=1000, log_every=3)
  result = train.fit(model, mnist, config, callbacks=[recorder], verbose=False)
  init = model.init(jax.random.key(0), probe["image"])
  assert jax.tree.structure(result.state.params) == jax.tree.structure(init["params"])
  assert [r["step"] for r in recorder.records] == [1, 2, 3]
  # In call order, not sorted.
  assert list(recorder.records[0]["layers"]) == ["dense1", "vcl1", "head"] == recorder.layer_order
  assert recorder.compilations() == 1


def test_lr_sweep_records_divergence_and_goes_on(mnist):
  model = models.EluMLP(hidden=(8,))

  def run(lr):
    config = train.TrainConfig(steps=4, batch_size=8, eval_batch_size=1000, log_every=2,
                               optimizer="sgd", learning_rate=lr, schedule="constant")
    return {"val_accuracy": train.fit(model, mnist.without_test(), config,
                                      verbose=False).metrics["val_accuracy"]}

  sweep = train.lr_sweep(run, [1e12, 1e-2], verbose=False)  # 1e12 diverges at once
  assert [r["learning_rate"] for r in sweep["runs"]] == [1e-2, 1e12]
  assert [r["diverged"] for r in sweep["runs"]] == [False, True]
  assert "NaN" in sweep["runs"][1]["error"]
  assert sweep["max_stable_lr"] == 1e-2 and sweep["first_diverged_lr"] == 1e12

  def fake(lr):
    if lr > 1:
      raise NonFiniteLossError("diverged")
    return {"val_accuracy": float("nan") if lr == 1 else 0.5 + lr / 10}

  sweep = train.lr_sweep(fake, [0.1, 1.0, 3.0, 0.5], stable_fn=lambda m: m["val_accuracy"] > 0.52,
                         verbose=False)
  assert [r["diverged"] for r in sweep["runs"]] == [False, False, True, True]
  assert [r["stable"] for r in sweep["runs"]] == [False, True, False, False]
  assert sweep["max_stable_lr"] == 0.5 and sweep["first_diverged_lr"] == 1.0
  with pytest.raises(ValueError, match="learning_rates"):
    train.lr_sweep(fake, [0.0])


def test_models_and_bad_options():
  x = _batch()["image"]
  for norm in models.NORMS:
    for m in (models.EluMLP(hidden=(4,), norm=norm), models.EluCNN(channels=(2,), hidden=4,
                                                                   norm=norm)):
      out, v = jax.eval_shape(lambda m=m: m.init_with_output(jax.random.key(0), x))
      assert out.shape == (8, 10) and ("batch_stats" in v) == (norm == "batchnorm")
  for noise in models.NOISES:
    m = models.NoiseCNN(channels=(2,), hidden=4, noise=noise)
    out, v = jax.eval_shape(lambda m=m: m.init_with_output(jax.random.key(0), x))
    assert out.shape == (8, 10) and ("adversarial_noise" in v) == (noise in ("anl", "canl"))
  with pytest.raises(ValueError, match="norm"):
    models.EluMLP(norm="layer").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="noise_level"):
    models.NoiseCNN(noise="anl", noise_level=0.0).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="bottleneck"):
    models.ResNet(depth=11, bottleneck=True, batch_norm=False).init(jax.random.key(0), x)



def test_four_devices():
  out = run_python("""
import jax, numpy as np
from fastnets import data, models, train
assert jax.device_count() == 4
ds = data.load_dataset()
cfg = train.TrainConfig(steps=2, batch_size=8, eval_batch_size=1000, log_every=2)
cnn = dict(channels=(2,), hidden=4, noise_level=0.1)
for name, model, loss in [
    ("anl", models.NoiseCNN(noise="anl", **cnn), train.anl_loss_fn),
    ("canl", models.NoiseCNN(noise="canl", **cnn), train.canl_loss_fn),
    ("vcl", models.EluMLP(hidden=(8,), norm="vcl"),
     lambda m: train.variance_constancy_loss_fn(m, sub_batch=2))]:
  r = train.fit(model, ds, cfg, loss_fn=loss(model), verbose=False)
  assert r.devices == 4 and np.isfinite(r.metrics["train_loss"]), name
  if name == "canl":
    table = r.state.model_state["adversarial_noise"]["noise1"]["class_direction"]
    assert np.abs(np.asarray(table)).max() == 1.0
print("ok")
""", devices=4)
  assert out.strip().endswith("ok")
