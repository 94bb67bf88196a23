"""Mode-collapse metrics of PacGAN (Lin, Khetan, Fanti, Oh, NeurIPS 2018, Section 4.1, Table 1-2).

As the official code (fjxmlzn/PacGAN: synthetic_data_experiments/.../extensions.py `MetricLogger`
and stacked_MNIST_experiments/.../model.py `log_metrics`) computes them:

Gaussian mixtures (2-D ring and grid), on 2,500 generated samples:
  * each sample's standardized distance to mode k is sqrt(sum_d (x_d - mu_kd)^2 / var_kd) (the
    diagonal of the mode's covariance); its nearest mode is the one at the smallest standardized
    distance;
  * a sample is *high quality* when that smallest distance is < 3 (strictly);
  * the mode histogram counts high-quality samples per nearest mode (low-quality samples are in no
    bin);
  * modes = number of bins with at least one high-quality sample;
  * high quality = (number of high-quality samples) / (number of samples);
  * reverse KL = KL(p || u) = sum_k p_k log(p_k / u_k), p the normalised histogram (the model's
    mode distribution), u uniform over the K modes (the true one). "Reverse" because the model's
    distribution comes first. Empty bins (p_k = 0) contribute 0 (0 log 0 = 0, the code skips them),
    so the value is finite: between 0 (uniform) and log K (all in one mode). With no high-quality
    sample at all, p is 0/0: the code's value is NaN, and so is ours.

Frechet distance (`frechet_distance`, Heusel et al. 2017, the distance behind FID): the
2-Wasserstein distance between Gaussians fitted to two feature samples. FID evaluates it on
Inception-v3 features; where that network is not available, the features of any fixed classifier
give the same statistic in another feature space (not comparable with published FIDs).

Stacked MNIST: a digit classifier labels each of the three channels; the mode is the triple
(1,000 modes); every sample is counted (no quality threshold); modes = distinct triples seen;
KL = KL(p || uniform over 1,000) with empty bins contributing 0, as above.
"""

from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

HIGH_QUALITY_THRESHOLD = 3.0
NUM_EVAL_SAMPLES = 2500
STACKED_MNIST_MODES = 1000


def reverse_kl_to_uniform(counts: jax.Array) -> jax.Array:
  """KL(p || uniform) of a histogram, empty bins contributing 0 (PacGAN's code).

  Args:
    counts: (K,) non-negative counts (int or float) of samples per mode.

  Returns:
    float32 scalar sum_{k: p_k > 0} p_k log(K p_k), p = counts / sum(counts); NaN when the
    histogram is empty (sum 0), as in the paper's code.

  Raises:
    ValueError: `counts` is not 1-D or empty, or (when concrete) negative or non-finite.
  """
  counts = jnp.asarray(counts)
  if counts.ndim != 1 or counts.shape[0] == 0:
    raise ValueError(f"counts must be a non-empty 1-D histogram (K,), got shape {counts.shape}.")
  if not isinstance(counts, jax.core.Tracer) and not bool(
      jnp.all(jnp.isfinite(counts.astype(jnp.float32)) & (counts >= 0))):
    raise ValueError(f"counts must be non-negative and finite, got {counts}.")
  counts = counts.astype(jnp.float32)
  total = jnp.sum(counts)
  p = counts / total  # NaN everywhere when total == 0 (kept: the KL is undefined).
  k = counts.shape[0]
  safe_p = jnp.where(counts > 0, p, 1.0)
  terms = jnp.where(counts > 0, p * jnp.log(safe_p * k), 0.0)
  return jnp.where(total > 0, jnp.sum(terms), jnp.nan)


def standardized_distances(samples: jax.Array, means: jax.Array,
                           std: Union[float, jax.Array]) -> jax.Array:
  """Distance of every sample to every mode in units of the mode's standard deviation.

  Args:
    samples: (N, D) float samples.
    means: (K, D) float mode means.
    std: the modes' standard deviation: a scalar (isotropic, shared), (K,) per mode, or (K, D)
      per mode and dimension (the diagonal of the covariance, as the paper's code uses).

  Returns:
    (N, K) float32, sqrt(sum_d (x_nd - mu_kd)^2 / std_kd^2).

  Raises:
    ValueError: shapes that do not match, or a non-positive std.
  """
  samples = jnp.asarray(samples, jnp.float32)
  means = jnp.asarray(means, jnp.float32)
  if samples.ndim != 2 or means.ndim != 2 or samples.shape[1] != means.shape[1]:
    raise ValueError(f"samples must be (N, D) and means (K, D) with the same D; got "
                     f"{samples.shape} and {means.shape}.")
  std = jnp.asarray(std, jnp.float32)
  k, d = means.shape
  if std.ndim == 0:
    std = jnp.broadcast_to(std, (k, d))
  elif std.shape == (k,):
    std = jnp.broadcast_to(std[:, None], (k, d))
  elif std.shape != (k, d):
    raise ValueError(f"std must be a scalar, (K,)=({k},) or (K, D)=({k}, {d}); got {std.shape}.")
  if not isinstance(std, jax.core.Tracer) and not bool(jnp.all(std > 0) & jnp.all(
      jnp.isfinite(std))):
    raise ValueError("std must be positive and finite.")
  diff = (samples[:, None, :] - means[None, :, :]) / std[None]
  return jnp.sqrt(jnp.sum(diff * diff, axis=-1))


