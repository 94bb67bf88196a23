"""Tests of the Block-Term / Tensor-Train formats (`fastnets.ops.block_term`, `tensor_train`,
`einsum_plans`, `factorization`): products against the dense matrix, gradients, norms, parameter
counts and the contraction order."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import opt_einsum
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from fastnets.ops import block_term, einsum_plans, factorization, tensor_train
from tests.tensor_cases import (
  BT_CASES,
  TT_CASES,
  bt_reference,
  np_bt,
  np_tt,
  tt_reference,
)


@pytest.mark.parametrize("in_f,out_f,rank,blocks", BT_CASES)
def test_bt_matmul_matches_dense(in_f, out_f, rank, blocks):
  with jax.enable_x64(True):
    factors, cores = np_bt(0, in_f, out_f, rank, blocks)
    w = block_term.bt_dense(factors, cores)
    np.testing.assert_allclose(w, bt_reference(factors, cores), rtol=1e-12, atol=1e-12)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, math.prod(in_f))))
    y = block_term.bt_matmul(x, factors, cores)
    assert y.shape == (2, 3, math.prod(out_f)) and y.dtype == jnp.float64
    np.testing.assert_allclose(y, x @ w, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("in_f,out_f,ranks", TT_CASES)
def test_tt_matmul_matches_dense(in_f, out_f, ranks):
  with jax.enable_x64(True):
    cores = np_tt(1, in_f, out_f, ranks)
    w = tensor_train.tt_dense(cores)
    np.testing.assert_allclose(w, tt_reference(cores), rtol=1e-12, atol=1e-12)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, math.prod(in_f))))
    np.testing.assert_allclose(tensor_train.tt_matmul(x, cores), x @ w, rtol=1e-11, atol=1e-12)


@settings(max_examples=8, deadline=None)
@given(in_f=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       out_seed=st.integers(0, 10_000), rank=st.integers(1, 3), blocks=st.integers(1, 3),
       batch=st.integers(1, 5))
def test_bt_matmul_property(in_f, out_seed, rank, blocks, batch):
  rng = np.random.default_rng(out_seed)
  out_f = tuple(int(v) for v in rng.integers(1, 4, len(in_f)))
  with jax.enable_x64(True):
    factors, cores = np_bt(out_seed, in_f, out_f, rank, blocks)
    x = jnp.asarray(rng.standard_normal((batch, math.prod(in_f))))
    w = bt_reference(factors, cores)
    np.testing.assert_allclose(block_term.bt_matmul(x, factors, cores), x @ w,
                               rtol=1e-10, atol=1e-11)
    # Linear in x.
    x2 = jnp.asarray(rng.standard_normal(x.shape))
    np.testing.assert_allclose(block_term.bt_matmul(2 * x - x2, factors, cores),
                               2 * block_term.bt_matmul(x, factors, cores)
                               - block_term.bt_matmul(x2, factors, cores),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("optimize", ["optimal", "size", "dp", "greedy", "left_to_right"])
def test_strategies_agree(optimize):
  with jax.enable_x64(True):
    in_f, out_f = (2, 3, 4), (3, 2, 2)
    factors, cores = np_bt(2, in_f, out_f, 2, 2)
    tt = np_tt(3, in_f, out_f, 3)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((5, 24)))
    np.testing.assert_allclose(block_term.bt_matmul(x, factors, cores, optimize=optimize),
                               x @ block_term.bt_dense(factors, cores), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(tensor_train.tt_matmul(x, tt, optimize=optimize),
                               x @ tensor_train.tt_dense(tt),
                               rtol=1e-11, atol=1e-12)


def test_bt_num_params_formula_by_hand():
  # The paper's UCF11 shapes: 57600 = 8x20x20x18 -> 256 = 4x4x4x4, R = 2, C = 2.
  # C (sum_n I_n J_n R + R^N) = 2 * ((32 + 80 + 80 + 72) * 2 + 16) = 1088.
  assert block_term.bt_num_params((8, 20, 20, 18), (4, 4, 4, 4), 2, 2) == 1088
  # TT, ranks (1, 3, 3, 3, 1): 1*8*4*3 + 3*20*4*3 + 3*20*4*3 + 3*18*4*1 = 96+720+720+216.
  assert tensor_train.tt_num_params((8, 20, 20, 18), (4, 4, 4, 4), 3) == 1752


def test_bt_matmul_grads():
  with jax.enable_x64(True):
    factors, cores = np_bt(5, (2, 3), (2, 2), 2, 2)
    x = jnp.asarray(np.random.default_rng(6).standard_normal((3, 6)))
    f = jax.jit(lambda x, factors, cores: block_term.bt_matmul(x, factors, cores))
    check_grads(f, (x, factors, cores), order=1, modes=["rev"])
    # Against autodiff of x @ W with W materialised.
    g = jnp.asarray(np.random.default_rng(7).standard_normal((3, 4)))
    ours, ref = jax.jit(lambda *a: (
        jax.grad(lambda *a: jnp.sum(f(*a) * g), argnums=(0, 1, 2))(*a),
        jax.grad(lambda x, fs, c: jnp.sum((x @ block_term.bt_dense(fs, c)) * g),
                 argnums=(0, 1, 2))(*a)
    ))(x, factors, cores)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12), ours,
                 ref)


def test_tt_matmul_grads():
  with jax.enable_x64(True):
    cores = np_tt(8, (2, 3, 2), (2, 1, 2), 2)
    x = jnp.asarray(np.random.default_rng(9).standard_normal((3, 12)))
    check_grads(jax.jit(lambda x, c: tensor_train.tt_matmul(x, c)), (x, cores), order=1,
                modes=["rev"])


@pytest.mark.parametrize("in_f,out_f,rank,blocks", BT_CASES)
def test_bt_sqnorm_matches_dense(in_f, out_f, rank, blocks):
  with jax.enable_x64(True):
    factors, cores = np_bt(5, in_f, out_f, rank, blocks)
    w = bt_reference(factors, cores)
    np.testing.assert_allclose(block_term.bt_sqnorm(factors, cores), np.sum(w ** 2), rtol=1e-11)
    rescaled = block_term.bt_rescale_to_norm(factors, cores, scale=0.5)
    w2 = np.asarray(block_term.bt_dense(factors, rescaled))
    np.testing.assert_allclose(np.mean(w2 ** 2) * math.prod(in_f), 0.5, rtol=1e-11)


@pytest.mark.parametrize("in_f,out_f,ranks", TT_CASES)
def test_tt_sqnorm_matches_dense(in_f, out_f, ranks):
  with jax.enable_x64(True):
    cores = np_tt(6, in_f, out_f, ranks)
    np.testing.assert_allclose(tensor_train.tt_sqnorm(cores), np.sum(tt_reference(cores) ** 2),
                               rtol=1e-11)
    last = tensor_train.tt_rescale_to_norm(cores, scale=2.0)
    w2 = np.asarray(tensor_train.tt_dense(cores[:-1] + [last]))
    np.testing.assert_allclose(np.mean(w2 ** 2) * math.prod(in_f), 2.0, rtol=1e-11)


def test_exact_init_norm_ops_every_seed():
  # With one Tucker rank the single core entry scales all of W: without the rescaling the
  # realised mean square varies by orders of magnitude between seeds; with it, it is scale / I.
  in_f, out_f = (4, 7, 4, 7), (8, 4, 2, 4)
  for exact in (True, False):
    ratios = np.array([
        float(block_term.bt_sqnorm(*block_term.bt_init(
            jax.random.key(s), in_f, out_f, 1, 1, scale=2.0, exact_norm=exact))) / 256
        for s in range(6)])
    if exact:
      np.testing.assert_allclose(ratios, 2.0, rtol=1e-4)
    else:
      assert np.ptp(np.log(ratios)) > 0.5, ratios
  tt = tensor_train.tt_init(jax.random.key(3), in_f, out_f, 2, scale=2.0)
  np.testing.assert_allclose(float(tensor_train.tt_sqnorm(tt)) / 256, 2.0, rtol=1e-4)


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
  plan = block_term.bt_matmul_flops(batch, in_f, out_f, rank, blocks)
  f_shapes, c_shape = block_term.bt_shapes(in_f, out_f, rank, blocks)
  shapes = [(batch,) + in_f] + f_shapes + [c_shape]
  brute = min(einsum_plans.einsum_path_flops(plan.subscripts, shapes, p)[0]
              for p in _all_paths(len(shapes)))
  assert plan.flops == brute
  # Our independent FLOP count agrees with opt_einsum's on the chosen path.
  _, info = opt_einsum.contract_path(plan.subscripts, *shapes, shapes=True,
                                     optimize=list(plan.path))
  assert plan.flops == info.opt_cost
  for other in ["left_to_right", "greedy", "size"]:
    other_plan = block_term.bt_matmul_flops(batch, in_f, out_f, rank, blocks, other)
    assert other_plan.flops >= plan.flops
  assert plan.dense_flops == 2 * batch * math.prod(in_f) * math.prod(out_f)


def test_flops_sanity_for_the_paper_sizes():
  # 784 -> 4 x 256 gates (LSTM): BT with rank 2 is far cheaper than the dense product.
  plan = block_term.bt_matmul_flops(256, (4, 7, 4, 7), (16, 4, 4, 4), 2, 1)
  assert plan.flops * 10 < plan.dense_flops
  naive = block_term.bt_matmul_flops(256, (4, 7, 4, 7), (16, 4, 4, 4), 2, 1, "left_to_right")
  assert plan.flops < naive.flops
  tt_plan = tensor_train.tt_matmul_flops(256, (4, 7, 4, 7), (16, 4, 4, 4), 4)
  assert tt_plan.flops < tt_plan.dense_flops
  # The chosen path depends on the batch (cached per shape) and is deterministic.
  assert block_term.bt_matmul_flops(256, (4, 7, 4, 7), (16, 4, 4, 4), 2, 1) == plan


def test_balanced_factors():
  assert factorization.balanced_factors(784, 4) == (4, 4, 7, 7)
  assert factorization.balanced_factors(4096, 4) == (8, 8, 8, 8)
  assert factorization.balanced_factors(13, 2) == (1, 13)
  for n, k in [(256, 4), (57600, 4), (1000, 3)]:
    f = factorization.balanced_factors(n, k)
    assert math.prod(f) == n and len(f) == k
