"""Tests of the fast Walsh-Hadamard transform (`fastnets.ops.fwht`) and its Pallas kernel."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from fastnets import ops
from fastnets.kernels import hadamard as khad
from fastnets.ops import hadamard as had
from tests.conftest import cuda_lowering_context, run_python

TRITON_CALL = "__gpu$xla.gpu.triton"
# The native CPU kernel is compiled on first use: without a C++ compiler its tests are skipped; with
# one, a failing build fails them (impl="native" raises with the compiler's message).
from fastnets.kernels import native as _native  # pylint: disable=g-import-not-at-top

needs_cxx = pytest.mark.skipif(not _native.has_compiler(), reason="no C++ compiler")
NATIVE = pytest.param("native", marks=needs_cxx)


@functools.lru_cache(maxsize=None)
def _scipy_hadamard(n):
  return scipy.linalg.hadamard(n).astype(np.float64)


def _ref(x, axis, normalize=False):
  """numpy float64 reference: x @ H_n along `axis` with scipy's Hadamard matrix."""
  x = np.asarray(x, np.float64)
  n = x.shape[axis]
  h = _scipy_hadamard(n)
  if normalize:
    h = h / np.sqrt(n)
  return np.moveaxis(np.moveaxis(x, axis, -1) @ h, -1, axis)


def _layouts(n):
  """(shape, axis) pairs that put the length-n axis first, in the middle and last."""
  return [((3, n), -1), ((n, 2), 0), ((2, n, 3), 1), ((2, 1, n), 2)]


@pytest.mark.parametrize("impl", ["xla", NATIVE])
@pytest.mark.parametrize("n", [1, 2, 4, 8, 32, 128, 512, 2048, 4096])
def test_fwht_matches_scipy_hadamard_float64(n, impl):
  rng = np.random.default_rng(n)
  with jax.enable_x64(True):
    for i, (shape, axis) in enumerate(_layouts(n)):
      x = rng.standard_normal(shape)
      normalize = bool(i % 2)
      y = ops.fwht(jnp.asarray(x), axis=axis, normalize=normalize, impl=impl)
      assert y.dtype == jnp.float64 and y.shape == x.shape
      np.testing.assert_allclose(np.asarray(y), _ref(x, axis, normalize), rtol=1e-12,
                                 atol=1e-12 * np.sqrt(n) * np.abs(x).max())


def test_hadamard_matrix_is_scipy():
  for n in (1, 2, 16, 128):
    np.testing.assert_array_equal(np.asarray(ops.hadamard_matrix(n, jnp.int32)),
                                  scipy.linalg.hadamard(n))


@pytest.mark.parametrize("shape,axis", [((7, 64), -1), ((7, 16, 3), 1), ((9, 8, 4), 1)])
def test_chunked_path_with_ragged_remainder(monkeypatch, shape, axis):
  # Force the lax.map chunking (rows per chunk smaller than, and not dividing, the leading size).
  monkeypatch.setattr(had, "_CHUNK_ELEMENTS", 100)
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  y = jax.jit(lambda v: ops.fwht(v, axis=axis, impl="xla"))(x)
  jaxpr = str(jax.make_jaxpr(lambda v: ops.fwht(v, axis=axis, impl="xla"))(x))
  if shape[0] > 2:
    assert "scan" in jaxpr or "while" in jaxpr
  np.testing.assert_allclose(np.asarray(y), _ref(x, axis), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2),
                                       (jnp.float16, 2e-3)])
def test_half_and_single_precision(dtype, tol):
  x = np.random.default_rng(1).standard_normal((4, 1024)).astype(np.float32)
  xd = jnp.asarray(x, dtype)
  y = ops.fwht(xd, normalize=True)
  assert y.dtype == dtype and y.shape == x.shape
  ref = _ref(np.asarray(xd.astype(jnp.float32)), -1, normalize=True)
  assert np.abs(np.asarray(y, np.float64) - ref).max() <= tol * np.abs(ref).max()


@settings(max_examples=15, deadline=None)
@given(log2n=st.integers(0, 10), rank=st.integers(1, 3), seed=st.integers(0, 2**16),
       data=st.data())