def mode_histogram(samples: jax.Array, means: jax.Array, std: Union[float, jax.Array],
                   threshold: float = HIGH_QUALITY_THRESHOLD) -> jax.Array:
  """Counts of high-quality samples per nearest mode (see the module docstring).

  Returns:
    (K,) int32 counts; sum = number of high-quality samples.
  """
  dist = standardized_distances(samples, means, std)
  nearest = jnp.argmin(dist, axis=1)
  good = jnp.min(dist, axis=1) < threshold
  return jnp.zeros((means.shape[0],), jnp.int32).at[nearest].add(good.astype(jnp.int32))


def mode_collapse_metrics(samples: jax.Array, means: jax.Array, std: Union[float, jax.Array],
                          threshold: float = HIGH_QUALITY_THRESHOLD) -> dict:
  """PacGAN's Table 1 metrics of generated samples against a Gaussian mixture's modes.

  Args:
    samples: (N, D) generated samples (the paper uses N = 2,500).
    means: (K, D) mode means.
    std: the modes' standard deviation (scalar, (K,) or (K, D); see `standardized_distances`).
    threshold: standardized distance under which a sample is high quality (the paper: 3).

  Returns:
    dict of jax scalars/arrays: "modes" (int32, modes with >= 1 high-quality sample),
    "high_quality" (float32 fraction in [0, 1]), "reverse_kl" (float32, KL(p || uniform), NaN if
    no high-quality sample), "counts" ((K,) int32 histogram).
  """
  counts = mode_histogram(samples, means, std, threshold)
  n = samples.shape[0]
  return {
      "modes": jnp.sum(counts > 0).astype(jnp.int32),
      "high_quality": jnp.sum(counts).astype(jnp.float32) / n,
      "reverse_kl": reverse_kl_to_uniform(counts),
      "counts": counts,
  }


def stacked_mnist_modes(digits: jax.Array) -> jax.Array:
  """The stacked-MNIST mode of each sample: 100 * d0 + 10 * d1 + d2 (0..999).

  Args:
    digits: (N, 3) int predicted digits of the three channels (each 0..9).

  Returns:
    (N,) int32 mode ids.

  Raises:
    ValueError: shape not (N, 3), or (concrete) digits outside 0..9.
  """
  digits = jnp.asarray(digits)
  if digits.ndim != 2 or digits.shape[1] != 3:
    raise ValueError(f"digits must be (N, 3) (one digit per channel), got {digits.shape}.")
  if not isinstance(digits, jax.core.Tracer):
    arr = np.asarray(digits)
    if arr.size and (arr.min() < 0 or arr.max() > 9):
      raise ValueError("digits must lie in 0..9.")
  digits = digits.astype(jnp.int32)
  return 100 * digits[:, 0] + 10 * digits[:, 1] + digits[:, 2]


def stacked_mnist_metrics(digits: jax.Array) -> dict:
  """PacGAN's Table 2 metrics: modes hit out of 1,000 and KL(p || uniform over 1,000).

  Every sample counts (no quality threshold), as in the paper's code.

  Args:
    digits: (N, 3) int digits predicted by a classifier for the three channels.

  Returns:
    dict: "modes" (int32, distinct triples seen), "reverse_kl" (float32), "counts" ((1000,)).
  """
  modes = stacked_mnist_modes(digits)
  counts = jnp.zeros((STACKED_MNIST_MODES,), jnp.int32).at[modes].add(1)
  return {"modes": jnp.sum(counts > 0).astype(jnp.int32),
          "reverse_kl": reverse_kl_to_uniform(counts), "counts": counts}


def frechet_distance(x: jax.Array, y: jax.Array) -> jax.Array:
  """Squared Frechet distance of Gaussians fitted to two feature samples (Heusel et al. 2017).

      d^2 = |mu_x - mu_y|^2 + tr(S_x) + tr(S_y) - 2 tr((S_x^{1/2} S_y S_x^{1/2})^{1/2})

  with sample means and covariances (ddof 1, as FID's `np.cov`). tr((S_x S_y)^{1/2}) is taken
  through the symmetric PSD matrix S_x^{1/2} S_y S_x^{1/2} (same eigenvalues as S_x S_y), so two
  symmetric eigendecompositions replace the general matrix square root; negative round-off
  eigenvalues are clipped to 0.

  Args:
    x: (n, d) float features, n >= 2; y: (m, d) float features, m >= 2, the same d.

  Returns: float scalar (float32, or float64 for float64 input), >= 0 up to round-off.
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  for arr, name in ((x, "x"), (y, "y")):
    if arr.ndim != 2:
      raise ValueError(f"{name} must be (num_samples, dim) features, got shape {arr.shape}.")
    if arr.shape[0] < 2:
      raise ValueError(f"{name} needs at least 2 samples for a covariance, got {arr.shape[0]}.")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"x and y must have the same feature dimension, got x.shape={x.shape} and "
                     f"y.shape={y.shape}.")
  dtype = jnp.promote_types(jnp.result_type(x, y), jnp.float32)
  x, y = x.astype(dtype), y.astype(dtype)

  def moments(a):
    mu = jnp.mean(a, axis=0)
    centred = a - mu
    return mu, centred.T @ centred / (a.shape[0] - 1)

  mu_x, cov_x = moments(x)
  mu_y, cov_y = moments(y)
  w, v = jnp.linalg.eigh(cov_x)
  sqrt_x = (v * jnp.sqrt(jnp.maximum(w, 0.0))) @ v.T
  middle = sqrt_x @ cov_y @ sqrt_x
  middle = 0.5 * (middle + middle.T)
  trace_sqrt = jnp.sum(jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(middle), 0.0)))
  diff = mu_x - mu_y
  return jnp.dot(diff, diff) + jnp.trace(cov_x) + jnp.trace(cov_y) - 2.0 * trace_sqrt
