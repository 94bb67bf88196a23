"""The bt_rnn experiment's plumbing: dataset choice, model names, learning rates, the benchmark."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench_bt_rnn, bt_rnn, common
from fastnets import data
from fastnets.models.bt_rnn import SequenceClassifier, param_counts


def test_ucf11_is_refused_with_a_clear_error():
  config = common.merge_config(bt_rnn.DEFAULTS, {"dataset": "ucf11"})
  with pytest.raises(data.DatasetError, match="UCF11 is not in tensorflow-datasets"):
    bt_rnn.load_sequences(config)


def test_model_names_and_tt_budget_matching():
  assert bt_rnn.parse_model_name("lstm") == {"cell": "lstm", "rank": None, "blocks": None}
  assert bt_rnn.parse_model_name("bt_gru_r2_c3") == {"cell": "bt_gru", "rank": 2, "blocks": 3}
  assert bt_rnn.parse_model_name("tt_lstm_r5")["rank"] == 5
  for bad in ("bt_lstm_x", "tt_lstm_r2_c2", "cnn"):
    with pytest.raises(ValueError, match="is not one of"):
      bt_rnn.parse_model_name(bad)
  config = common.merge_config(bt_rnn.DEFAULTS, bt_rnn.QUICK)
  rank, target = bt_rnn.matched_tt_rank(config)
  assert target == "bt_lstm_r4_c2"  # The largest BT map of the quick setting.
  budget = bt_rnn.model_input_params(target, config)
  cost = lambda r: abs(bt_rnn.model_input_params(f"tt_lstm_r{r}", config) - budget)
  assert all(cost(rank) <= cost(r) for r in range(1, 10))
  assert bt_rnn.matched_tt_rank({**config, "tt_rank": 7}) == (7, None)


def test_per_model_learning_rates():
  config = common.merge_config(bt_rnn.DEFAULTS, {"learning_rate": 1e-3, "bt_learning_rate": 1e-2,
                                                 "tt_learning_rate": 0.0})
  assert bt_rnn.model_learning_rate("lstm", config) == 1e-3
  assert bt_rnn.model_learning_rate("gru", config) == 1e-3
  assert bt_rnn.model_learning_rate("bt_lstm_r4_c2", config) == 1e-2
  assert bt_rnn.model_learning_rate("bt_gru_r2", config) == 1e-2
  assert bt_rnn.model_learning_rate("tt_lstm", config) == 1e-3  # 0: the dense rate.
  # Every quick model is in the compression regime of the fastnets target (>= 100x, bias included).
  quick = common.merge_config(bt_rnn.DEFAULTS, bt_rnn.QUICK)
  dense = bt_rnn.model_input_params("lstm", quick) + 4 * quick["hidden"]
  for name in quick["models"]:
    if name.startswith("bt_"):
      assert dense / (bt_rnn.model_input_params(name, quick) + 4 * quick["hidden"]) >= 100, name


def test_frame_model_matches_the_sequence_classifier():
  config = common.merge_config(bt_rnn.DEFAULTS, bt_rnn.SMOKE)
  model = bt_rnn.build_model("bt_lstm_r2", config, 10)
  x = jax.random.normal(jax.random.key(0), (2, 2, 784, 1))
  # Random parameters of the right shapes (tracing only: compiling the orthogonal
  # initialisers would take most of this test's time).
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype),
                           jax.eval_shape(model.init, jax.random.key(1), x))
  logits = model.apply(variables, x)
  assert logits.shape == (2, 10)
  flat = SequenceClassifier(**{f: getattr(model, f) for f in (
      "cell", "hidden", "num_classes", "input_factors", "hidden_factors", "tucker_rank",
      "num_blocks", "optimize")})
  np.testing.assert_allclose(flat.apply(variables, x.reshape(2, 2, 784)), logits, rtol=1e-6)
  counts = param_counts(variables["params"])
  assert counts["input_params"] == bt_rnn.model_input_params("bt_lstm_r2", config) + 4 * 16
  with pytest.raises(ValueError, match="batch, time"):
    model.apply(variables, jnp.zeros((2, 784)))


def test_bench_bt_rnn_smoke(tmp_path):
  cfg = dict(bench_bt_rnn.SMOKE, cells=["lstm", "bt_lstm"], tensor_optimize=["optimal"],
             workdir=str(tmp_path))
  res = bench_bt_rnn.run(cfg)
  m = res["metrics"]["d784"]
  assert m["lstm_hoisted"]["speedup_vs_lstm"] == 1.0
  assert m["bt_lstm_hoisted"]["median_ms"] > 0
  assert m["bt_lstm_hoisted"]["input_params"] < m["lstm_hoisted"]["input_params"]
  assert (tmp_path / "results.json").exists()
  assert bench_bt_rnn.report_rows(res)