def test_normalized_transform_twice_is_identity(log2n, rank, seed, data):
  axis = data.draw(st.integers(-rank, rank - 1))
  shape = [2] * rank
  shape[axis] = 2**log2n
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  y = ops.fwht(ops.fwht(x, axis=axis, normalize=True), axis=axis, normalize=True)
  np.testing.assert_allclose(np.asarray(y), x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["xla", NATIVE])
@pytest.mark.parametrize("shape,axis,normalize", [((3, 16), -1, False), ((8, 4), 0, True),
                                                  ((2, 32, 2), 1, True)])
def test_gradients_float64(shape, axis, normalize, impl):
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(2).standard_normal(shape))
    f = lambda v: ops.fwht(v, axis=axis, normalize=normalize, impl=impl)
    check_grads(f, (x,), order=1, modes=["rev"])
    # Against autodiff of the dense reference under a random cotangent.
    n = shape[axis]
    h = jnp.asarray(scipy.linalg.hadamard(n), jnp.float64) / (np.sqrt(n) if normalize else 1.0)
    ref = lambda v: jnp.moveaxis(jnp.moveaxis(v, axis, -1) @ h, -1, axis)
    ct = jnp.asarray(np.random.default_rng(3).standard_normal(shape))
    (g,) = jax.vjp(f, x)[1](ct)
    (g_ref,) = jax.vjp(ref, x)[1](ct)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-12, atol=1e-12)


def test_vmap_and_jit():
  x = np.random.default_rng(4).standard_normal((32, 5, 3)).astype(np.float32)
  y = jax.jit(jax.vmap(lambda v: ops.fwht(v, axis=0), in_axes=1, out_axes=1))(x)
  np.testing.assert_allclose(np.asarray(y), _ref(x, 0), rtol=1e-5, atol=1e-4)


# ---- Pallas kernel -------------------------------------------------------------------------


@pytest.mark.parametrize("shape,rows_per_block", [((5, 16), None), ((3, 128), 2),
                                                  ((3, 256), 2), ((2, 1024), None),
                                                  ((2, 2, 512), 4)])
def test_pallas_interpret_matches_reference(shape, rows_per_block):
  x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
  for normalize in (False, True):
    y = khad.fwht_pallas(x, normalize=normalize, rows_per_block=rows_per_block, interpret=True)
    assert y.shape == x.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), _ref(x, -1, normalize), rtol=1e-5,
                               atol=1e-5 * np.sqrt(shape[-1]))


def test_reference_is_the_dense_matmul():
  x = np.random.default_rng(3).standard_normal((3, 32)).astype(np.float32)
  h = np.asarray(ops.hadamard_matrix(32))
  np.testing.assert_allclose(np.asarray(khad.fwht_reference(x)), x @ h, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(np.asarray(khad.fwht_reference(x, normalize=True)),
                             x @ h / np.sqrt(32), rtol=1e-6, atol=1e-6)


def test_pallas_bfloat16_interpret():
  x = jnp.asarray(np.random.default_rng(6).standard_normal((4, 256)), jnp.bfloat16)
  y = khad.fwht_pallas(x, normalize=True, interpret=True)
  assert y.dtype == jnp.bfloat16
  ref = np.asarray(khad.fwht_reference(x, normalize=True), np.float32)
  np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=0, atol=1e-6)


def test_pallas_call_receives_interpret_and_name(monkeypatch):
  seen = []
  real = khad.pl.pallas_call

  def spy(*args, **kwargs):
    seen.append((kwargs.get("interpret"), kwargs.get("name")))
    return real(*args, **kwargs)

  monkeypatch.setattr(khad.pl, "pallas_call", spy)
  x = np.ones((2, 64), np.float32)
  khad.fwht_pallas(x, interpret=True)
  khad.fwht_pallas(np.ones((1, 256), np.float32), interpret=True)
  assert seen == [(True, "fwht_dense"), (True, "fwht_two_factor")]


