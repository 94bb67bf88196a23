"""Distances between samples computed in closed form: the Cramer-Wold distance and the PKT loss.

Both replace a learned critic (a GAN discriminator, a distillation head) by a statistic of the
samples' pairwise kernel matrix, so they work between spaces of different dimension and need no
adversarial training.

- `cramer_wold_distance` (Tabor et al. 2018, "Cramer-Wold AutoEncoder", arXiv:1805.09235; Knop et
  al., JMLR 21 (2020), Theorem 1 and Eq. (4)): the squared L2 distance of the Gaussian-smoothed
  one-dimensional projections of two samples, averaged over all directions of the sphere. It is
  the distance the LCW generator (latent Cramer-Wold generator) trains with instead of a
  discriminator.
- `pkt_loss` (Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge
  Transfer", ECCV 2018, Eqs. (8)-(10)): KL divergence between the teacher's and the student's
  conditional pairwise-similarity distributions under the cosine kernel.
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

# Below this argument phi_D uses its Kummer-transformed power series, above it the asymptotic
# expansion; both are accurate to float64 round-off there (see `_phi_exact`).
_SERIES_LIMIT = 40.0
_SERIES_TERMS = 160
_ASYMPTOTIC_TERMS = 24
# The JMLR paper (Eq. (4)) switches to the closed-form approximation from this dimension on.
APPROXIMATION_MIN_DIM = 20


def _phi_exact(s: jax.Array, dim: int) -> jax.Array:
  """phi_D(s) = 1F1(1/2; D/2; -s), Kummer's confluent hypergeometric function, for s >= 0.

  For s < 40: Kummer's transformation 1F1(a; b; -s) = e^{-s} 1F1(b - a; b; s), whose series has
  only positive terms (no cancellation); 160 terms reach float64 round-off at s = 40. For s >= 40:
  the large-argument expansion Gamma(b) / Gamma(b - a) s^{-a} sum_k (a)_k (a - b + 1)_k / k! s^{-k}
  (the other branch is O(e^{-s})); for odd D it terminates and is exact. Both branches see a
  clamped argument so that neither produces inf/NaN gradients where it is not selected.
  """
  a, b = 0.5, dim / 2.0
  small = s < _SERIES_LIMIT
  s_small = jnp.where(small, s, 0.0)
  s_large = jnp.where(small, _SERIES_LIMIT, s)

  def series_step(k, carry):
    term, total = carry
    k = k.astype(s_small.dtype)
    term = term * s_small * ((b - a + k) / ((b + k) * (k + 1)))
    return term, total + term

  ones = jnp.ones_like(s_small)
  # A loop, not 160 unrolled products: compile time stays small.
  _, total = jax.lax.fori_loop(0, _SERIES_TERMS, series_step, (ones, ones))
  series = jnp.exp(-s_small) * total

  log_prefactor = math.lgamma(b) - math.lgamma(b - a)
  inv = 1.0 / s_large
  term = jnp.ones_like(s_large)
  total = term
  for k in range(_ASYMPTOTIC_TERMS):
    coeff = (a + k) * (a - b + 1 + k) / (k + 1)
    if coeff == 0.0:  # Odd D: the series terminates.
      break
    term = term * inv * coeff
    total = total + term
  asymptotic = math.exp(log_prefactor) * jax.lax.rsqrt(s_large) * total
  return jnp.where(small, series, asymptotic)


def cramer_wold_phi(s: jax.Array, dim: int, approximate: Optional[bool] = None) -> jax.Array:
  """The kernel profile phi_D(s) = 1F1(1/2; D/2; -s) of the Cramer-Wold distance.

  phi_D(s) is the average over unit directions v of exp(-s <v, e>^2): the Gaussian kernel of the
  one-dimensional projections, integrated over the sphere S^{D-1}.

  Args:
    s: non-negative arguments, any shape, float.
    dim: the dimension D >= 2 of the samples.
    approximate: use the JMLR paper's closed form phi_D(s) ~ (1 + 4 s / (2 D - 3))^{-1/2}
      (Eq. (4)); default: exactly when dim >= 20, as the paper does.

  Returns: phi_D(s), same shape and dtype as s.
  """
  if not isinstance(dim, (int, np.integer)) or dim < 2:
    raise ValueError(f"dim must be an integer >= 2, got {dim!r}.")
  if approximate is None:
    approximate = dim >= APPROXIMATION_MIN_DIM
  if approximate:
    return jax.lax.rsqrt(1.0 + 4.0 * s / (2.0 * dim - 3.0))
  return _phi_exact(s, int(dim))


def silverman_gamma(x: jax.Array, y: Optional[jax.Array] = None) -> jax.Array:
  """The Cramer-Wold smoothing gamma by Silverman's rule of thumb: (1.06 sigma)^2 n^{-2/5}.

  The JMLR paper (Sec. 3) smooths each projection with a Gaussian of variance gamma chosen by
  Silverman's rule for a one-dimensional normal density: gamma = (1.06 sigma)^2 n^{-2/5}, sigma
  the sample's standard deviation. With two samples we pool them (sigma over all entries of
  both, n their mean size), so that d(x, y) = d(y, x) also with the default.

  Args:
    x: (..., n, D) samples; y: optional (..., m, D) second sample.

  Returns: (...) gamma, float, under `stop_gradient` (the bandwidth is a smoothing constant, not
  something the generator may move: a gradient through it rewards spreading samples out).
  """
  if y is None:
    pooled, n = x, x.shape[-2]
  else:
    pooled, n = jnp.concatenate([x, y], axis=-2), 0.5 * (x.shape[-2] + y.shape[-2])
  sigma2 = jnp.var(pooled, axis=(-2, -1))
  return jax.lax.stop_gradient((1.059**2) * sigma2 * n**-0.4)


def _pairwise_sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  # Direct differences (not |a|^2 + |b|^2 - 2ab): exact zeros on the diagonal, no cancellation.
  diff = a[..., :, None, :] - b[..., None, :, :]
  return jnp.sum(diff * diff, axis=-1)


def _check_samples(x: jax.Array, y: jax.Array, xname: str, yname: str) -> None:
  for arr, name in ((x, xname), (y, yname)):
    if arr.ndim < 2:
      raise ValueError(f"{name} must have shape (..., num_samples, dim), got {arr.shape}.")
    if arr.shape[-2] < 2:
      raise ValueError(f"{name} needs at least 2 samples, got {arr.shape[-2]} "
                       f"(shape {arr.shape}).")
  if x.shape[-1] != y.shape[-1]:
    raise ValueError(f"{xname} and {yname} must have the same sample dimension, got "
                     f"{xname}.shape={x.shape} and {yname}.shape={y.shape}.")
  if x.shape[:-2] != y.shape[:-2]:
    raise ValueError(f"{xname} and {yname} must have the same batch shape, got "
                     f"{xname}.shape={x.shape} and {yname}.shape={y.shape}.")


def cramer_wold_distance(x: jax.Array, y: jax.Array, gamma=None,
                         approximate: Optional[bool] = None) -> jax.Array:
  """Squared Cramer-Wold distance d_cw^2(X, Y) between two samples (Knop et al. 2020, Thm. 1).

      d_cw^2 = 1 / (2 sqrt(pi gamma)) * (  1/n^2 sum_ij phi_D(|x_i - x_j|^2 / (4 gamma))
                                          + 1/m^2 sum_ij phi_D(|y_i - y_j|^2 / (4 gamma))
                                          - 2/(n m) sum_ij phi_D(|x_i - y_j|^2 / (4 gamma)) )

  with phi_D = `cramer_wold_phi` (the exact 1F1 below D = 20, the paper's closed form from 20 on).
  It is the squared L2 distance between the two samples' Gaussian-smoothed projections onto a
  direction, averaged over directions; it is symmetric, non-negative (phi_D(|.|^2) is a positive
  definite kernel, so this is an MMD) and zero for identical samples. The paper writes it for
  n = m; unequal sizes use the per-pair means above. Cost O(n m D) time, O(n m) memory.

  Args:
    x: (..., n, D) float samples, n >= 2.
    y: (..., m, D) float samples, m >= 2, the same D and batch shape.
    gamma: smoothing variance (scalar or (...)); default `silverman_gamma(x, y)`.
    approximate: see `cramer_wold_phi`.

  Returns: (...) squared distances, float (the promoted dtype of x and y).
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  _check_samples(x, y, "x", "y")
  dtype = jnp.promote_types(jnp.result_type(x, y), jnp.float32)
  x, y = x.astype(dtype), y.astype(dtype)
  if gamma is None:
    gamma = silverman_gamma(x, y)
  else:
    if not isinstance(gamma, jax.core.Tracer) and not bool(np.all(np.asarray(gamma) > 0)):
      raise ValueError(f"gamma must be positive, got {gamma!r}.")
    gamma = jnp.asarray(gamma, dtype)
  dim = x.shape[-1]
  scale = (4.0 * gamma)[..., None, None]

  def mean_phi(a, b):
    return jnp.mean(cramer_wold_phi(_pairwise_sq_dists(a, b) / scale, dim, approximate),
                    axis=(-2, -1))

  total = mean_phi(x, x) + mean_phi(y, y) - 2.0 * mean_phi(x, y)
  return total / (2.0 * jnp.sqrt(jnp.pi * gamma))


def cramer_wold_normality(x: jax.Array, gamma=None) -> jax.Array:
  """Squared Cramer-Wold distance of a sample from the standard normal N(0, I) (JMLR Thm. 3).

  The CWAE latent cost, with the paper's closed form for phi_D (valid for D >= 20; used for any D
  here, as in the authors' code):

      1 / (2 sqrt(pi)) * ( 1/n^2 sum_ij (gamma + |x_i - x_j|^2 / (2D - 3))^{-1/2}
                           + (1 + gamma)^{-1/2}
                           - 2/n sum_i (gamma + 1/2 + |x_i|^2 / (2D - 3))^{-1/2} )

  Args:
    x: (..., n, D) float samples, n >= 2; gamma: default (1.06)^2 n^{-2/5} (sigma = 1, the
      prior's).

  Returns: (...) float.
  """
  x = jnp.asarray(x)
  if x.ndim < 2 or x.shape[-2] < 2:
    raise ValueError(f"x must have shape (..., num_samples >= 2, dim), got {x.shape}.")
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  n, dim = x.shape[-2], x.shape[-1]
  if gamma is None:
    gamma = (1.059**2) * n**-0.4
  k = 1.0 / (2.0 * dim - 3.0)
  a = jnp.mean(jax.lax.rsqrt(gamma + k * _pairwise_sq_dists(x, x)), axis=(-2, -1))
  b = jnp.mean(jax.lax.rsqrt(gamma + 0.5 + k * jnp.sum(x * x, axis=-1)), axis=-1)
  return (a + jax.lax.rsqrt(1.0 + gamma) - 2.0 * b) / (2.0 * jnp.sqrt(jnp.pi))


def cosine_affinities(features: jax.Array, eps: float = 1e-7) -> jax.Array:
  """PKT's conditional probabilities p_{i|j} under the cosine kernel (Passalis & Tefas, Eq. (8)).

  K(a, b) = (cos(a, b) + 1) / 2 in [0, 1]; p_{i|j} = K(x_i, x_j) / sum_{k != j} K(x_k, x_j),
  with the diagonal (i = j) set to zero.

  Args:
    features: (..., n, d) float, n >= 2.

  Returns: (..., n, n) float32-or-wider; row j holds p_{.|j} and sums to one.
  """
  f = features.astype(jnp.promote_types(features.dtype, jnp.float32))
  f = f / (jnp.linalg.norm(f, axis=-1, keepdims=True) + eps)
  kernel = 0.5 * (f @ jnp.swapaxes(f, -1, -2) + 1.0)
  n = f.shape[-2]
  kernel = kernel * (1.0 - jnp.eye(n, dtype=kernel.dtype))
  return kernel / (jnp.sum(kernel, axis=-1, keepdims=True) + eps)


def pkt_loss(student_features: jax.Array, teacher_features: jax.Array,
             eps: float = 1e-7) -> jax.Array:
  """Probabilistic knowledge transfer loss KL(P_teacher || P_student) (Passalis & Tefas 2018).

      L = 1/n sum_j sum_{i != j} p_{i|j} log(p_{i|j} / q_{i|j})            (Eqs. (8)-(10))

  with p from the teacher's and q from the student's features (`cosine_affinities`). Only the
  pairwise cosine similarities enter, so the two feature spaces may have different dimensions
  (a 128-d teacher layer, a 16-d student layer, a fixed handcrafted projection). The authors'
  code keeps the self-similarities and averages over all n^2 entries; we follow the paper's
  equations (no i = j terms, mean over the n conditional distributions). The teacher is not
  detached here: wrap it in `jax.lax.stop_gradient` when its parameters must not move.

  Args:
    student_features: (..., n, d_student) float, n >= 2.
    teacher_features: (..., n, d_teacher) float, the same samples in the same order.
    eps: keeps the logarithm finite.

  Returns: (...) float32-or-wider loss, >= 0 up to eps.
  """
  s, t = jnp.asarray(student_features), jnp.asarray(teacher_features)
  for arr, name in ((s, "student_features"), (t, "teacher_features")):
    if arr.ndim < 2:
      raise ValueError(f"{name} must have shape (..., num_samples, dim), got {arr.shape}.")
    if arr.shape[-2] < 2:
      raise ValueError(f"{name} needs at least 2 samples, got shape {arr.shape}.")
  if s.shape[:-1] != t.shape[:-1]:
    raise ValueError("student_features and teacher_features must hold the same samples: shapes "
                     f"{s.shape} and {t.shape} differ before the feature axis.")
  p = cosine_affinities(t, eps)
  q = cosine_affinities(s, eps)
  kl = p * (jnp.log(p + eps) - jnp.log(q + eps))
  return jnp.mean(jnp.sum(kl, axis=-1), axis=-1)


def retrieval_map(features: jax.Array, labels: jax.Array, queries: Optional[jax.Array] = None,
                  query_labels: Optional[jax.Array] = None) -> jax.Array:
  """Mean average precision of cosine-similarity retrieval (PKT's retrieval metric).

  Each query ranks the database by cosine similarity; a database item is relevant when it shares
  the query's label; AP is the mean of precision@rank over the relevant items' ranks. Without
  `queries`, every database item queries the rest (itself excluded).

  Args:
    features: (n, d) database features; labels: (n,) integer labels.
    queries, query_labels: optional (q, d) and (q,) separate queries.

  Returns: scalar float32 mAP in [0, 1].
  """
  features = jnp.asarray(features, jnp.float32)
  labels = jnp.asarray(labels)
  if features.ndim != 2 or labels.shape != features.shape[:1]:
    raise ValueError(f"features must be (n, d) and labels (n,), got {features.shape} and "
                     f"{labels.shape}.")
  self_query = queries is None
  if self_query:
    queries, query_labels = features, labels
  queries = jnp.asarray(queries, jnp.float32)
  query_labels = jnp.asarray(query_labels)
  if queries.ndim != 2 or queries.shape[1] != features.shape[1]:
    raise ValueError(f"queries must be (q, {features.shape[1]}), got {queries.shape}.")

  def unit(f):
    return f / (jnp.linalg.norm(f, axis=-1, keepdims=True) + 1e-12)

  sims = unit(queries) @ unit(features).T
  relevant = (query_labels[:, None] == labels[None, :]).astype(jnp.float32)
  if self_query:
    n = features.shape[0]
    sims = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, sims)
    relevant = relevant * (1.0 - jnp.eye(n, dtype=jnp.float32))
  order = jnp.argsort(-sims, axis=-1)
  rel_sorted = jnp.take_along_axis(relevant, order, axis=-1)
  hits = jnp.cumsum(rel_sorted, axis=-1)
  ranks = jnp.arange(1, rel_sorted.shape[-1] + 1, dtype=jnp.float32)
  precision_sum = jnp.sum(rel_sorted * hits / ranks, axis=-1)
  num_rel = jnp.sum(rel_sorted, axis=-1)
  ap = jnp.where(num_rel > 0, precision_sum / jnp.maximum(num_rel, 1.0), 0.0)
  return jnp.mean(ap)
