"""Tests of the sparse weight format, direct sparse convolution (XLA, Pallas), sparse inference."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax
from jax.test_util import check_grads

from fastnets import nn as fnn
from fastnets import ops
from fastnets.kernels import sparse_conv as ksc
from fastnets.ops import sparse_conv as sc
from tests.conftest import cuda_lowering_context

DN = ("NHWC", "HWIO", "NHWC")


def _pruned_kernel(rng, shape, sparsity, dtype=np.float32):
  w = rng.standard_normal(shape).astype(dtype)
  w[rng.random(shape) < sparsity] = 0
  return w


def _dense_conv(x, w, strides, padding, bias=None, relu=False):
  y = lax.conv_general_dilated(x, jnp.asarray(w), strides, padding, dimension_numbers=DN,
                               precision=lax.Precision.HIGHEST)
  if bias is not None:
    y = y + bias
  return jax.nn.relu(y) if relu else y


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ------------------------------------------------------------------------------------------------
# Format.


@settings(max_examples=6, deadline=None)
@given(kh=st.integers(1, 4), kw=st.integers(1, 4), ci=st.integers(1, 3), co=st.integers(1, 3),
       sparsity=st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]), extra=st.integers(0, 3),
       seed=st.integers(0, 2**31 - 1))
def test_format_round_trip_is_exact(kh, kw, ci, co, sparsity, extra, seed):
  rng = np.random.default_rng(seed)
  w = _pruned_kernel(rng, (kh, kw, ci, co), sparsity)
  counts = (w != 0).reshape(-1, co).sum(0)
  sk = ops.to_sparse_kernel(w, max_nnz=max(1, int(counts.max())) + extra)
  np.testing.assert_array_equal(np.asarray(sk.nnz), counts)
  assert sk.values.shape == (co, max(1, int(counts.max())) + extra)
  dense = np.asarray(ops.to_dense(sk))
  assert dense.dtype == w.dtype
  np.testing.assert_array_equal(dense, w)
  assert sk.num_nonzero() == int((w != 0).sum())
  # Coordinates point at the values they hold.
  v, r, c, i = (np.asarray(a) for a in (sk.values, sk.rows, sk.cols, sk.chans))
  for o in range(co):
    for k in range(counts[o]):
      assert w[r[o, k], c[o, k], i[o, k], o] == v[o, k] != 0


def test_format_is_a_pytree_and_jits():
  w = _pruned_kernel(np.random.default_rng(0), (3, 3, 2, 4), 0.7)
  sk = ops.to_sparse_kernel(w)
  leaves, treedef = jax.tree_util.tree_flatten(sk)
  assert len(leaves) == 5
  back = jax.tree_util.tree_unflatten(treedef, leaves)
  assert back.kernel_shape == (3, 3, 2, 4)
  np.testing.assert_array_equal(np.asarray(jax.jit(ops.to_dense)(sk)), w)
  assert abs(sk.sparsity() - float((w == 0).mean())) < 1e-12


def test_format_bad_input():
  with pytest.raises(ValueError, match="HWIO"):
    ops.to_sparse_kernel(np.ones((3, 3, 4)))
  with pytest.raises(ValueError, match="layout"):
    ops.to_sparse_kernel(np.ones((3, 3, 4, 2)), layout="OIHW")
  with pytest.raises(ValueError, match="max_nnz"):
    ops.to_sparse_kernel(np.ones((3, 3, 4, 2)), max_nnz=5)
  with pytest.raises(TypeError, match="concrete"):
    jax.jit(ops.to_sparse_kernel)(jnp.ones((3, 3, 4, 2)))
  sk = ops.to_sparse_kernel(np.ones((1, 1, 2, 2)))
  with pytest.raises(TypeError, match="already a SparseKernel"):
    ops.to_sparse_kernel(sk)
  with pytest.raises(TypeError, match="SparseKernel"):
    ops.to_dense(np.ones((1, 1, 2, 2)))


# ------------------------------------------------------------------------------------------------
# XLA path against lax.conv_general_dilated, over a sampled grid: every kernel size, both strides,
# both paddings and sparsities 0 to 99% appear, without the full 80-case product.

GRID = [
  # (kernel, stride, padding, sparsity)
  (1, 1, "SAME", 0.0), (1, 2, "VALID", 0.9), (1, 1, "VALID", 0.99),
  (3, 1, "SAME", 0.5), (3, 2, "SAME", 0.9), (3, 2, "VALID", 0.0), (3, 1, "VALID", 0.99),
  (5, 1, "VALID", 0.8), (5, 2, "SAME", 0.95),
  (7, 2, "VALID", 0.5), (7, 1, "SAME", 0.9),
  (11, 2, "SAME", 0.8), (11, 1, "VALID", 0.99),
]


@pytest.mark.parametrize("k,s,padding,sparsity", GRID)
def test_reference_matches_dense_conv(k, s, padding, sparsity):
  rng = np.random.default_rng(hash((k, s, padding, sparsity)) % 2**32)
  h = max(k + 2, 9)
  x = jnp.asarray(rng.standard_normal((2, h, h + 1, 3)), jnp.float32)
  w = _pruned_kernel(rng, (k, k, 3, 5), sparsity)
  sk = ops.to_sparse_kernel(w)
  y = ops.sparse_conv2d(x, sk, (s, s), padding, impl="xla")
  ref = _dense_conv(x, w, (s, s), padding)
  assert y.shape == ref.shape
  assert _rel_err(y, ref) < 1e-5


def test_reference_fused_bias_relu_odd_strides_and_explicit_padding():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((3, 10, 11, 4)), jnp.float32)
  w = _pruned_kernel(rng, (3, 4, 4, 6), 0.6)
  b = jnp.asarray(rng.standard_normal(6), jnp.float32)
  sk = ops.to_sparse_kernel(w)
  for strides, padding in [((1, 2), "SAME"), ((3, 1), ((2, 0), (1, 3))), ((2, 2), 1)]:
    pad_lax = padding if not isinstance(padding, int) else ((padding,) * 2,) * 2
    y = ops.sparse_conv2d(x, sk, strides, padding, bias=b, relu=True, impl="xla")
    ref = _dense_conv(x, w, strides, pad_lax, bias=b, relu=True)
    assert _rel_err(y, ref) < 1e-5, (strides, padding)
  # Small row tiles and slot groups exercise the tiling remainders.
  y = sc.sparse_conv2d_reference(x, sk, (1, 1), "SAME", row_tile=3, slot_group=5)
  assert _rel_err(y, _dense_conv(x, w, (1, 1), "SAME")) < 1e-5


def test_auto_impl_on_cpu_below_the_threshold_is_dense_and_jits():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((1, 8, 8, 2)), jnp.float32)
  w = np.ones((3, 3, 2, 3), np.float32)  # no zeros: below the native kernel's threshold
  sk = ops.to_sparse_kernel(w)
  assert sc.choose_sparse_conv_impl("auto", x, sk) == "dense"
  f = jax.jit(lambda x, w: ops.sparse_conv2d(x, w))
  np.testing.assert_allclose(np.asarray(f(x, sk)), np.asarray(ops.sparse_conv2d(x, sk, impl="xla")),
                             rtol=1e-5, atol=1e-5)


def test_reference_bfloat16_input():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((1, 8, 8, 4)), jnp.bfloat16)
  w = _pruned_kernel(rng, (3, 3, 4, 4), 0.5).astype(jnp.bfloat16)
  y = ops.sparse_conv2d(x, ops.to_sparse_kernel(w), impl="xla")
  assert y.dtype == jnp.bfloat16
  ref = _dense_conv(x.astype(jnp.float32), np.asarray(w, np.float32), (1, 1), "SAME")
  assert _rel_err(y, ref) < 2e-2


def test_sparse_conv_bad_input():
  x = jnp.ones((1, 8, 8, 3))
  w = np.ones((3, 3, 3, 4), np.float32)
  sk = ops.to_sparse_kernel(w)
  with pytest.raises(TypeError, match="SparseKernel"):
    ops.sparse_conv2d(x, w)
  with pytest.raises(ValueError, match="input channels"):
    ops.sparse_conv2d(jnp.ones((1, 8, 8, 5)), sk)
  with pytest.raises(ValueError, match="4-D NHWC"):
    ops.sparse_conv2d(jnp.ones((8, 8, 3)), sk)
  with pytest.raises(ValueError, match="data_format"):
    ops.sparse_conv2d(x, sk, data_format="NCHW")
  with pytest.raises(ValueError, match="dilation"):
    ops.sparse_conv2d(x, sk, dilation=(2, 2))
  with pytest.raises(ValueError, match="padding"):
    ops.sparse_conv2d(x, sk, padding="FULL")
  with pytest.raises(ValueError, match="strides"):
    ops.sparse_conv2d(x, sk, strides=(0, 1))
  with pytest.raises(ValueError, match="impl"):
    ops.sparse_conv2d(x, sk, impl="cuda")
  with pytest.raises(ValueError, match="bias"):
    ops.sparse_conv2d(x, sk, bias=jnp.ones(3))
  with pytest.raises(ValueError, match="empty output"):
    ops.sparse_conv2d(jnp.ones((1, 2, 2, 3)), sk, padding="VALID")
  with pytest.raises(TypeError, match="float"):
    ops.sparse_conv2d(jnp.ones((1, 8, 8, 3), jnp.int32), sk)
  with pytest.raises(TypeError, match="config"):
    ksc.sparse_conv2d_pallas(x, sk, config={"block_h": 2}, interpret=True)
  with pytest.raises(ValueError, match="power of 2"):
    ksc.SparseConvConfig(block_h=3)


def test_conv_flops():
  assert ops.conv_flops((2, 8, 8, 3), (3, 3, 3, 4)) == 2 * 2 * 64 * 108
  assert ops.conv_flops((2, 8, 8, 3), (3, 3, 3, 4), (2, 2), "VALID", nonzeros=10) == 2 * 2 * 9 * 10


# ------------------------------------------------------------------------------------------------
# Gradients (fine-tuning pruned models): the sparse path against autodiff of the dense conv.


def test_reference_gradients_match_dense():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((2, 7, 6, 3)), jnp.float32)
  w = _pruned_kernel(rng, (3, 3, 3, 4), 0.6)
  sk = ops.to_sparse_kernel(w)
  b = jnp.asarray(rng.standard_normal(4), jnp.float32)
  ct = jnp.asarray(rng.standard_normal((2, 4, 3, 4)), jnp.float32)

  def sparse_loss(x, v, b):
    return jnp.sum(ct * ops.sparse_conv2d(x, sk.replace(values=v), (2, 2), "SAME", b, relu=True))

  def dense_loss(x, wd, b):
    return jnp.sum(ct * _dense_conv(x, wd, (2, 2), "SAME", b, relu=True))

  gx, gv, gb = jax.grad(sparse_loss, argnums=(0, 1, 2))(x, sk.values, b)
  dx, dw, db = jax.grad(dense_loss, argnums=(0, 1, 2))(x, jnp.asarray(w), b)
  np.testing.assert_allclose(gx, dx, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gb, db, rtol=1e-4, atol=1e-5)
  r, c, i, valid = (np.asarray(a) for a in (sk.rows, sk.cols, sk.chans, sk.valid))
  o = np.broadcast_to(np.arange(4)[:, None], r.shape)
  expect = np.where(valid, np.asarray(dw)[r, c, i, o], 0.0)
  np.testing.assert_allclose(gv, expect, rtol=1e-4, atol=1e-5)  # padding slots: zero gradient


def test_reference_custom_vjp_check_grads_float64():
  # The XLA path's forward loops over each channel's own nonzeros (data-dependent bounds); its
  # custom_vjp differentiates the static-bounds formulation. Channel 0 is empty, channel 1 full.
  rng = np.random.default_rng(8)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((1, 5, 4, 2)), jnp.float64)
    w = _pruned_kernel(rng, (3, 3, 2, 3), 0.7, np.float64)
    w[..., 0] = 0.0
    w[..., 1] = rng.standard_normal((3, 3, 2))
    sk = ops.to_sparse_kernel(w)
    b = jnp.asarray(rng.standard_normal(3), jnp.float64)
    static = ((2, 1), "SAME", True, 2, 5)

    def f(x, v, b):
      return sc.sparse_conv2d_reference(x, sk.replace(values=v), static[0], static[1], b,
                                        relu=static[2], row_tile=static[3], slot_group=static[4])

    y = f(x, sk.values, b)
    assert _rel_err(y, _dense_conv(x, w, static[0], static[1], b, relu=True)) < 1e-12
    check_grads(f, (x, sk.values, b), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
    ct = jnp.asarray(rng.standard_normal(y.shape), jnp.float64)
    got = jax.vjp(f, x, sk.values, b)[1](ct)
    want = jax.vjp(lambda x, v, b: ksc._gather_forward(x, sk.replace(values=v), b, *static),
                   x, sk.values, b)[1](ct)
    for a, r in zip(got, want):
      np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)


def test_reference_bad_tiling_arguments():
  sk = ops.to_sparse_kernel(np.ones((3, 3, 2, 2), np.float32))
  x = jnp.ones((1, 4, 4, 2))
  with pytest.raises(ValueError, match="slot_group"):
    sc.sparse_conv2d_reference(x, sk, slot_group=0)
  with pytest.raises(ValueError, match="row_tile"):
    sc.sparse_conv2d_reference(x, sk, row_tile=0)


# ------------------------------------------------------------------------------------------------
# Pallas kernel: interpret mode against the reference, fresh random kernels each run, output
# poisoned with NaN beforehand; tiny sizes because the interpreter is slow.

PALLAS_GRID = [
  # (kernel, stride, padding, sparsity, config)
  (1, 1, "SAME", 0.0, ksc.SparseConvConfig(2, 4, 2)),
  (3, 2, "VALID", 0.9, ksc.SparseConvConfig(2, 2, 4)),
  (3, 1, "SAME", 0.5, None),
  (5, 2, "SAME", 0.99, ksc.SparseConvConfig(1, 4, 2)),
  (7, 1, "VALID", 0.8, ksc.SparseConvConfig(4, 2, 1)),
  (11, 2, "SAME", 0.7, ksc.SparseConvConfig(2, 4, 4)),
]


@pytest.mark.parametrize("k,s,padding,sparsity,cfg", PALLAS_GRID)
def test_pallas_interpret_matches_reference(k, s, padding, sparsity, cfg):
  seed = int(np.random.SeedSequence().entropy % 2**32)  # fresh kernels every run
  rng = np.random.default_rng(seed)
  h = k + 2
  x = jnp.asarray(rng.standard_normal((2, h, h + 1, 3)), jnp.float32)
  w = _pruned_kernel(rng, (k, k, 3, 5), sparsity)
  sk = ops.to_sparse_kernel(w)
  b = jnp.asarray(rng.standard_normal(5), jnp.float32)
  relu = bool(seed % 2)
  static = (sk.kernel_shape, (s, s), padding, relu, cfg, True)
  y = ksc._forward(x, sk.values, sk.rows, sk.cols, sk.chans, sk.nnz, b, static, poison=True)
  ref = sc.sparse_conv2d_reference(x, sk, (s, s), padding, b, relu)
  assert not np.isnan(np.asarray(y)).any(), f"unwritten output (seed {seed})"
  assert _rel_err(y, ref) < 1e-5, f"seed {seed}"
  assert _rel_err(y, _dense_conv(x, w, (s, s), padding, b, relu)) < 1e-5, f"seed {seed}"


def test_pallas_via_op_and_interpret_flag_reaches_the_call():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((1, 6, 6, 2)), jnp.float32)
  sk = ops.to_sparse_kernel(_pruned_kernel(rng, (3, 3, 2, 3), 0.5))
  y = ops.sparse_conv2d(x, sk, impl="pallas", interpret=True)
  assert _rel_err(y, sc.sparse_conv2d_reference(x, sk)) < 1e-5
  if jax.default_backend() == "cpu":  # without interpret the CPU cannot run a Triton kernel
    with pytest.raises(ValueError, match="needs a GPU"):
      ops.sparse_conv2d(x, sk, impl="pallas", interpret=False)


def test_pallas_lowers_for_cuda_with_triton():
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.standard_normal((2, 9, 9, 3)), jnp.float32)
  sk = ops.to_sparse_kernel(_pruned_kernel(rng, (3, 3, 3, 8), 0.9))
  b = jnp.zeros((8,), jnp.float32)
  for strides, padding, bias, relu in [((1, 1), "SAME", None, False), ((2, 2), "VALID", b, True)]:
    f = jax.jit(lambda x, w, b: ksc.sparse_conv2d_pallas(x, w, strides, padding, b, relu))
    with cuda_lowering_context():
      text = f.trace(x, sk, bias).lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text
    assert "escort_sparse_conv2d" in text


def test_pallas_gradients_check_grads_float64():
  rng = np.random.default_rng(7)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((1, 5, 5, 2)), jnp.float64)
    sk = ops.to_sparse_kernel(_pruned_kernel(rng, (3, 3, 2, 2), 0.5, np.float64))
    b = jnp.asarray(rng.standard_normal(2), jnp.float64)
    cfg = ksc.SparseConvConfig(4, 4, 2)

    def f(x, v, b):
      return ksc.sparse_conv2d_pallas(x, sk.replace(values=v), (1, 1), "SAME", b, relu=False,
                                      config=cfg, interpret=True)

    check_grads(f, (x, sk.values, b), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
    ct = jnp.asarray(rng.standard_normal((1, 5, 5, 2)), jnp.float64)
    g_kernel = jax.vjp(f, x, sk.values, b)[1](ct)
    g_ref = jax.vjp(lambda x, v, b: sc.sparse_conv2d_reference(x, sk.replace(values=v), (1, 1),
                                                                "SAME", b), x, sk.values, b)[1](ct)
    for a, r in zip(g_kernel, g_ref):
      np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Sparse inference of a Linen CNN.


class _SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(nn.Conv(16, (5, 5), strides=2, padding="VALID", use_bias=False)(x))
    x = nn.relu(nn.Conv(16, (3, 3), padding="CIRCULAR")(x))
    x = nn.Conv(16, (1, 1), strides=(2, 1))(x)
    return nn.Dense(10)(x.mean(axis=(-3, -2)))


@functools.lru_cache(maxsize=1)
def _pruned_model():
  model = _SmallCNN()
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  pruned, _ = ops.magnitude_prune(variables["params"], 0.85)
  return model, {**variables, "params": pruned}, x


def test_sparse_inference_equals_dense_model():
  model, variables, x = _pruned_model()
  sparse_vars = fnn.sparsify_variables(variables)
  is_sparse = lambda a: isinstance(a, ops.SparseKernel)
  kernels = [leaf for leaf in jax.tree.leaves(sparse_vars, is_leaf=is_sparse) if is_sparse(leaf)]
  assert len(kernels) == 4  # every conv, not the Dense kernel
  dense = jax.jit(model.apply)(variables, x)

  @jax.jit
  def sparse_outputs(v, x):
    batched = fnn.sparse_apply(model, v, x, impl="xla")
    unbatched = fnn.sparse_apply(model, v, x[0])  # no batch dim, like nn.Conv
    with fnn.sparse_convs(impl="xla"):
      ctx = model.apply(v, x)
    return batched, unbatched, ctx

  sparse, unbatched, ctx = sparse_outputs(sparse_vars, x)
  np.testing.assert_allclose(sparse, dense, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(unbatched, dense[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ctx, dense, rtol=1e-5, atol=1e-5)
  assert np.array_equal(np.argmax(sparse, -1), np.argmax(dense, -1))
  with pytest.raises(Exception):  # without the interceptor the SparseKernel cannot be used
    model.apply(sparse_vars, x)


def test_sparse_inference_min_sparsity_and_pallas():
  model, variables, x = _pruned_model()
  sparse_vars = fnn.sparsify_variables(variables, min_sparsity=0.99)  # nothing that sparse
  assert not any(isinstance(a, ops.SparseKernel) for a in jax.tree.leaves(
    sparse_vars, is_leaf=lambda a: isinstance(a, ops.SparseKernel)))
  sparse_vars = fnn.sparsify_variables(variables)
  out = fnn.sparse_apply(model, sparse_vars, x[:1], impl="pallas", interpret=True)
  np.testing.assert_allclose(out, model.apply(variables, x[:1]), rtol=1e-5, atol=1e-5)


def test_sparse_inference_bad_input():
  class Dilated(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Conv(4, (3, 3), kernel_dilation=2)(x)

  m = Dilated()
  x = jnp.ones((1, 8, 8, 2))
  v = fnn.sparsify_variables(m.init(jax.random.key(0), x))
  with pytest.raises(ValueError, match="kernel_dilation"):
    fnn.sparse_apply(m, v, x)
  with pytest.raises(ValueError, match="min_sparsity"):
    fnn.sparsify_variables(v, min_sparsity=1.5)
  with pytest.raises(ValueError, match="collection"):
    fnn.sparsify_variables({"batch_stats": {}})
  with pytest.raises(ValueError, match="impl"):
    fnn.sparse_apply(m, v, x, impl="gpu")