def test_impls_agree_values_and_gradients():
  # On a CPU, impl="pallas" runs the kernel in the Pallas interpreter (interpret=True).
  rng = np.random.default_rng(7)
  for shape, axis in [((3, 64), -1), ((2, 256, 3), 1)]:
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    ct = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    outs, grads = [], []
    for impl in ("xla", "pallas") + (("native",) if _native.has_compiler() else ()):
      f = lambda v, impl=impl: ops.fwht(v, axis=axis, normalize=True, impl=impl,
                                        interpret=impl == "pallas")
      y, vjp = jax.vjp(f, x)
      outs.append(np.asarray(y))
      grads.append(np.asarray(vjp(ct)[0]))
    for o, g in zip(outs[1:], grads[1:]):
      np.testing.assert_allclose(o, outs[0], rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(g, grads[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n,dtype", [(64, jnp.float32), (1024, jnp.bfloat16),
                                     (16384, jnp.float32), (256, jnp.float16)])
def test_pallas_lowers_for_cuda(n, dtype):
  x = jnp.zeros((8, n), dtype)
  f = jax.jit(lambda v: khad.fwht_pallas(v, normalize=True))
  with cuda_lowering_context():
    text = f.trace(x).lower(lowering_platforms=("cuda",)).as_text()
  assert TRITON_CALL in text


@pytest.mark.parametrize("impl", ["pallas", "auto"])
def test_op_forward_and_backward_lower_for_cuda(monkeypatch, impl):
  # Pretend to be on a GPU so that the op compiles the kernel (no interpreter) and "auto" picks it;
  # jit(grad) must then hold the Triton kernel twice: forward and the custom VJP's backward.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  loss = lambda v: jnp.sum(jnp.sin(ops.fwht(v, axis=0, normalize=True, impl=impl)))
  x = jnp.zeros((512, 4))
  with cuda_lowering_context():
    text = jax.jit(jax.grad(loss)).trace(x).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count(TRITON_CALL) == 2


# ---- native CPU kernel (kernels/csrc/fwht_cpu.cc) ----------------------------------------------


@needs_cxx
@pytest.mark.parametrize("n", [8, 64, 2048, 2**14])
def test_native_float32_large_rows_match_xla(n):
  # Rows longer than the kernel's 256-vector cache block (2048 floats) take the two-phase path.
  x = np.random.default_rng(n).standard_normal((3, n)).astype(np.float32)
  y = jax.jit(lambda v: ops.fwht(v, normalize=True, impl="native"))(x)
  y_xla = ops.fwht(x, normalize=True, impl="xla")
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_xla), rtol=1e-5, atol=1e-5)


@needs_cxx
def test_native_parallel_rows_are_bitwise_the_single_thread_result():
  # 300 rows of 4096: chunks of 64 rows, a ragged last chunk; several pool threads when available.
  from fastnets.kernels import native  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(5).standard_normal((300, 4096, 1)), jnp.float32)
  a = jax.jit(lambda v: native.fwht_native(v, 0.5, parallel=True))(x)
  b = jax.jit(lambda v: native.fwht_native(v, 0.5, parallel=False))(x)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(np.asarray(a[:3, :, 0]), 0.5 * _ref(x[:3, :, 0], -1), rtol=1e-5,
                             atol=1e-4)


@needs_cxx
def test_auto_is_native_on_cpu_and_vmap_works():
  assert jax.default_backend() == "cpu"
  x = np.random.default_rng(4).standard_normal((5, 3, 32)).astype(np.float32)
  hlo = jax.jit(lambda v: ops.fwht(v)).trace(x).lower().as_text()
  assert "fastnets_fwht_f32" in hlo
  y = jax.vmap(lambda v: ops.fwht(v, axis=1, impl="native"), in_axes=1, out_axes=1)(x)
  np.testing.assert_allclose(np.asarray(y), _ref(x, 2), rtol=1e-5, atol=1e-4)


@needs_cxx
def test_native_keeps_data_parallel_sharding_on_four_devices():
  # Without a partitioning rule XLA would all-gather the custom call's operand and replicate it.
  out = run_python("""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from fastnets import ops
mesh = Mesh(np.array(jax.devices()), ("data",))
xn = np.random.default_rng(0).standard_normal((16, 4, 64)).astype(np.float32)
x = jax.device_put(jnp.asarray(xn), NamedSharding(mesh, P("data")))
f = jax.jit(lambda v: ops.fwht(v, axis=-1, impl="native"))
y = f(x)
assert y.sharding.spec == P("data"), y.sharding
assert "all-gather" not in f.lower(x).compile().as_text()
np.testing.assert_allclose(np.asarray(y), np.asarray(ops.fwht(xn, impl="xla")),
                           rtol=1e-5, atol=1e-4)
g = jax.jit(jax.grad(lambda v: jnp.sum(jnp.sin(ops.fwht(v, axis=1, impl="native")))))(x)
assert g.sharding.spec == P("data"), g.sharding
print("ok")
""", devices=4)
  assert "ok" in out


