"""Bad input across the public API: every invalid argument is refused with an error that names it.

One property test drives a table of public functions with generated invalid values (hypothesis);
then one regression test per finding of the API fuzzing, each of which used to give a
silent wrong result or an unclear error.
"""

import gzip
import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastnets import data, ops
from fastnets import nn as fnn
from fastnets.checks import check_key

X4 = jnp.ones((1, 5, 5, 3))
W_SPARSE = ops.to_sparse_kernel(jnp.ones((3, 3, 3, 2)))
NOT_POSITIVE = st.one_of(st.floats(max_value=0.0, allow_nan=False), st.just(float("nan")),
                         st.just(float("inf")))
NOT_A_SPARSITY = st.one_of(st.floats(max_value=-1e-6, allow_nan=False),
                           st.floats(min_value=1.0, allow_nan=False), st.just(float("nan")))
NOT_A_KEY = st.one_of(st.integers(-5, 2**31), st.just("key"), st.just(1.5),
                      st.just(jnp.zeros((0,), jnp.uint32)), st.just(jnp.zeros((2,), jnp.float32)))

# (function of one bad value, strategy of bad values, words the error must contain)
CASES = {
    "rbf_kernel sigma": (lambda v: ops.rbf_kernel(jnp.ones((2, 3)), jnp.ones((2, 3)), v),
                         NOT_POSITIVE, "sigma"),
    "scale_fastfood_updates mult": (fnn.scale_fastfood_updates, NOT_POSITIVE, "mult"),
    "standardized_distances std": (
        lambda v: ops.standardized_distances(jnp.ones((2, 2)), jnp.zeros((3, 2)), v),
        NOT_POSITIVE, "std"),
    "zhu_gupta final_sparsity": (
        lambda v: ops.zhu_gupta_sparsity(0, final_sparsity=v, begin_step=0, end_step=10),
        NOT_A_SPARSITY, "final_sparsity"),
    "zhu_gupta frequency": (
        lambda v: ops.zhu_gupta_sparsity(0, final_sparsity=0.5, begin_step=0, end_step=10,
                                         frequency=v), st.integers(-10, 0), "frequency"),
    "magnitude_mask sparsity": (lambda v: ops.magnitude_mask(jnp.ones(8), v), NOT_A_SPARSITY,
                                "sparsity"),
    "stochastic_round key": (lambda v: ops.stochastic_round(v, jnp.ones(3), ops.FP8_E5M2),
                             NOT_A_KEY, "key"),
    "round_to_format key": (lambda v: ops.round_to_format(ops.FP16_WANG, key=v), NOT_A_KEY, "key"),
    "quantize mode": (lambda v: ops.quantize(jnp.ones(3), ops.FP8_E5M2, v),
                      st.text(min_size=1).filter(lambda s: s not in ("nearest", "stochastic")),
                      "mode"),
    "FixedPoint integer_bits": (lambda v: ops.FixedPoint(v, 4),
                                st.one_of(st.integers(-5, 0), st.integers(33, 99), st.just(2.0)),
                                "integer_bits"),
    "fwht axis length": (lambda v: ops.fwht(jnp.ones((2, v))),
                         st.integers(3, 200).filter(lambda n: n & (n - 1)), "power of two"),
    "sparse_conv2d strides": (lambda v: ops.sparse_conv2d(X4, W_SPARSE, strides=v, impl="xla"),
                              st.one_of(st.integers(-3, 0), st.just((1, 0))), "strides"),
    "cross_entropy_loss labels": (
        lambda v: ops.cross_entropy_loss(jnp.zeros((2, 4)), jnp.array([0, v])),
        st.one_of(st.integers(4, 1000), st.integers(-1000, -1)), "labels"),
    "reverse_kl_to_uniform counts": (
        lambda v: ops.reverse_kl_to_uniform(jnp.array([3.0, v])),
        st.one_of(st.floats(max_value=-1e-3, allow_nan=False), st.just(float("nan"))), "counts"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_arguments_are_refused_naming_the_argument(case):
  fn, bad_values, words = CASES[case]

  @hypothesis.settings(max_examples=8, deadline=None, derandomize=True)
  @hypothesis.given(bad_values)
  def check(value):
    with pytest.raises((ValueError, TypeError)) as info:
      fn(value)
    assert words in str(info.value), f"{case}: {info.value}"

  check()


def test_numpy_integer_bit_counts_are_python_ints():
  """Was: FixedPoint(np.int16(16), np.int16(16)) overflowed 2 ** bits and, comparing equal to the
  Python-int format, poisoned jit caches for later correct formats."""
  fmt = ops.FixedPoint(np.int16(16), np.int16(16))
  assert type(fmt.integer_bits) is int and fmt == ops.FixedPoint(16, 16)
  out = ops.round_nearest(jnp.array([1e9, -1e9, 1.5]), fmt)
  np.testing.assert_allclose(out, [fmt.max_value, fmt.min_value, 1.5], rtol=1e-6)  # saturates
  assert type(ops.FloatFormat(np.int8(5), np.int8(10)).exponent_bits) is int


def test_huge_stride_does_not_allocate_stride_squared():
  """Was: a stride of 1e5 on a 5x5 input tried to allocate 640 GB."""
  w = jax.random.normal(jax.random.key(0), (3, 3, 3, 2))
  y = ops.sparse_conv2d(X4, ops.to_sparse_kernel(w), strides=100_000, impl="xla")
  ref = jax.lax.conv_general_dilated(X4, w, (100_000, 100_000), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y, ref, rtol=1e-5)


def test_out_of_range_labels_under_jit_make_the_loss_nan():
  loss = jax.jit(ops.cross_entropy_loss)(jnp.zeros((2, 4)), jnp.array([0, 9]))
  assert math.isnan(float(loss))
  # Concrete labels closed over by a jitted function with traced logits are checked, not traced.
  labels = jnp.array([0, 3])
  loss = jax.jit(lambda x: ops.cross_entropy_loss(x, labels))(jnp.zeros((2, 4)))
  np.testing.assert_allclose(loss, np.log(4.0), rtol=1e-6)


def test_hand_built_sparse_kernel_with_bad_coordinates_is_refused():
  bad_rows = W_SPARSE.replace(rows=W_SPARSE.rows.at[0, 0].set(7))
  with pytest.raises(ValueError, match=r"w.rows must lie in \[0, 3\)"):
    ops.sparse_conv2d(X4, bad_rows, impl="xla")
  bad_nnz = W_SPARSE.replace(nnz=W_SPARSE.nnz.at[1].set(99))
  with pytest.raises(ValueError, match="w.nnz must lie in"):
    ops.sparse_conv2d(X4, bad_nnz, impl="xla")
  with pytest.raises(ValueError, match="w.chans must have the shape"):
    ops.sparse_conv2d(X4, W_SPARSE.replace(chans=W_SPARSE.chans[:, :1]), impl="xla")


def test_empty_batch_through_the_pallas_path():
  y = ops.sparse_conv2d(jnp.zeros((0, 5, 5, 3)), W_SPARSE, impl="pallas", interpret=True)
  assert y.shape == (0, 5, 5, 2)


def test_coupling_inverse_checks_shapes_like_the_forward():
  f = lambda p, h: jnp.ones((3,))  # Wrong shape: the halves are (2, 3).
  with pytest.raises(ValueError, match="y1"):
    ops.additive_coupling_inverse(f, lambda p, h: h, None, None, jnp.ones((2, 3)),
                                  jnp.ones((2, 3)))


def test_fastfood_dense_rejects_a_non_finite_init_scale():
  with pytest.raises(ValueError, match="init_scale"):
    fnn.FastfoodDense(4, init_scale=float("nan")).init(jax.random.key(0), jnp.ones((1, 4)))


def test_empty_raw_key_is_refused():
  with pytest.raises(ValueError, match="at least 2 words"):
    check_key(jnp.zeros((0,), jnp.uint32), "f")


@pytest.mark.parametrize("content, words", [
    (b"\x1f\x8b\x08\x00garbage", "cannot be read"),  # a broken gzip stream
    (None, "labels must be non-negative"),
])
def test_corrupt_or_invalid_idx_files_name_the_file(tmp_path, content, words):
  data.write_idx(str(tmp_path / "train-images-idx3-ubyte.gz"), np.zeros((20, 4, 4), np.uint8))
  labels = tmp_path / "train-labels-idx1-ubyte.gz"
  data.write_idx(str(labels), np.full((20,), -1, np.int32))
  if content is not None:
    labels.write_bytes(content)
  with pytest.raises(ValueError, match=words) as info:
    data.load_dataset(f"idx:{tmp_path}")
  assert "train-labels" in str(info.value)


def test_truncated_gzip_names_the_file(tmp_path):
  path = tmp_path / "x.gz"
  path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde")[:-6])
  with pytest.raises(data.IdxFormatError, match="x.gz"):
    data.read_idx(str(path))
