"""Tests of the Block-Term / Tensor-Train layers and cells (`fastnets.nn.tensor_layers`) and the
BT-RNN sequence classifier (`fastnets.models.bt_rnn`)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fastnets.models.bt_rnn import SequenceClassifier, param_counts
from fastnets.nn import tensor_layers as tl
from fastnets.ops import block_term, tensor_train
from tests.tensor_cases import (
  BT_CASES,
  TT_CASES,
  param_size,
  randn,
  variable_shapes,
)


@pytest.mark.parametrize("in_f,out_f,rank,blocks", BT_CASES)
def test_bt_num_params(in_f, out_f, rank, blocks):
  n = block_term.bt_num_params(in_f, out_f, rank, blocks)
  assert n == param_size(jax.eval_shape(
      lambda k: block_term.bt_init(k, in_f, out_f, rank, blocks), jax.random.key(0)))
  x = jnp.ones((1, math.prod(in_f)))
  with_bias = variable_shapes(tl.BTLinear(in_f, out_f, rank, blocks), x)
  assert param_size(with_bias) == n + math.prod(out_f)
  assert param_size(variable_shapes(tl.BTLinear(in_f, out_f, rank, blocks, use_bias=False), x)) == n


@pytest.mark.parametrize("in_f,out_f,ranks", TT_CASES)
def test_tt_num_params(in_f, out_f, ranks):
  n = tensor_train.tt_num_params(in_f, out_f, ranks)
  assert n == param_size(jax.eval_shape(lambda k: tensor_train.tt_init(k, in_f, out_f, ranks),
                                   jax.random.key(0)))
  x = jnp.ones((1, math.prod(in_f)))
  assert param_size(variable_shapes(tl.TTLinear(in_f, out_f, ranks), x)) == n + math.prod(out_f)


def test_cell_input_params_and_classifier_counts():
  cell = tl.BTLSTMCell(16, input_factors=(4, 7, 4, 7), hidden_factors=(2, 2, 2, 2),
                       tucker_rank=2, num_blocks=3)
  x = jnp.ones((2, 784))
  params = variable_shapes(cell, cell.initialize_carry(jax.random.key(0), x.shape), x)
  expected = block_term.bt_num_params((4, 7, 4, 7), (8, 2, 2, 2), 2, 3) + 64
  assert param_size(params["params"]["input_map"]) == expected
  model = SequenceClassifier(cell="bt_lstm", hidden=16, hidden_factors=(2, 2, 2, 2),
                             input_factors=(4, 7, 4, 7), num_blocks=3)
  counts = param_counts(variable_shapes(model, jnp.ones((2, 3, 784))))
  assert counts["input_params"] == expected
  assert counts["total_params"] == expected + 16 * 64 + 16 * 10 + 10
  dense = SequenceClassifier(cell="lstm", hidden=16)
  dc = param_counts(variable_shapes(dense, jnp.ones((2, 3, 784))))
  assert dc["input_params"] == 784 * 64 + 64
  # The fastnets target: >= 100x fewer input-to-hidden weights (one block, rank 2).
  assert 784 * 64 / block_term.bt_num_params((4, 7, 4, 7), (8, 2, 2, 2), 2, 1) > 100


def test_bt_lstm_cell_grads():
  with jax.enable_x64(True):
    cell = tl.BTLSTMCell(4, input_factors=(2, 3), hidden_factors=(2, 2), param_dtype=jnp.float64)
    x = jnp.asarray(np.random.default_rng(10).standard_normal((2, 6)))
    carry = cell.initialize_carry(jax.random.key(0), x.shape)
    params = jax.jit(cell.init)(jax.random.key(11), carry, x)
    f = jax.jit(lambda p, x: cell.apply(p, carry, x)[1])
    check_grads(f, (params, x), order=1, modes=["rev"])


def test_bt_linear_dense_kernel_and_bias():
  with jax.enable_x64(True):
    layer = tl.BTLinear((2, 3, 4), (2, 2, 3), tucker_rank=2, num_blocks=2,
                        bias_init=nn.initializers.normal(1.0), param_dtype=jnp.float64)
    x = randn(0, (5, 24))
    v = _randomize(jax.eval_shape(layer.init, jax.random.key(1), x))
    y, w = jax.jit(lambda v: (layer.apply(v, x), layer.apply(v, method="dense_kernel")))(v)
    assert w.shape == (24, 12)
    np.testing.assert_allclose(y, x @ w + v["params"]["bias"], rtol=1e-11, atol=1e-12)


def test_tt_linear_dense_kernel():
  with jax.enable_x64(True):
    layer = tl.TTLinear((2, 3, 4), (2, 2, 3), tt_ranks=(2, 3), param_dtype=jnp.float64)
    x = randn(0, (5, 24))
    v = _randomize(jax.eval_shape(layer.init, jax.random.key(1), x))
    y, w = jax.jit(lambda v: (layer.apply(v, x), layer.apply(v, method="dense_kernel")))(v)
    np.testing.assert_allclose(y, x @ w + v["params"]["bias"], rtol=1e-11)


@pytest.mark.parametrize("layer", [
    tl.BTLinear((4, 8, 8), (4, 4, 4), tucker_rank=3, num_blocks=2),
    tl.TTLinear((4, 8, 8), (4, 4, 4), tt_ranks=4),
    tl.BTLinear((4, 8, 8), (4, 4, 4), tucker_rank=1, exact_init_norm=False),
])
def test_init_is_variance_preserving(layer):
  # mean(W^2) = 1 / I as a LeCun-normal dense layer: exactly for every seed with
  # exact_init_norm (the default), only in expectation without it (then a rank-1 W's scale is
  # its single core entry's, which varies a lot between seeds).
  x = randn(99, (256, 256))

  @jax.jit
  def stats(key):
    v = layer.init(key, x[:1])
    return (jnp.mean(layer.apply(v, method="dense_kernel") ** 2) * 256,
            jnp.var(layer.apply(v, x)))

  w_ratio, y_var = np.array([stats(jax.random.key(seed)) for seed in range(6)]).T
  if layer.exact_init_norm:
    np.testing.assert_allclose(w_ratio, 1.0, rtol=1e-4)
    assert 0.7 < np.mean(y_var) < 1.3, y_var
  else:
    assert np.ptp(np.log(w_ratio)) > 0.5, w_ratio


def test_float32_and_bfloat16_dtypes():
  layer = tl.BTLinear((4, 4), (2, 8), dtype=jnp.bfloat16)
  x = jnp.ones((3, 16), jnp.float32)
  v = jax.eval_shape(layer.init, jax.random.key(0), x)
  assert v["params"]["core"].dtype == jnp.float32
  assert jax.eval_shape(layer.apply, v, x).dtype == jnp.bfloat16


def _randomize(tree, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda l: jnp.asarray(0.3 * rng.standard_normal(l.shape), l.dtype), tree)


def test_dense_lstm_cell_equals_flax_lstm_cell():
  x = randn(0, (3, 5, 7))
  ref = nn.RNN(nn.LSTMCell(6))
  rp = _randomize(jax.eval_shape(ref.init, jax.random.key(1), x))["params"]["cell"]
  gates = ["i", "f", "g", "o"]
  ours_p = {"input_map": {
      "kernel": jnp.concatenate([rp["i" + g]["kernel"] for g in gates], 1),
      "bias": jnp.concatenate([rp["h" + g]["bias"] for g in gates])},
      "recurrent": {"kernel": jnp.concatenate([rp["h" + g]["kernel"] for g in gates], 1)}}
  ours = nn.RNN(tl.DenseLSTMCell(6))
  y_ref, y = jax.jit(lambda rp, op: (ref.apply({"params": {"cell": rp}}, x),
                                     ours.apply({"params": {"cell": op}}, x)))(rp, ours_p)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)


def test_dense_gru_cell_equals_flax_gru_cell():
  x = randn(0, (3, 5, 7))
  ref = nn.RNN(nn.GRUCell(6))
  rp = _randomize(jax.eval_shape(ref.init, jax.random.key(1), x))["params"]["cell"]
  gates = ["r", "z", "n"]
  ours_p = {"input_map": {
      "kernel": jnp.concatenate([rp["i" + g]["kernel"] for g in gates], 1),
      "bias": jnp.concatenate([rp["i" + g]["bias"] for g in gates])},
      "recurrent": {"kernel": jnp.concatenate([rp["h" + g]["kernel"] for g in gates], 1)},
      "hidden_bias_n": rp["hn"]["bias"]}
  ours = nn.RNN(tl.DenseGRUCell(6))
  y_ref, y = jax.jit(lambda rp, op: (ref.apply({"params": {"cell": rp}}, x),
                                     ours.apply({"params": {"cell": op}}, x)))(rp, ours_p)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell,dense_cls", [
    (tl.BTLSTMCell(8, input_factors=(2, 3, 4), hidden_factors=(2, 2, 2), tucker_rank=2,
                   num_blocks=2), tl.DenseLSTMCell),
    (tl.TTLSTMCell(8, input_factors=(2, 3, 4), hidden_factors=(2, 2, 2), tt_ranks=3),
     tl.DenseLSTMCell),
    (tl.BTGRUCell(8, input_factors=(2, 3, 4), tucker_rank=2), tl.DenseGRUCell),
    (tl.TTGRUCell(8, input_factors=(2, 3, 4), tt_ranks=2), tl.DenseGRUCell),
])
def test_tensor_cells_equal_dense_cell_with_materialised_kernel(cell, dense_cls):
  x = randn(0, (2, 4, 24))
  rnn = nn.RNN(cell)
  v = _randomize(jax.eval_shape(rnn.init, jax.random.key(1), x))
  out_f = (cell.num_gates * 2, 2, 2)  # Gates folded into the first output mode.
  if isinstance(cell, (tl.BTLSTMCell, tl.BTGRUCell)):
    lin = tl.BTLinear((2, 3, 4), out_f, cell.tucker_rank, cell.num_blocks)
  else:
    lin = tl.TTLinear((2, 3, 4), out_f, cell.tt_ranks)

  @jax.jit
  def both(v):
    cp = v["params"]["cell"]
    w = lin.apply({"params": cp["input_map"]}, method="dense_kernel")
    dense_p = dict(cp, input_map={"kernel": w, "bias": cp["input_map"]["bias"]})
    return rnn.apply(v, x), nn.RNN(dense_cls(8)).apply({"params": {"cell": dense_p}}, x)

  y, y_dense = both(v)
  assert y.shape == (2, 4, 8)
  np.testing.assert_allclose(y, y_dense, rtol=1e-4, atol=1e-5)


def test_cells_under_scan_and_jit():
  cell = tl.BTLSTMCell(8, input_factors=(2, 3, 4), hidden_factors=(2, 2, 2))
  x = randn(0, (3, 5, 24))
  carry = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
  scan_cell = nn.scan(tl.BTLSTMCell, variable_broadcast="params", split_rngs={"params": False},
                      in_axes=1, out_axes=1)(8, input_factors=(2, 3, 4), hidden_factors=(2, 2, 2))
  v = jax.jit(scan_cell.init)(jax.random.key(1), carry, x)
  (c, h), ys = jax.jit(scan_cell.apply)(v, carry, x)
  assert ys.shape == (3, 5, 8) and c.shape == (3, 8)
  # The same parameters under nn.RNN (which scans the cell) give the same outputs.
  y_rnn = jax.jit(nn.RNN(cell).apply)({"params": {"cell": v["params"]}}, x)
  np.testing.assert_allclose(ys, y_rnn, rtol=1e-5, atol=1e-6)
  # A manual Python loop of single steps agrees too.
  step = jax.jit(lambda carry, xt: cell.apply(v, carry, xt))
  outs = []
  for t in range(5):
    carry, out = step(carry, x[:, t])
    outs.append(out)
  np.testing.assert_allclose(ys, jnp.stack(outs, 1), rtol=1e-5, atol=1e-6)
  assert cell.num_feature_axes == 1


@pytest.mark.parametrize("cell", ["lstm", "gru", "tt_lstm", "tt_gru", "bt_lstm", "bt_gru"])
def test_classifier_hoisted_equals_per_step(cell):
  x = randn(0, (2, 3, 24))
  m = SequenceClassifier(cell=cell, hidden=8, num_classes=5, input_factors=(2, 3, 4),
                         hidden_factors=(2, 2, 2))
  per_step = m.clone(hoist_input_projection=False)
  shapes = jax.eval_shape(m.init, jax.random.key(1), x)
  assert jax.tree.structure(jax.eval_shape(per_step.init, jax.random.key(1), x)) == (
      jax.tree.structure(shapes))
  v = _randomize(shapes)
  y, y_per_step = jax.jit(lambda v: (m.apply(v, x), per_step.apply(v, x)))(v)
  assert y.shape == (2, 5) and y.dtype == jnp.float32
  np.testing.assert_allclose(y_per_step, y, rtol=1e-5, atol=1e-6)


def test_classifier_default_factors_and_dropout():
  m = SequenceClassifier(cell="bt_lstm", hidden=16, num_classes=3, dropout_rate=0.5)
  x = jnp.ones((2, 4, 784))
  v = _randomize(jax.eval_shape(m.init, jax.random.key(0), x))
  # 784 -> balanced (4, 4, 7, 7); 16 -> (2, 2, 2, 2), first mode times 4 gates.
  assert v["params"]["rnn_cell"]["input_map"]["factor_0"].shape == (1, 4, 4 * 2, 2)
  y_eval, y_train = jax.jit(lambda v: (
      m.apply(v, x), m.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)})))(v)
  assert y_train.shape == y_eval.shape == (2, 3)
  assert not np.allclose(y_train, y_eval)


def test_classifier_learns_a_tiny_task():
  # Label = sign of the mean of the first frame: a BT-LSTM must fit it in a few Adam steps.
  import optax
  rng = np.random.default_rng(0)
  x = rng.standard_normal((64, 3, 16)).astype(np.float32)
  y = (x[:, 0].mean(-1) > 0).astype(np.int32)
  m = SequenceClassifier(cell="bt_lstm", hidden=8, num_classes=2, input_factors=(4, 4),
                         hidden_factors=(2, 4), tucker_rank=2, num_blocks=2)
  params = jax.jit(m.init)(jax.random.key(0), x)["params"]
  tx = optax.adam(3e-2)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    def loss_fn(p):
      logits = m.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, g = jax.value_and_grad(loss_fn)(params)
    upd, opt = tx.update(g, opt)
    return optax.apply_updates(params, upd), opt, loss

  first = None
  for _ in range(40):
    params, opt, loss = step(params, opt)
    first = loss if first is None else first
  assert float(loss) < 0.5 * float(first)


def test_bad_factorizations_rejected():
  x = jnp.ones((2, 24))
  with pytest.raises(ValueError, match=r"input_factors=\(2, 3, 5\) multiply to 30.*24"):
    jax.eval_shape(tl.BTLinear((2, 3, 5), (2, 2, 2)).init, jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"input_factors.*multiply to 30.*24"):
    jax.eval_shape(tl.TTLinear((2, 3, 5), (2, 2, 2)).init, jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"hidden_factors=\(2, 3\) multiply to 6, but features"):
    cell = tl.BTLSTMCell(8, input_factors=(4, 6), hidden_factors=(2, 3))
    jax.eval_shape(cell.init, jax.random.key(0), (x, x), x)
  with pytest.raises(ValueError, match=r"input_factors.*multiply to 30, but the frame size"):
    jax.eval_shape(SequenceClassifier(cell="bt_lstm", hidden=8, input_factors=(2, 3, 5)).init,
                   jax.random.key(0), jnp.ones((2, 3, 24)))
  with pytest.raises(ValueError, match=r"hidden_factors.*multiply to 6, but hidden is 8"):
    jax.eval_shape(SequenceClassifier(cell="tt_lstm", hidden=8, input_factors=(4, 6),
                                      hidden_factors=(2, 3)).init,
                   jax.random.key(0), jnp.ones((2, 3, 24)))
  with pytest.raises(ValueError, match="input_factors must contain positive ints"):
    block_term.bt_num_params((2, 0), (2, 2), 2, 1)
  with pytest.raises(TypeError, match="output_factors must contain ints"):
    block_term.bt_num_params((2, 2), (2, 2.0), 2, 1)
  with pytest.raises(ValueError, match="same number of modes"):
    tensor_train.tt_num_params((2, 2), (4,), 2)
  with pytest.raises(ValueError, match="rank must be an int or a sequence of 2"):
    block_term.bt_num_params((2, 2), (2, 2), (1, 2, 3), 1)
  with pytest.raises(ValueError, match="tt_ranks must be an int, a sequence of N-1 = 1"):
    tensor_train.tt_num_params((2, 2), (2, 2), (1, 2, 3))


def test_bad_arrays_rejected():
  factors, cores = block_term.bt_init(jax.random.key(0), (2, 3), (2, 2), 2, 1)
  with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., I\) with I .* = 6"):
    block_term.bt_matmul(jnp.ones((2, 5)), factors, cores)
  with pytest.raises(TypeError, match="x must be a floating-point"):
    block_term.bt_matmul(jnp.ones((2, 6), jnp.int32), factors, cores)
  with pytest.raises(ValueError, match=r"cores must have shape \(C, R_1, \.\.\., R_N\)"):
    block_term.bt_matmul(jnp.ones((2, 6)), factors, cores[:, :1])
  with pytest.raises(ValueError, match="same number of blocks"):
    block_term.bt_dense([factors[0], jnp.concatenate([factors[1]] * 2)], cores)
  tt = tensor_train.tt_init(jax.random.key(0), (2, 3), (2, 2), 2)
  with pytest.raises(ValueError, match=r"cores\[0\]\.shape\[3\] = 2 must equal cores\[1\]"):
    tensor_train.tt_matmul(jnp.ones((2, 6)), [tt[0], tt[1][:1]])
  with pytest.raises(ValueError, match="boundary ranks must be 1"):
    tensor_train.tt_dense([jnp.ones((2, 2, 2, 1))])
  with pytest.raises(ValueError, match="optimize must be one of"):
    block_term.bt_matmul(jnp.ones((2, 6)), factors, cores, optimize="fastest")
  with pytest.raises(ValueError, match="not a valid contraction path"):
    block_term.bt_matmul(jnp.ones((2, 6)), factors, cores, optimize=[(0, 7)])
  with pytest.raises(ValueError, match="cell must be one of"):
    jax.eval_shape(SequenceClassifier(cell="bt_rnn").init, jax.random.key(0),
                   jnp.ones((1, 2, 16)))
  with pytest.raises(ValueError, match=r"x must have shape \(batch, time, features\)"):
    jax.eval_shape(SequenceClassifier().init, jax.random.key(0), jnp.ones((1, 16)))