def test_native_disabled_falls_back_to_xla_and_native_raises():
  out = run_python("""
import warnings, jax, jax.numpy as jnp
from fastnets import ops
from fastnets.kernels import native
assert not native.available() and "FASTNETS_NATIVE=0" in native.build_error()
with warnings.catch_warnings(record=True) as w:
  warnings.simplefilter("always")
  hlo = jax.jit(ops.fwht).trace(jnp.ones((2, 8))).lower().as_text()
assert "fastnets_fwht" not in hlo and any("using the XLA path" in str(m.message) for m in w)
try:
  ops.fwht(jnp.ones((2, 8)), impl="native")
except native.NativeBuildError as e:
  print("raised:", e)
""", env={"FASTNETS_NATIVE": "0"})
  assert "raised: fastnets native CPU kernels are unavailable: disabled" in out


@needs_cxx
def test_native_kernel_bad_input():
  from fastnets.kernels import native  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="shape"):
    native.fwht_native(jnp.ones((8,)))
  with pytest.raises(ValueError, match="float32 or float64"):
    native.fwht_native(jnp.ones((8, 1), jnp.bfloat16))
  with pytest.raises(ValueError, match="power of two"):
    native.fwht_native(jnp.ones((6, 1)))


# ---- bad input -----------------------------------------------------------------------------


def test_non_power_of_two_names_length_and_padding_helper():
  with pytest.raises(ValueError, match=r"is 12, which is not a power of two.*pad_to_power_of_two"):
    ops.fwht(jnp.ones((3, 12)))
  with pytest.raises(ValueError, match=r"length of axis 0 .* is 3"):
    ops.fwht(jnp.ones((3, 4)), axis=0)


def test_integer_dtype_is_type_error():
  with pytest.raises(TypeError, match="floating dtype"):
    ops.fwht(jnp.ones((2, 8), jnp.int32))


@pytest.mark.parametrize("axis", [2, -3, 1.0])
def test_bad_axis(axis):
  with pytest.raises(ValueError, match="axis"):
    ops.fwht(jnp.ones((2, 8)), axis=axis)


def test_bad_impl_and_unsupported_pallas():
  with pytest.raises(ValueError, match="impl must be one of"):
    ops.fwht(jnp.ones((2, 8)), impl="cuda")
  with pytest.raises(ValueError, match="impl='pallas' supports lengths 16"):
    ops.fwht(jnp.ones((2, 8)), impl="pallas")
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match="needs a GPU"):
      ops.fwht(jnp.ones((2, 16)), impl="pallas")
  with pytest.raises(ValueError, match="power of two in"):
    khad.fwht_pallas(jnp.ones((2, 2**15)))
  with pytest.raises(ValueError, match="rows_per_block"):
    khad.fwht_pallas(jnp.ones((2, 16)), rows_per_block=3)


def test_padding_helpers():
  assert [ops.next_power_of_two(n) for n in (1, 2, 3, 5, 1024, 1025)] == [1, 2, 4, 8, 1024, 2048]
  with pytest.raises(ValueError, match="positive"):
    ops.next_power_of_two(0)
  x = jnp.arange(6.0).reshape(2, 3)
  p = ops.pad_to_power_of_two(x, axis=-1)
  assert p.shape == (2, 4)
  np.testing.assert_array_equal(np.asarray(p[:, :3]), np.asarray(x))
  assert float(jnp.abs(p[:, 3]).sum()) == 0
  assert ops.pad_to_power_of_two(x, axis=0) is x
  assert ops.fwht(ops.pad_to_power_of_two(jnp.ones((2, 5)))).shape == (2, 8)
  with pytest.raises(ValueError, match="axis"):
    ops.pad_to_power_of_two(x, axis=3)
