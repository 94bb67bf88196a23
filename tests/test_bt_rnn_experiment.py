"""The bt_rnn experiment's data and model plumbing: digit sequences, video frames, model names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench_bt_rnn, bt_rnn, common
from fastnets import data


@pytest.fixture(scope="module")
def seqs(mnist):
  return bt_rnn.make_digit_sequences(mnist, "mode", seq_len=8, mode_count=3, train_sequences=200,
                                     val_sequences=100, seed=0)


def _frame_classes(images_by_key, labels, frames):
  """Class of each frame, looked up by its bytes among a split's images."""
  return np.array([[labels[images_by_key[f.tobytes()]] for f in seq] for seq in frames])


def _index(source):
  images, labels = source.get(np.arange(len(source)))
  flat = images.reshape(len(images), -1)
  return {f.tobytes(): k for k, f in enumerate(flat)}, labels


def test_digit_sequences_shapes_and_determinism(mnist, seqs):
  assert seqs.image_shape == (8, 784, 1) and seqs.num_classes == 10
  assert seqs.train.images.dtype == np.uint8 and len(seqs.train) == 200
  assert len(seqs.validation) == 100
  again = bt_rnn.make_digit_sequences(mnist, "mode", 8, 3, 200, 100, seed=0)
  np.testing.assert_array_equal(again.train.images, seqs.train.images)
  np.testing.assert_array_equal(again.validation.labels, seqs.validation.labels)
  other = bt_rnn.make_digit_sequences(mnist, "mode", 8, 3, 200, 100, seed=1)
  assert not np.array_equal(other.train.labels, seqs.train.labels)
  np.testing.assert_allclose(seqs.mean, mnist.mean)


def test_mode_label_is_the_unique_most_frequent_frame_digit(mnist, seqs):
  for split, base in ((seqs.train, mnist.train), (seqs.validation, mnist.validation)):
    index, labels = _index(base)  # Every frame is an image of the same split of the base.
    frames = split.images[..., 0]
    classes = _frame_classes(index, labels, frames)
    for seq_classes, label in zip(classes, split.labels):
      counts = np.bincount(seq_classes, minlength=10)
      assert counts[label] == 3 and np.sort(counts)[-2] == 1


def test_validation_sequences_use_validation_digits_only(mnist, seqs):
  train_index, _ = _index(mnist.train)
  frames = seqs.validation.images[..., 0].reshape(-1, 784)
  assert not any(f.tobytes() in train_index for f in frames)


def test_sum_mod10_labels(mnist):
  ds = bt_rnn.make_digit_sequences(mnist, "sum_mod10", 4, 3, 50, 20, seed=3)
  index, labels = _index(mnist.train)
  classes = _frame_classes(index, labels, ds.train.images[..., 0])
  np.testing.assert_array_equal(classes.sum(axis=1) % 10, ds.train.labels)


@pytest.mark.parametrize("kwargs, match", [
    (dict(task="parity"), "task must be one of"),
    (dict(mode_count=1), "mode_count must be in"),
    (dict(seq_len=14, mode_count=3), "mode_count must be in"),
    (dict(train_sequences=0), "must be positive"),
])
def test_bad_sequence_arguments(mnist, kwargs, match):
  with pytest.raises(ValueError, match=match):
    bt_rnn.make_digit_sequences(mnist, **kwargs)


def test_video_frames_picks_even_frames_and_resizes():
  video = np.zeros((10, 4, 6, 3), np.uint8)
  video += np.arange(10, dtype=np.uint8)[:, None, None, None]  # Frame t has value t.
  out = bt_rnn.video_frames(video, 4, 2, 3)
  assert out.shape == (4, 2 * 3 * 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[:, 0], [0, 3, 6, 9])
  short = bt_rnn.video_frames(video[:2], 4, 4, 6)  # Frames repeat; same size keeps pixels.
  np.testing.assert_array_equal(short[:, 0], [0, 0, 1, 1])
  np.testing.assert_array_equal(short[0].reshape(4, 6, 3), video[0])
  with pytest.raises(ValueError, match="video must have shape"):
    bt_rnn.video_frames(video[0], 4, 2, 3)


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
  # Every quick model is in the compression regime the issue asks for (>= 100x, bias included).
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
  flat = bt_rnn.SequenceClassifier(**{f: getattr(model, f) for f in (
      "cell", "hidden", "num_classes", "input_factors", "hidden_factors", "tucker_rank",
      "num_blocks", "optimize")})
  np.testing.assert_allclose(flat.apply(variables, x.reshape(2, 2, 784)), logits, rtol=1e-6)
  counts = bt_rnn.param_counts(variables["params"])
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
