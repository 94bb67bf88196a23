"""Tests of the Block-Term / Tensor-Train formats, layers, cells and the BT-RNN classifier."""

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from fastnets.models.bt_rnn import SequenceClassifier, param_counts
from fastnets.nn import tensor_layers as tl
from fastnets.ops import tensor_formats


def _size(tree) -> int:
  return sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(tree))


def _shapes(module, *args):
  """Variables' shapes without running anything (jax.eval_shape: no compilation)."""
  return jax.eval_shape(module.init, jax.random.key(0), *args)


def _randn(seed, shape):
  """Standard normal array from numpy (float64 under enable_x64, else float32)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _np_bt(seed, in_f, out_f, rank, blocks):
  """Random float64 BT parameters from numpy (no compilation, unlike jax.random eagerly)."""
  rng = np.random.default_rng(seed)
  f_shapes, c_shape = tensor_formats.bt_shapes(in_f, out_f, rank, blocks)
  return ([jnp.asarray(rng.standard_normal(s) / math.sqrt(s[1] * s[3])) for s in f_shapes],
          jnp.asarray(rng.standard_normal(c_shape)))


def _np_tt(seed, in_f, out_f, ranks):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal(s) / math.sqrt(s[1] * s[3]))
          for s in tensor_formats.tt_shapes(in_f, out_f, ranks)]


# ------------------------------------------------------------------------------------------
# Independent references: W as a sum of Kronecker products (numpy, no einsum subscripts).


def _bt_reference(factors, cores) -> np.ndarray:
  factors = [np.asarray(f) for f in factors]
  cores = np.asarray(cores)
  c_blocks = cores.shape[0]
  w = 0.0
  for c in range(c_blocks):
    for r in itertools.product(*[range(s) for s in cores.shape[1:]]):
      term = np.ones((1, 1))
      for n, f in enumerate(factors):
        term = np.kron(term, f[c, :, :, r[n]])
      w = w + cores[(c,) + r] * term
  return w


def _tt_reference(cores) -> np.ndarray:
  cores = [np.asarray(g) for g in cores]
  ranks = [g.shape[3] for g in cores[:-1]]
  w = 0.0
  for alpha in itertools.product(*[range(r) for r in ranks]):
    a = (0,) + alpha + (0,)
    term = np.ones((1, 1))
    for n, g in enumerate(cores):
      term = np.kron(term, g[a[n], :, :, a[n + 1]])
    w = w + term
  return w


BT_CASES = [
    # input_factors, output_factors, rank, num_blocks
    ((6,), (5,), 3, 2),
    ((2, 3), (3, 2), 2, 1),
    ((2, 3, 4), (3, 2, 2), 2, 3),
    ((2, 3, 4), (4, 1, 2), (1, 2, 3), 2),
    ((3, 2, 2, 2), (2, 2, 2, 3), 2, 2),
]
TT_CASES = [
    ((6,), (5,), 1),
    ((2, 3), (3, 2), 3),
    ((2, 3, 4), (3, 2, 2), (3, 2)),
    ((3, 2, 2, 2), (2, 2, 2, 3), (1, 2, 3, 2, 1)),
]


# ------------------------------------------------------------------------------------------
# ops: x W against the dense W (float64).


@pytest.mark.parametrize("in_f,out_f,rank,blocks", BT_CASES)
def test_bt_matmul_matches_dense(in_f, out_f, rank, blocks):
  with jax.enable_x64(True):
    factors, cores = _np_bt(0, in_f, out_f, rank, blocks)
    w = tensor_formats.bt_dense(factors, cores)
    np.testing.assert_allclose(w, _bt_reference(factors, cores), rtol=1e-12, atol=1e-12)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, math.prod(in_f))))
    y = tensor_formats.bt_matmul(x, factors, cores)
    assert y.shape == (2, 3, math.prod(out_f)) and y.dtype == jnp.float64
    np.testing.assert_allclose(y, x @ w, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("in_f,out_f,ranks", TT_CASES)
def test_tt_matmul_matches_dense(in_f, out_f, ranks):
  with jax.enable_x64(True):
    cores = _np_tt(1, in_f, out_f, ranks)
    w = tensor_formats.tt_dense(cores)
    np.testing.assert_allclose(w, _tt_reference(cores), rtol=1e-12, atol=1e-12)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, math.prod(in_f))))
    np.testing.assert_allclose(tensor_formats.tt_matmul(x, cores), x @ w, rtol=1e-11, atol=1e-12)


@settings(max_examples=8, deadline=None)
@given(in_f=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       out_seed=st.integers(0, 10_000), rank=st.integers(1, 3), blocks=st.integers(1, 3),
       batch=st.integers(1, 5))
def test_bt_matmul_property(in_f, out_seed, rank, blocks, batch):
  rng = np.random.default_rng(out_seed)
  out_f = tuple(int(v) for v in rng.integers(1, 4, len(in_f)))
  with jax.enable_x64(True):
    factors, cores = _np_bt(out_seed, in_f, out_f, rank, blocks)
    x = jnp.asarray(rng.standard_normal((batch, math.prod(in_f))))
    w = _bt_reference(factors, cores)
    np.testing.assert_allclose(tensor_formats.bt_matmul(x, factors, cores), x @ w,
                               rtol=1e-10, atol=1e-11)
    # Linear in x.
    x2 = jnp.asarray(rng.standard_normal(x.shape))
    np.testing.assert_allclose(tensor_formats.bt_matmul(2 * x - x2, factors, cores),
                               2 * tensor_formats.bt_matmul(x, factors, cores)
                               - tensor_formats.bt_matmul(x2, factors, cores),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("optimize", ["optimal", "size", "dp", "greedy", "left_to_right"])
def test_strategies_agree(optimize):
  with jax.enable_x64(True):
    in_f, out_f = (2, 3, 4), (3, 2, 2)
    factors, cores = _np_bt(2, in_f, out_f, 2, 2)
    tt = _np_tt(3, in_f, out_f, 3)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((5, 24)))
    np.testing.assert_allclose(tensor_formats.bt_matmul(x, factors, cores, optimize=optimize),
                               x @ tensor_formats.bt_dense(factors, cores), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(tensor_formats.tt_matmul(x, tt, optimize=optimize),
                               x @ tensor_formats.tt_dense(tt),
                               rtol=1e-11, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Parameter counts.


@pytest.mark.parametrize("in_f,out_f,rank,blocks", BT_CASES)
def test_bt_num_params(in_f, out_f, rank, blocks):
  n = tensor_formats.bt_num_params(in_f, out_f, rank, blocks)
  assert n == _size(jax.eval_shape(
      lambda k: tensor_formats.bt_init(k, in_f, out_f, rank, blocks), jax.random.key(0)))
  x = jnp.ones((1, math.prod(in_f)))
  assert _size(_shapes(tl.BTLinear(in_f, out_f, rank, blocks), x)) == n + math.prod(out_f)
  assert _size(_shapes(tl.BTLinear(in_f, out_f, rank, blocks, use_bias=False), x)) == n


def test_bt_num_params_formula_by_hand():
  # The paper's UCF11 shapes: 57600 = 8x20x20x18 -> 256 = 4x4x4x4, R = 2, C = 2.
  # C (sum_n I_n J_n R + R^N) = 2 * ((32 + 80 + 80 + 72) * 2 + 16) = 1088.
  assert tensor_formats.bt_num_params((8, 20, 20, 18), (4, 4, 4, 4), 2, 2) == 1088
  # TT, ranks (1, 3, 3, 3, 1): 1*8*4*3 + 3*20*4*3 + 3*20*4*3 + 3*18*4*1 = 96+720+720+216.
  assert tensor_formats.tt_num_params((8, 20, 20, 18), (4, 4, 4, 4), 3) == 1752


@pytest.mark.parametrize("in_f,out_f,ranks", TT_CASES)
def test_tt_num_params(in_f, out_f, ranks):
  n = tensor_formats.tt_num_params(in_f, out_f, ranks)
  assert n == _size(jax.eval_shape(lambda k: tensor_formats.tt_init(k, in_f, out_f, ranks),
                                   jax.random.key(0)))
  x = jnp.ones((1, math.prod(in_f)))
  assert _size(_shapes(tl.TTLinear(in_f, out_f, ranks), x)) == n + math.prod(out_f)


def test_cell_input_params_and_classifier_counts():
  cell = tl.BTLSTMCell(16, input_factors=(4, 7, 4, 7), hidden_factors=(2, 2, 2, 2),
                       tucker_rank=2, num_blocks=3)
  x = jnp.ones((2, 784))
  params = _shapes(cell, cell.initialize_carry(jax.random.key(0), x.shape), x)
  expected = tensor_formats.bt_num_params((4, 7, 4, 7), (8, 2, 2, 2), 2, 3) + 64
  assert _size(params["params"]["input_map"]) == expected
  model = SequenceClassifier(cell="bt_lstm", hidden=16, hidden_factors=(2, 2, 2, 2),
                             input_factors=(4, 7, 4, 7), num_blocks=3)
  counts = param_counts(_shapes(model, jnp.ones((2, 3, 784))))
  assert counts["input_params"] == expected
  assert counts["total_params"] == expected + 16 * 64 + 16 * 10 + 10
  dense = SequenceClassifier(cell="lstm", hidden=16)
  dc = param_counts(_shapes(dense, jnp.ones((2, 3, 784))))
  assert dc["input_params"] == 784 * 64 + 64
  # The target: >= 100x fewer input-to-hidden weights (one block, rank 2).
  assert 784 * 64 / tensor_formats.bt_num_params((4, 7, 4, 7), (8, 2, 2, 2), 2, 1) > 100


# ------------------------------------------------------------------------------------------
# Gradients (float64).


def test_bt_matmul_grads():
  with jax.enable_x64(True):
    factors, cores = _np_bt(5, (2, 3), (2, 2), 2, 2)
    x = jnp.asarray(np.random.default_rng(6).standard_normal((3, 6)))
    f = jax.jit(lambda x, factors, cores: tensor_formats.bt_matmul(x, factors, cores))
    check_grads(f, (x, factors, cores), order=1, modes=["rev"])
    # Against autodiff of x @ W with W materialised.
    g = jnp.asarray(np.random.default_rng(7).standard_normal((3, 4)))
    ours, ref = jax.jit(lambda *a: (
        jax.grad(lambda *a: jnp.sum(f(*a) * g), argnums=(0, 1, 2))(*a),
        jax.grad(lambda x, fs, c: jnp.sum((x @ tensor_formats.bt_dense(fs, c)) * g),
                 argnums=(0, 1, 2))(*a)
    ))(x, factors, cores)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12), ours,
                 ref)


def test_tt_matmul_grads():
  with jax.enable_x64(True):
    cores = _np_tt(8, (2, 3, 2), (2, 1, 2), 2)
    x = jnp.asarray(np.random.default_rng(9).standard_normal((3, 12)))
    check_grads(jax.jit(lambda x, c: tensor_formats.tt_matmul(x, c)), (x, cores), order=1,
                modes=["rev"])


def test_bt_lstm_cell_grads():
  with jax.enable_x64(True):
    cell = tl.BTLSTMCell(4, input_factors=(2, 3), hidden_factors=(2, 2), param_dtype=jnp.float64)
    x = jnp.asarray(np.random.default_rng(10).standard_normal((2, 6)))
    carry = cell.initialize_carry(jax.random.key(0), x.shape)
    params = jax.jit(cell.init)(jax.random.key(11), carry, x)
    f = jax.jit(lambda p, x: cell.apply(p, carry, x)[1])
    check_grads(f, (params, x), order=1, modes=["rev"])


# ------------------------------------------------------------------------------------------
# Layers.


def test_bt_linear_dense_kernel_and_bias():
  with jax.enable_x64(True):
    layer = tl.BTLinear((2, 3, 4), (2, 2, 3), tucker_rank=2, num_blocks=2,
                        bias_init=nn.initializers.normal(1.0), param_dtype=jnp.float64)
    x = _randn(0, (5, 24))
    v = _randomize(jax.eval_shape(layer.init, jax.random.key(1), x))
    y, w = jax.jit(lambda v: (layer.apply(v, x), layer.apply(v, method="dense_kernel")))(v)
    assert w.shape == (24, 12)
    np.testing.assert_allclose(y, x @ w + v["params"]["bias"], rtol=1e-11, atol=1e-12)


def test_tt_linear_dense_kernel():
  with jax.enable_x64(True):
    layer = tl.TTLinear((2, 3, 4), (2, 2, 3), tt_ranks=(2, 3), param_dtype=jnp.float64)
    x = _randn(0, (5, 24))
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
  x = _randn(99, (256, 256))

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


@pytest.mark.parametrize("in_f,out_f,rank,blocks", BT_CASES)
def test_bt_sqnorm_matches_dense(in_f, out_f, rank, blocks):
  with jax.enable_x64(True):
    factors, cores = _np_bt(5, in_f, out_f, rank, blocks)
    w = _bt_reference(factors, cores)
    np.testing.assert_allclose(tensor_formats.bt_sqnorm(factors, cores), np.sum(w ** 2), rtol=1e-11)
    rescaled = tensor_formats.bt_rescale_to_norm(factors, cores, scale=0.5)
    w2 = np.asarray(tensor_formats.bt_dense(factors, rescaled))
    np.testing.assert_allclose(np.mean(w2 ** 2) * math.prod(in_f), 0.5, rtol=1e-11)


@pytest.mark.parametrize("in_f,out_f,ranks", TT_CASES)
def test_tt_sqnorm_matches_dense(in_f, out_f, ranks):
  with jax.enable_x64(True):
    cores = _np_tt(6, in_f, out_f, ranks)
    np.testing.assert_allclose(tensor_formats.tt_sqnorm(cores), np.sum(_tt_reference(cores) ** 2),
                               rtol=1e-11)
    last = tensor_formats.tt_rescale_to_norm(cores, scale=2.0)
    w2 = np.asarray(tensor_formats.tt_dense(cores[:-1] + [last]))
    np.testing.assert_allclose(np.mean(w2 ** 2) * math.prod(in_f), 2.0, rtol=1e-11)


def test_exact_init_norm_ops_every_seed():
  # With one Tucker rank the single core entry scales all of W: without the rescaling the
  # realised mean square varies by orders of magnitude between seeds; with it, it is scale / I.
  in_f, out_f = (4, 7, 4, 7), (8, 4, 2, 4)
  for exact in (True, False):
    ratios = np.array([
        float(tensor_formats.bt_sqnorm(*tensor_formats.bt_init(
            jax.random.key(s), in_f, out_f, 1, 1, scale=2.0, exact_norm=exact))) / 256
        for s in range(6)])
    if exact:
      np.testing.assert_allclose(ratios, 2.0, rtol=1e-4)
    else:
      assert np.ptp(np.log(ratios)) > 0.5, ratios
  tt = tensor_formats.tt_init(jax.random.key(3), in_f, out_f, 2, scale=2.0)
  np.testing.assert_allclose(float(tensor_formats.tt_sqnorm(tt)) / 256, 2.0, rtol=1e-4)


def test_float32_and_bfloat16_dtypes():
  layer = tl.BTLinear((4, 4), (2, 8), dtype=jnp.bfloat16)
  x = jnp.ones((3, 16), jnp.float32)
  v = jax.eval_shape(layer.init, jax.random.key(0), x)
  assert v["params"]["core"].dtype == jnp.float32
  assert jax.eval_shape(layer.apply, v, x).dtype == jnp.bfloat16


# ------------------------------------------------------------------------------------------
# Cells: flax equivalence, BT/TT = dense with the materialised kernel, nn.RNN / nn.scan / jit.


def _randomize(tree, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda l: jnp.asarray(0.3 * rng.standard_normal(l.shape), l.dtype), tree)


def test_dense_lstm_cell_equals_flax_lstm_cell():
  x = _randn(0, (3, 5, 7))
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
  x = _randn(0, (3, 5, 7))
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
  x = _randn(0, (2, 4, 24))
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
  x = _randn(0, (3, 5, 24))
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


# ------------------------------------------------------------------------------------------
# The sequence classifier.


@pytest.mark.parametrize("cell", ["lstm", "gru", "tt_lstm", "tt_gru", "bt_lstm", "bt_gru"])
def test_classifier_hoisted_equals_per_step(cell):
  x = _randn(0, (2, 3, 24))
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


# ------------------------------------------------------------------------------------------
# Bad input.


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
    tensor_formats.bt_num_params((2, 0), (2, 2), 2, 1)
  with pytest.raises(TypeError, match="output_factors must contain ints"):
    tensor_formats.bt_num_params((2, 2), (2, 2.0), 2, 1)
  with pytest.raises(ValueError, match="same number of modes"):
    tensor_formats.tt_num_params((2, 2), (4,), 2)
  with pytest.raises(ValueError, match="rank must be an int or a sequence of 2"):
    tensor_formats.bt_num_params((2, 2), (2, 2), (1, 2, 3), 1)
  with pytest.raises(ValueError, match="tt_ranks must be an int, a sequence of N-1 = 1"):
    tensor_formats.tt_num_params((2, 2), (2, 2), (1, 2, 3))


def test_bad_arrays_rejected():
  factors, cores = tensor_formats.bt_init(jax.random.key(0), (2, 3), (2, 2), 2, 1)
  with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., I\) with I .* = 6"):
    tensor_formats.bt_matmul(jnp.ones((2, 5)), factors, cores)
  with pytest.raises(TypeError, match="x must be a floating-point"):
    tensor_formats.bt_matmul(jnp.ones((2, 6), jnp.int32), factors, cores)
  with pytest.raises(ValueError, match=r"cores must have shape \(C, R_1, \.\.\., R_N\)"):
    tensor_formats.bt_matmul(jnp.ones((2, 6)), factors, cores[:, :1])
  with pytest.raises(ValueError, match="same number of blocks"):
    tensor_formats.bt_dense([factors[0], jnp.concatenate([factors[1]] * 2)], cores)
  tt = tensor_formats.tt_init(jax.random.key(0), (2, 3), (2, 2), 2)
  with pytest.raises(ValueError, match=r"cores\[0\]\.shape\[3\] = 2 must equal cores\[1\]"):
    tensor_formats.tt_matmul(jnp.ones((2, 6)), [tt[0], tt[1][:1]])
  with pytest.raises(ValueError, match="boundary ranks must be 1"):
    tensor_formats.tt_dense([jnp.ones((2, 2, 2, 1))])
  with pytest.raises(ValueError, match="optimize must be one of"):
    tensor_formats.bt_matmul(jnp.ones((2, 6)), factors, cores, optimize="fastest")
  with pytest.raises(ValueError, match="not a valid contraction path"):
    tensor_formats.bt_matmul(jnp.ones((2, 6)), factors, cores, optimize=[(0, 7)])
  with pytest.raises(ValueError, match="cell must be one of"):
    jax.eval_shape(SequenceClassifier(cell="bt_rnn").init, jax.random.key(0),
                   jnp.ones((1, 2, 16)))
  with pytest.raises(ValueError, match=r"x must have shape \(batch, time, features\)"):
    jax.eval_shape(SequenceClassifier().init, jax.random.key(0), jnp.ones((1, 16)))


# ------------------------------------------------------------------------------------------
# Contraction order.


def _all_paths(n):
  if n == 1:
    yield ()
    return
  for i, j in itertools.combinations(range(n), 2):
    for rest in _all_paths(n - 1):
      yield ((i, j),) + rest


@pytest.mark.parametrize("batch,in_f,out_f,rank,blocks", [
    (1, (4, 7), (16, 8), 2, 1),
    (32, (4, 7, 28), (16, 4, 4), 2, 2),
    (256, (8, 8, 8), (4, 8, 8), 3, 1),
])
def test_optimal_order_is_the_fewest_flops(batch, in_f, out_f, rank, blocks):
  plan = tensor_formats.bt_matmul_flops(batch, in_f, out_f, rank, blocks)
  f_shapes, c_shape = tensor_formats.bt_shapes(in_f, out_f, rank, blocks)
  shapes = [(batch,) + in_f] + f_shapes + [c_shape]
  brute = min(tensor_formats.einsum_path_flops(plan.subscripts, shapes, p)[0]
              for p in _all_paths(len(shapes)))
  assert plan.flops == brute
  # Our independent FLOP count agrees with opt_einsum's on the chosen path.
  _, info = opt_einsum.contract_path(plan.subscripts, *shapes, shapes=True,
                                     optimize=list(plan.path))
  assert plan.flops == info.opt_cost
  for other in ["left_to_right", "greedy", "size"]:
    other_plan = tensor_formats.bt_matmul_flops(batch, in_f, out_f, rank, blocks, other)
    assert other_plan.flops >= plan.flops
  assert plan.dense_flops == 2 * batch * math.prod(in_f) * math.prod(out_f)


def test_flops_sanity_for_the_paper_sizes():
  # 784 -> 4 x 256 gates (LSTM): BT with rank 2 is far cheaper than the dense product.
  plan = tensor_formats.bt_matmul_flops(256, (4, 7, 4, 7), (16, 4, 4, 4), 2, 1)
  assert plan.flops * 10 < plan.dense_flops
  naive = tensor_formats.bt_matmul_flops(256, (4, 7, 4, 7), (16, 4, 4, 4), 2, 1, "left_to_right")
  assert plan.flops < naive.flops
  tt_plan = tensor_formats.tt_matmul_flops(256, (4, 7, 4, 7), (16, 4, 4, 4), 4)
  assert tt_plan.flops < tt_plan.dense_flops
  # The chosen path depends on the batch (cached per shape) and is deterministic.
  assert tensor_formats.bt_matmul_flops(256, (4, 7, 4, 7), (16, 4, 4, 4), 2, 1) == plan


def test_balanced_factors():
  assert tensor_formats.balanced_factors(784, 4) == (4, 4, 7, 7)
  assert tensor_formats.balanced_factors(4096, 4) == (8, 8, 8, 8)
  assert tensor_formats.balanced_factors(13, 2) == (1, 13)
  for n, k in [(256, 4), (57600, 4), (1000, 3)]:
    f = tensor_formats.balanced_factors(n, k)
    assert math.prod(f) == n and len(f) == k


# ------------------------------------------------------------------------------------------
# The benchmark runs (smoke setting).


def test_bench_smoke(tmp_path):
  from experiments import bench_bt_rnn
  cfg = dict(bench_bt_rnn.SMOKE, cells=["lstm", "bt_lstm"], tensor_optimize=["optimal"],
             workdir=str(tmp_path))
  res = bench_bt_rnn.run(cfg)
  m = res["metrics"]["d784"]
  assert m["lstm_hoisted"]["speedup_vs_lstm"] == 1.0
  assert m["bt_lstm_hoisted"]["median_ms"] > 0
  assert m["bt_lstm_hoisted"]["input_params"] < m["lstm_hoisted"]["input_params"]
  assert (tmp_path / "results.json").exists()
  assert bench_bt_rnn.report_rows(res)
