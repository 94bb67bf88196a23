"""PacGAN: packing order and errors, the mode-collapse metrics on hand-made samples, the synthetic
data, the G/D shapes and initialisation, and the GAN step / scan / vmap loop."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastnets import train
from fastnets.data import synthetic
from fastnets.models import pacgan as models
from fastnets.nn.packing import Packed, packed
from fastnets.ops import gan as gan_ops
from fastnets.ops import gan_metrics
from fastnets.ops import packing as P
from fastnets.train import gan

# ----------------------------------------------------------------------------------- packing ---

def test_pack_is_m_consecutive_samples_vectors():
  x = jnp.arange(12 * 2).reshape(12, 2)
  out = P.pack(x, 3)
  assert out.shape == (4, 6)
  for i in range(4):
    np.testing.assert_array_equal(out[i], np.concatenate([x[3 * i], x[3 * i + 1], x[3 * i + 2]]))


def test_pack_images_concatenates_channels_in_sample_order():
  x = jax.random.normal(jax.random.key(0), (6, 4, 5, 3))
  out = P.pack(x, 2)
  assert out.shape == (3, 4, 5, 6)
  for i in range(3):
    for j in range(2):
      np.testing.assert_array_equal(out[i, ..., 3 * j:3 * j + 3], x[2 * i + j])


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2))
def test_pack_unpack_round_trip(m, n, c, extra_dims):
  shape = (n * m,) + (2,) * extra_dims + (c,)
  x = jnp.arange(math.prod(shape), dtype=jnp.float32).reshape(shape)
  packs = P.pack(x, m)
  assert packs.shape == (n,) + (2,) * extra_dims + (m * c,)
  np.testing.assert_array_equal(P.unpack(packs, m), x)


def test_concat_packs_pairs_the_ith_samples_of_each_batch():
  a, b, c = (jnp.full((5, 2), v) + jnp.arange(5)[:, None] for v in (0.0, 10.0, 20.0))
  out = P.concat_packs([a, b, c])
  assert out.shape == (5, 6)
  np.testing.assert_array_equal(out[3], [3, 3, 13, 13, 23, 23])


def test_indivisible_batch_is_an_error_unless_drop_remainder():
  x = jnp.arange(10 * 2).reshape(10, 2)
  with pytest.raises(ValueError, match="not divisible by the pack degree m=3"):
    P.pack(x, 3)
  out = P.pack(x, 3, drop_remainder=True)
  assert out.shape == (3, 6)
  np.testing.assert_array_equal(out[2], x[6:9].reshape(-1))
  with pytest.raises(ValueError, match="smaller than the pack degree"):
    P.pack(x[:2], 3, drop_remainder=True)


def test_bad_pack_degrees_and_inputs():
  x = jnp.zeros((4, 2))
  with pytest.raises(ValueError, match="degree"):
    P.pack(x, 0)
  with pytest.raises(TypeError, match="degree"):
    P.pack(x, 2.0)
  with pytest.raises(TypeError, match="degree"):
    P.pack(x, True)
  with pytest.raises(ValueError, match="at least 2-D"):
    P.pack(jnp.zeros(4), 2)
  with pytest.raises(ValueError, match="same shape"):
    P.concat_packs([jnp.zeros((4, 2)), jnp.zeros((3, 2))])
  with pytest.raises(TypeError, match="sequence"):
    P.concat_packs(jnp.zeros((4, 2)))
  with pytest.raises(ValueError, match="not divisible"):
    P.unpack(jnp.zeros((2, 5)), 2)
  assert P.num_packs(12, 4) == 3 and P.num_packs(np.int64(13), 4, drop_remainder=True) == 3


class _Echo(nn.Module):
  """A 'discriminator' that returns its (packed) input, to see exactly what D receives."""

  @nn.compact
  def __call__(self, x, train=False):
    return x


def test_packed_module_wraps_any_discriminator():
  x = jnp.arange(8 * 2, dtype=jnp.float32).reshape(8, 2)
  d = packed(_Echo(), 4)
  np.testing.assert_array_equal(d.apply({}, x), P.pack(x, 4))
  batches = [x[:2], x[2:4], x[4:6], x[6:8]]
  np.testing.assert_array_equal(d.apply({}, batches), P.concat_packs(batches))
  with pytest.raises(ValueError, match="exactly degree=4"):
    d.apply({}, batches[:3])
  with pytest.raises(ValueError, match="not divisible"):
    d.apply({}, x[:6])
  assert Packed(_Echo(), degree=4, drop_remainder=True).apply({}, x[:7]).shape == (1, 8)
  with pytest.raises(ValueError, match="degree"):
    packed(_Echo(), 0)


# ----------------------------------------------------------------------------------- metrics ---

RING = synthetic.ring_means()


def test_metrics_all_modes_hit_uniformly():
  x = np.repeat(RING, 3, axis=0) + 0.02  # 2 std off each mean (standardized distance 2.83 < 3).
  m = gan_metrics.mode_collapse_metrics(x, RING, 0.01)
  assert int(m["modes"]) == 8 and float(m["high_quality"]) == 1.0
  assert abs(float(m["reverse_kl"])) < 1e-6
  np.testing.assert_array_equal(m["counts"], np.full(8, 3))


def test_metrics_one_mode_only():
  x = np.repeat(RING[2:3], 10, axis=0)
  m = gan_metrics.mode_collapse_metrics(x, RING, 0.01)
  assert int(m["modes"]) == 1 and float(m["high_quality"]) == 1.0
  np.testing.assert_allclose(float(m["reverse_kl"]), math.log(8), rtol=1e-6)


def test_metrics_no_mode_and_threshold_is_strict():
  far = np.zeros((5, 2), np.float32)  # the ring's centre: 100 std from every mode.
  m = gan_metrics.mode_collapse_metrics(far, RING, 0.01)
  assert int(m["modes"]) == 0 and float(m["high_quality"]) == 0.0
  assert np.isnan(float(m["reverse_kl"]))  # 0/0, as in the paper's code.
  at3 = RING[:1] + np.array([[0.0, 0.03]], np.float32)  # exactly 3 std: not high quality.
  inside = RING[:1] + np.array([[0.0, 0.0299]], np.float32)
  assert int(gan_metrics.mode_collapse_metrics(at3, RING, 0.01)["modes"]) == 0
  assert int(gan_metrics.mode_collapse_metrics(inside, RING, 0.01)["modes"]) == 1


def test_metrics_mixed_histogram_kl_by_hand():
  # counts (2, 1, 1, 0, ..., 0) + one low-quality sample: p = (1/2, 1/4, 1/4).
  x = np.concatenate([RING[[0, 0, 1, 2]], np.zeros((1, 2), np.float32)])
  m = gan_metrics.mode_collapse_metrics(x, RING, 0.01)
  assert int(m["modes"]) == 3
  np.testing.assert_allclose(float(m["high_quality"]), 4 / 5)
  expected = 0.5 * math.log(0.5 * 8) + 2 * 0.25 * math.log(0.25 * 8)  # = 1.5 log 2
  np.testing.assert_allclose(float(m["reverse_kl"]), expected, rtol=1e-6)
  np.testing.assert_allclose(float(gan_metrics.reverse_kl_to_uniform(jnp.array([2, 1, 1, 0, 0, 0,
                                                                                  0, 0]))),
                             1.5 * math.log(2), rtol=1e-6)


def test_metrics_standardize_by_each_modes_std():
  means = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
  x = np.array([[0.45, 0.0]], np.float32)  # nearer mode 0 in distance, mode 1 in std units.
  counts = gan_metrics.mode_histogram(x, means, np.array([0.1, 1.0]))
  np.testing.assert_array_equal(counts, [0, 1])
  with pytest.raises(ValueError, match="std must be"):
    gan_metrics.mode_histogram(x, means, np.ones(3))
  with pytest.raises(ValueError, match="counts"):
    gan_metrics.reverse_kl_to_uniform(jnp.zeros((2, 2)))


def test_stacked_mnist_metrics_by_hand():
  digits = np.array([[1, 2, 3], [1, 2, 3], [4, 5, 6]])
  m = gan_metrics.stacked_mnist_metrics(digits)
  assert int(m["modes"]) == 2 and int(m["counts"][123]) == 2 and int(m["counts"][456]) == 1
  expected = 2 / 3 * math.log(1000 * 2 / 3) + 1 / 3 * math.log(1000 / 3)
  np.testing.assert_allclose(float(m["reverse_kl"]), expected, rtol=1e-5)
  with pytest.raises(ValueError, match="0..9"):
    gan_metrics.stacked_mnist_metrics(np.array([[1, 2, 10]]))


# ------------------------------------------------------------------------------------ losses ---

def test_losses_and_maxout():
  np.testing.assert_allclose(float(gan_ops.discriminator_loss(jnp.zeros(4), jnp.zeros(4))),
                             2 * math.log(2), rtol=1e-6)
  np.testing.assert_allclose(float(gan_ops.generator_loss(jnp.zeros(4))), math.log(2), rtol=1e-6)
  assert float(gan_ops.generator_loss(jnp.full(3, -200.0))) == pytest.approx(200.0)  # no inf.
  x = jnp.array([[1.0, 5.0, 3.0, 2.0, 0.0, 4.0]])  # (pieces 3, units 2): max(1,3,0), max(5,2,4)
  np.testing.assert_array_equal(gan_ops.maxout(x, 3), [[3.0, 5.0]])
  with pytest.raises(ValueError, match="divisible"):
    gan_ops.maxout(x, 4)


# --------------------------------------------------------------------------------------- data ---

def test_ring_and_grid_statistics():
  ring = synthetic.make_ring(seed=1)
  assert ring.points.shape == (100_000, 2) and ring.points.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(ring.means, axis=1), 1.0, rtol=1e-6)
  counts = np.bincount(ring.labels, minlength=8)
  assert np.all(np.abs(counts - 12_500) < 600)  # uniform mode choice (about 5 sigma).
  resid = ring.points - ring.means[ring.labels]
  np.testing.assert_allclose(resid.std(axis=0), 0.01, rtol=0.02)
  np.testing.assert_allclose(resid.mean(axis=0), 0.0, atol=2e-4)
  grid = synthetic.make_grid(seed=1)
  assert {tuple(m) for m in grid.means} == {(a, b) for a in range(-4, 5, 2)
                                            for b in range(-4, 5, 2)}
  np.testing.assert_allclose((grid.points - grid.means[grid.labels]).std(axis=0), 0.05, rtol=0.02)
  np.testing.assert_array_equal(synthetic.make_grid(seed=1).points, grid.points)  # drawn once
  assert not np.array_equal(synthetic.make_grid(seed=2).points, grid.points)
  with pytest.raises(ValueError, match="unknown synthetic set"):
    synthetic.load_synthetic("spiral")


def test_stacked_mnist(mnist):
  stacks = synthetic.make_stacked_mnist(seed=0, num_examples=20_000, dataset=mnist)
  images, modes = stacks.get(np.arange(5))
  assert images.shape == (5, 28, 28, 3) and images.dtype == np.uint8
  for c in range(3):
    np.testing.assert_array_equal(images[:, :, :, c:c + 1], stacks.digits[stacks.index[:5, c]])
  d = stacks.labels[:5]
  np.testing.assert_array_equal(modes, 100 * d[:, 0] + 10 * d[:, 1] + d[:, 2])
  assert np.unique(stacks.modes).size > 990  # 20,000 uniform draws cover the 1,000 modes.
  x = synthetic.to_tanh_range(np.array([0, 255], np.uint8))
  np.testing.assert_allclose(x, [-1.0, 1.0])


# ------------------------------------------------------------------------------------- models ---

def test_generator_and_discriminator_shapes_and_init_std():
  g = models.MLPGenerator()
  gv = jax.jit(g.init)(jax.random.key(0), jnp.zeros((3, 2)))
  p = gv["params"]
  assert set(p["Dense_0"]) == {"kernel"} and p["Dense_0"]["kernel"].shape == (2, 400)
  assert set(p["Dense_4"]) == {"kernel", "bias"} and p["Dense_4"]["kernel"].shape == (400, 2)
  assert "BatchNorm_3" in p and "batch_stats" in gv
  assert abs(float(jnp.std(p["Dense_1"]["kernel"])) - 0.02) < 0.001
  out = jax.eval_shape(lambda v, z: g.apply(v, z, train=True, mutable=["batch_stats"])[0], gv,
                       jnp.ones((5, 2)))
  assert out.shape == (5, 2)
  d = Packed(models.MaxoutDiscriminator(), degree=3)
  dv = jax.jit(d.init)(jax.random.key(1), jnp.zeros((6, 2)))
  dp = dv["params"]["discriminator"]
  assert dp["Dense_0"]["kernel"].shape == (6, 1000)      # input 2m, 200 units x 5 pieces
  assert dp["Dense_1"]["kernel"].shape == (200, 1000) and dp["Dense_3"]["kernel"].shape == (200, 1)
  assert abs(float(jnp.std(dp["Dense_1"]["kernel"])) - 0.02) < 0.001
  assert jax.eval_shape(d.apply, dv, jnp.ones((9, 2))).shape == (3,)


def test_dcgan_pair_shapes():
  g = models.DCGANGenerator(features=4)
  gv = jax.jit(g.init)(jax.random.key(0), jnp.zeros((2, 10)))
  img = jax.jit(g.apply)(gv, jnp.ones((2, 10)))
  assert img.shape == (2, 28, 28, 3) and float(jnp.max(jnp.abs(img))) <= 1.0
  d = Packed(models.DCGANDiscriminator(features=4), degree=2)
  dv = jax.eval_shape(d.init, jax.random.key(1), jnp.zeros((2, 28, 28, 3)))
  assert dv["params"]["discriminator"]["Conv_0"]["kernel"].shape == (4, 4, 6, 4)
  assert jax.eval_shape(d.apply, dv, jnp.zeros((4, 28, 28, 3))).shape == (2,)


# ------------------------------------------------------------------------------------ training ---

def _tiny(degree):
  g = models.MLPGenerator(hidden=8, depth=2)
  d = Packed(models.MaxoutDiscriminator(hidden=8, pieces=2, depth=2), degree=degree)
  return g, d, gan.GANConfig(batch_size=6, learning_rate=1e-2)


def test_one_gan_step_changes_both_networks():
  g, d, cfg = _tiny(2)
  state = gan.init_gan_state(g, d, cfg, jax.random.key(0), (2,))
  data = jnp.asarray(synthetic.make_ring(num_points=500).points)
  step = gan.make_gan_step(g, d, cfg)
  new, hist = gan.train_gan(step, state, data, jax.random.key(1), 1, verbose=False)
  assert int(new.step) == 1 and hist[0]["step"] == 1
  assert all(np.isfinite(hist[0][k]) for k in ("d_loss", "g_loss", "d_real", "d_fake"))
  for old_tree, new_tree in ((state.g_params, new.g_params), (state.d_params, new.d_params),
                             (state.g_state, new.g_state)):
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), old_tree, new_tree)
    assert all(jax.tree.leaves(changed)), changed


def test_scan_chunks_and_vmapped_replicas_match_single_steps():
  g, d, cfg = _tiny(3)
  data = jnp.asarray(synthetic.make_ring(num_points=500).points)
  step = gan.make_gan_step(g, d, cfg)
  key = jax.random.key(7)
  s0 = gan.init_gan_state(g, d, cfg, jax.random.key(0), (2,))
  # Three steps one by one with the loop's key schedule (fold_in(key, step)) ...
  jstep = jax.jit(step)
  ref = s0
  for t in range(3):
    ref, _ = jstep(ref, data, jax.random.fold_in(key, t))
  # ... equal replica 0 of two vmapped runs trained in scan chunks of 2 + 1 steps.
  s1 = gan.init_gan_state(g, d, cfg, jax.random.key(1), (2,))
  both = jax.tree.map(lambda a, b: jnp.stack([a, b]), s0, s1)
  keys = jnp.stack([key, jax.random.key(8)])
  lines = []
  two, hist = gan.train_gan(step, both, jnp.stack([data, data]), keys, 3, chunk_size=2,
                            replicas=2, log=lines.append)
  assert [h["step"] for h in hist] == [2, 3] and len(hist[0]["d_loss"]) == 2
  assert len(lines) == 2 and "steps/s" in lines[0] and "ETA" in lines[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
               jax.tree.map(lambda x: x[0], two), ref)
  assert not np.allclose(two.g_params["Dense_0"]["kernel"][0],
                         two.g_params["Dense_0"]["kernel"][1])
  samples = gan.generate(g, ref, jax.random.key(3), 11, cfg)
  assert samples.shape == (11, 2)


def test_gan_run_resumes_from_its_checkpoint_exactly(tmp_path):
  g, d, cfg = _tiny(2)
  data = jnp.asarray(synthetic.make_ring(num_points=500).points)
  step = gan.make_gan_step(g, d, cfg)
  s0 = gan.init_gan_state(g, d, cfg, jax.random.key(0), (2,))
  key = jax.random.key(4)
  full, full_hist = gan.train_gan(step, s0, data, key, 6, chunk_size=2, verbose=False)
  # Stopped after 4 steps (checkpoints at 2 and 4), then rerun to 6 in the same workdir.
  wd = str(tmp_path / "run")
  gan.train_gan(step, s0, data, key, 4, chunk_size=2, verbose=False, workdir=wd,
                checkpoint_every=2)
  lines = []
  resumed, hist = gan.train_gan(step, s0, data, key, 6, chunk_size=2, workdir=wd, log=lines.append)
  assert lines[0].startswith("[gan] resumed from step 4")
  assert [h["step"] for h in hist] == [2, 4, 6] and int(resumed.step) == 6
  jax.tree.map(np.testing.assert_array_equal, resumed, full)
  np.testing.assert_allclose(hist[-1]["d_loss"], full_hist[-1]["d_loss"])
  with pytest.raises(train.WorkdirMismatchError, match="chunk_size"):
    gan.train_gan(step, s0, data, key, 8, chunk_size=4, verbose=False, workdir=wd)
  with pytest.raises(ValueError, match="needs a workdir"):
    gan.train_gan(step, s0, data, key, 2, checkpoint_every=2)


def test_gan_config_validation():
  with pytest.raises(ValueError, match="noise"):
    gan.GANConfig(noise="laplace")
  with pytest.raises(ValueError, match="batch_size"):
    gan.GANConfig(batch_size=0)


# ---------------------------------------------------------------------------------- experiment ---

def test_report_rows_verdicts_are_paired_intervals_and_count_undefined_runs():
  from experiments import pacgan as exp

  def entry(modes, kl):
    return {"modes": modes, "modes_se": 0.1, "high_quality": 0.9, "high_quality_se": 0.01,
            "reverse_kl": kl, "reverse_kl_se": 0.01, "runs": 3}
  metrics = {"ring": {"GAN": entry(5.0, 0.6), "PacGAN2": entry(7.0, 0.2)},
             "grid": {"GAN": entry(15.0, 0.8), "PacGAN2": entry(20.0, 0.3)}}
  runs = []
  for seed in range(4):
    for dataset in ("ring", "grid"):
      runs.append(dict(variant="GAN", dataset=dataset, seed=seed, modes=5 + seed % 2,
                       high_quality=0.9, reverse_kl=0.6 + 0.01 * seed))
      runs.append(dict(variant="PacGAN2", dataset=dataset, seed=seed,
                       modes=(7 + seed % 2) if dataset == "ring" else 5 + (seed % 3 == 0),
                       high_quality=0.5 if dataset == "ring" else 0.89,
                       reverse_kl=float("nan") if (dataset, seed) == ("grid", 0) else 0.2))
  config = exp.common.merge_config(exp.DEFAULTS, exp.QUICK)
  rows = exp.report_rows({"metrics": metrics, "config": config, "runs": runs})
  verdicts = {(r["technique"].split(":")[0], r["technique"].split(", ")[-1]): r["verdict"]
              for r in rows}
  assert verdicts[("PacGAN (2-D ring)", "modes")] == "reproduced on a proxy"
  assert verdicts[("PacGAN (2-D ring)", "reverse kl")] == "reproduced on a proxy"
  assert verdicts[("PacGAN (2-D ring)", "high quality")] == "not reproduced"
  assert verdicts[("PacGAN (2-D grid)", "modes")] == "inconclusive"
  # The grid run without a high-quality sample is counted, and leaves 3 paired seeds.
  kl_grid = next(r for r in rows if r["technique"] == "PacGAN (2-D grid): PacGAN2 vs GAN, "
                 "reverse kl")
  assert "undefined): PacGAN2 1, GAN 0" in kl_grid["ours"] and "(3 seeds)" in kl_grid["ours"]
  assert all(r["scale"] == "proxy" for r in rows)
  pair = exp.paired_runs(runs, "grid", "PacGAN2", "GAN", "reverse_kl")
  assert pair["seeds"] == [1, 2, 3] and pair["undefined"] == {"variant": 1, "base": 0}
  table = exp._table1(metrics, ["ring"], ["GAN", "PacGAN2"])
  assert "7.0 ± 0.1 / 7.9 ± 0.1" in table
