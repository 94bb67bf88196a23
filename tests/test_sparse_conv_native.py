"""Tests of the native C++ direct sparse convolution (fastnets.kernels.sparse_conv_native) and the
CPU dispatch of `ops.sparse_conv2d(impl="auto")` / `nn.sparse_apply`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from fastnets import nn as fnn
from fastnets import ops
from fastnets.kernels import native
from fastnets.kernels import sparse_conv as ksc
from fastnets.ops import sparse_conv as sc
from tests.conftest import run_python

DN = ("NHWC", "HWIO", "NHWC")
needs_cxx = pytest.mark.skipif(not native.has_compiler(), reason="no C++ compiler")
TARGET = "fastnets_sparse_conv"


def _pruned(rng, shape, sparsity):
  w = rng.standard_normal(shape).astype(np.float32)
  w[rng.random(shape) < sparsity] = 0
  return w


def _dense(x, w, strides, padding, bias=None, relu=False):
  pads, _ = sc.conv_output_geometry(x.shape[1:3], w.shape[:2], strides, padding)
  y = lax.conv_general_dilated(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), strides,
                               pads, dimension_numbers=DN, precision=lax.Precision.HIGHEST)
  if bias is not None:
    y = y + jnp.asarray(bias, jnp.float32)
  return jax.nn.relu(y) if relu else y


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# (N, H, W, I, O, KH, KW, strides, padding, sparsity): odd widths, wide rows (two register chunks),
# narrow rows (several rows per tile, ragged last tile), strides 1-3, every padding form.
CASES = [
  (2, 9, 13, 5, 7, 3, 3, (1, 1), "SAME", 0.5),
  (1, 11, 11, 3, 20, 5, 5, (2, 2), "VALID", 0.8),
  (2, 6, 105, 4, 17, 3, 3, (1, 1), 1, 0.9),
  (1, 7, 7, 33, 9, 3, 3, (2, 1), "SAME", 0.0),
  (3, 10, 5, 6, 18, 1, 1, (1, 1), "VALID", 0.95),
  (1, 19, 23, 2, 5, 4, 2, (3, 2), ((2, 0), (1, 3)), 0.6),
]


@needs_cxx
@pytest.mark.parametrize("n,h,wd,ci,co,kh,kw,strides,padding,sparsity", CASES)
def test_native_matches_dense_conv(n, h, wd, ci, co, kh, kw, strides, padding, sparsity):
  rng = np.random.default_rng(hash((n, h, wd, ci, co)) % 2**32)
  x = rng.standard_normal((n, h, wd, ci)).astype(np.float32)
  w = _pruned(rng, (kh, kw, ci, co), sparsity)
  b = rng.standard_normal(co).astype(np.float32)
  sk = ops.to_sparse_kernel(w)
  for bias, relu in ((None, False), (b, True)):
    y = ksc.sparse_conv2d_native(jnp.asarray(x), sk, strides, padding,
                                 None if bias is None else jnp.asarray(bias), relu)
    want = _dense(x, w, strides, padding, bias, relu)
    assert y.shape == want.shape and y.dtype == jnp.float32
    assert _rel_err(y, want) < 1e-5


@needs_cxx
def test_native_empty_channels_all_zero_and_one_nonzero():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 8, 9, 3)), jnp.float32)
  b = jnp.asarray(rng.standard_normal(4), jnp.float32)
  w = _pruned(rng, (3, 3, 3, 4), 0.5)
  w[..., 1] = 0.0  # an output channel with no nonzero: bias (then ReLU) only
  for kernel in (w, np.zeros_like(w), np.eye(1, 36, 17, np.float32).reshape(3, 3, 1, 4)
                 .repeat(3, axis=2) * (np.arange(3) == 2)[None, None, :, None]):
    sk = ops.to_sparse_kernel(kernel)
    y = ksc.sparse_conv2d_native(x, sk, 1, "SAME", b, relu=True)
    np.testing.assert_allclose(y, _dense(x, kernel, (1, 1), "SAME", b, True), rtol=1e-5,
                               atol=1e-5)
  y = ksc.sparse_conv2d_native(x, ops.to_sparse_kernel(w), 1, "SAME", b)
  np.testing.assert_array_equal(np.asarray(y[..., 1]), np.broadcast_to(b[1], y.shape[:3]))


@needs_cxx
@pytest.mark.parametrize("xd,wd,outd", [(jnp.bfloat16, jnp.bfloat16, jnp.bfloat16),
                                        (jnp.bfloat16, jnp.float32, jnp.float32),
                                        (jnp.float32, jnp.bfloat16, jnp.float32)])
def test_native_bfloat16(xd, wd, outd):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 9, 11, 8)), xd)
  w = jnp.asarray(_pruned(rng, (3, 3, 8, 6), 0.7), wd)
  y = ksc.sparse_conv2d_native(x, ops.to_sparse_kernel(w), (1, 2), "SAME", relu=True)
  assert y.dtype == outd
  want = _dense(np.asarray(x.astype(jnp.float32)), np.asarray(w.astype(jnp.float32)), (1, 2),
                "SAME", relu=True)
  # float32 accumulation of bfloat16 products: only the output rounding is bfloat16's.
  assert _rel_err(y, want) < (1e-2 if outd == jnp.bfloat16 else 1e-5)


@needs_cxx
def test_native_thread_split_is_bitwise_one_thread_and_vmaps():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((3, 20, 30, 8)), jnp.float32)
  sk = ops.to_sparse_kernel(_pruned(rng, (3, 3, 8, 40), 0.8))
  b = jnp.asarray(rng.standard_normal(40), jnp.float32)
  many = jax.jit(lambda x: ksc.sparse_conv2d_native(x, sk, 1, "SAME", b, True))(x)
  one = jax.jit(lambda x: ksc.sparse_conv2d_native(x, sk, 1, "SAME", b, True, parallel=False))(x)
  np.testing.assert_array_equal(np.asarray(many), np.asarray(one))
  per_image = jax.vmap(lambda xi: ksc.sparse_conv2d_native(xi[None], sk, 1, "SAME", b, True)[0])
  np.testing.assert_array_equal(np.asarray(per_image(x)), np.asarray(many))


@needs_cxx
def test_native_gradients_match_dense_and_finite_differences():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((2, 7, 6, 3)), jnp.float32)
  w = _pruned(rng, (3, 3, 3, 4), 0.6)
  sk = ops.to_sparse_kernel(w)
  b = jnp.asarray(rng.standard_normal(4), jnp.float32)
  ct = jnp.asarray(rng.standard_normal((2, 4, 3, 4)), jnp.float32)

  def loss(impl):
    return lambda x, v, b: jnp.sum(ct * ops.sparse_conv2d(
      x, sk.replace(values=v), (2, 2), "SAME", b, relu=True, impl=impl))

  gx, gv, gb = jax.grad(loss("native"), argnums=(0, 1, 2))(x, sk.values, b)
  dense_loss = lambda x, wd, b: jnp.sum(ct * _dense(x, wd, (2, 2), "SAME", b, relu=True))
  dx, dw, db = jax.grad(dense_loss, argnums=(0, 1, 2))(x, jnp.asarray(w), b)
  np.testing.assert_allclose(gx, dx, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gb, db, rtol=1e-4, atol=1e-5)
  r, c, i, valid = (np.asarray(a) for a in (sk.rows, sk.cols, sk.chans, sk.valid))
  o = np.broadcast_to(np.arange(4)[:, None], r.shape)
  np.testing.assert_allclose(gv, np.where(valid, np.asarray(dw)[r, c, i, o], 0.0), rtol=1e-4,
                             atol=1e-5)
  # Against finite differences of the native forward itself (float32: the kernel has no
  # float64; the reference's float64 check_grads is in tests/test_sparse_conv.py).
  f = jax.jit(lambda x, v, b: ksc.sparse_conv2d_native(x, sk.replace(values=v), (1, 2), "VALID",
                                                       b))
  check_grads(f, (x[:1, :5], sk.values, b), order=1, modes=["rev"], eps=1e-2, atol=2e-2,
              rtol=2e-2)


@needs_cxx
def test_auto_dispatch_threshold_and_sparse_apply():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((1, 8, 8, 4)), jnp.float32)
  sparse = ops.to_sparse_kernel(_pruned(rng, (3, 3, 4, 8), 0.97))
  dense = ops.to_sparse_kernel(_pruned(rng, (3, 3, 4, 8), 0.2))
  assert sc.static_sparsity(sparse) >= sc.NATIVE_MIN_SPARSITY > sc.static_sparsity(dense)
  assert sc.choose_sparse_conv_impl("auto", x, sparse) == "native"
  assert sc.choose_sparse_conv_impl("auto", x, dense) == "dense"
  assert sc.choose_sparse_conv_impl("auto", x.astype(jnp.float16), sparse) == "xla"
  # w.values or bias in a dtype the kernel does not take: auto falls back instead of raising.
  assert sc.choose_sparse_conv_impl("auto", x, sparse.replace(
      values=sparse.values.astype(jnp.float16))) == "xla"
  assert sc.choose_sparse_conv_impl("auto", x, sparse, jnp.zeros(
      sparse.kernel_shape[3], jnp.float16)) == "xla"
  hlo = lambda w: jax.jit(lambda x: ops.sparse_conv2d(x, w)).trace(x).lower().as_text()
  assert TARGET in hlo(sparse) and TARGET not in hlo(dense)
  np.testing.assert_allclose(ops.sparse_conv2d(x, dense), ops.sparse_conv2d(x, dense, impl="xla"),
                             rtol=1e-5, atol=1e-5)

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(16, (3, 3))(x))
      return nn.Conv(8, (3, 3), strides=2)(x)

  model = Net()
  variables = model.init(jax.random.key(0), x)
  pruned, _ = ops.magnitude_prune(variables["params"], 0.95)
  sv = fnn.sparsify_variables({"params": pruned})
  f = jax.jit(lambda v, x: fnn.sparse_apply(model, v, x))
  assert f.trace(sv, x).lower().as_text().count(TARGET) >= 2
  np.testing.assert_allclose(f(sv, x), model.apply({"params": pruned}, x), rtol=1e-4, atol=1e-5)


@needs_cxx
def test_native_bad_input_raises_before_native_code(monkeypatch):
  def boom(*a, **k):
    raise AssertionError("native code reached")

  monkeypatch.setattr(native, "sparse_conv_ffi", boom)
  x = jnp.ones((1, 8, 8, 3))
  sk = ops.to_sparse_kernel(np.ones((3, 3, 3, 4), np.float32))
  with pytest.raises(ValueError, match="input channels"):
    ksc.sparse_conv2d_native(jnp.ones((1, 8, 8, 5)), sk)
  with pytest.raises(ValueError, match="empty output"):  # kernel larger than the padded input
    ksc.sparse_conv2d_native(jnp.ones((1, 2, 2, 3)), sk, padding="VALID")
  with pytest.raises(ValueError, match="non-finite"):
    ksc.sparse_conv2d_native(x, sk.replace(values=sk.values.at[0, 0].set(jnp.nan)))
  with pytest.raises(ValueError, match="non-finite"):
    ops.sparse_conv2d(x, sk.replace(values=sk.values.at[1, 2].set(jnp.inf)), impl="native")
  with pytest.raises(TypeError, match="x must be float32 or bfloat16"):
    ksc.sparse_conv2d_native(x.astype(jnp.float16), sk)
  with pytest.raises(TypeError, match="w.values must be float32 or bfloat16"):
    ksc.sparse_conv2d_native(x, sk.replace(values=sk.values.astype(jnp.float16)))
  with pytest.raises(ValueError, match="bias"):
    ksc.sparse_conv2d_native(x, sk, bias=jnp.ones(3))
  with pytest.raises(ValueError, match="impl"):
    ops.sparse_conv2d(x, sk, impl="cpp")
  with pytest.raises(ValueError, match="impl"):
    fnn.sparse_apply(nn.Conv(4, (3, 3)), {}, x, impl="cpp")


def test_no_compiler_falls_back_to_xla_once_and_native_raises():
  out = run_python("""
import warnings, jax, jax.numpy as jnp, numpy as np
from fastnets import ops
from fastnets.kernels import native
assert not native.available() and "no C++ compiler" in native.build_error()
w = np.zeros((3, 3, 2, 4), np.float32); w[1, 1, 0] = 1.0
sk = ops.to_sparse_kernel(w)
x = jnp.ones((1, 6, 6, 2))
with warnings.catch_warnings(record=True) as caught:
  warnings.simplefilter("always")
  y1 = ops.sparse_conv2d(x, sk)
  y2 = jax.jit(lambda x: ops.sparse_conv2d(x, sk))(x)
said = [m for m in caught if "using the XLA path" in str(m.message)]
assert len(said) == 1, [str(m.message) for m in caught]
np.testing.assert_allclose(y1, ops.sparse_conv2d(x, sk, impl="xla"))
np.testing.assert_allclose(y2, y1)
try:
  ops.sparse_conv2d(x, sk, impl="native")
except native.NativeBuildError as e:
  print("raised:", e)
""", env={"PATH": "/nonexistent", "CXX": ""})
  assert "raised: fastnets native CPU kernels are unavailable: no C++ compiler" in out
