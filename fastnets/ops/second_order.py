"""Second-order pooling: covariance pooling, its matrix square root, and the GM-SOP gate.

- `covariance_pool`: the sample covariance of a feature map's locations (global covariance
  pooling; Li et al. 2017, "Is Second-order Information Helpful for Large-scale Visual
  Recognition?").
- `sqrtm_newton_schulz` (iSQRT-COV; Li, Xie, Wang & Gao, CVPR 2018, "Towards Faster Training of
  Global Covariance Pooling Networks by Iterative Matrix Square Root Normalization", Eqs. (2)-(4)
  forward and Eqs. (5)-(7) backward): the coupled Newton-Schulz iteration with trace
  pre-normalisation and post-compensation, only matrix products (no eigendecomposition), with a
  `custom_vjp` whose backward runs the iterations in reverse.
- `top_k_gates` and `gate_balance_loss` (GM-SOP; Wang, Gao, Xie, Zuo & Li, NeurIPS 2018): the
  sparsity-constrained gate that keeps K of N second-order components per sample, and the
  balance loss on the components' importance that GM-SOP takes from the sparsely-gated mixture
  of experts (Shazeer et al., ICLR 2017, Eq. (6)): w * CV(importance)^2.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def covariance_pool(features: jax.Array) -> jax.Array:
  """Sample covariance of the locations of a feature map: Sigma = X^T I_bar X.

  I_bar = (I - 11^T / M) / M (iSQRT-COV Sec. 3.1): the biased (1/M) covariance of the M locations'
  d-dimensional features, as iSQRT-COV and GM-SOP use.

  Args:
    features: (..., M, d) float (e.g. a (batch, h*w, channels) reshaped feature map), M >= 2.

  Returns: (..., d, d) symmetric positive semi-definite, float32-or-wider.
  """
  x = jnp.asarray(features)
  if x.ndim < 2:
    raise ValueError(f"features must have shape (..., num_locations, channels), got {x.shape}.")
  if x.shape[-2] < 2:
    raise ValueError(f"features need at least 2 locations for a covariance, got shape "
                     f"{x.shape}.")
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  centered = x - jnp.mean(x, axis=-2, keepdims=True)
  cov = jnp.swapaxes(centered, -1, -2) @ centered / x.shape[-2]
  return 0.5 * (cov + jnp.swapaxes(cov, -1, -2))


def _check_square(a: jax.Array, name: str) -> None:
  if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
    raise ValueError(f"{name} must be a (..., d, d) square matrix, got shape {a.shape}.")
  if not isinstance(a, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(a))):
    raise ValueError(f"{name} must be finite, got a matrix with NaN or Inf entries.")


def _trace(a: jax.Array) -> jax.Array:
  return jnp.trace(a, axis1=-2, axis2=-1)


def _eye_like(a: jax.Array) -> jax.Array:
  return jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)


def _t(a: jax.Array) -> jax.Array:
  return jnp.swapaxes(a, -1, -2)


def _ns_iterates(a: jax.Array, num_iters: int):
  """Forward iterations; returns (output, trace, [(Y_k, Z_k) for k < num_iters])."""
  tr = _trace(a)
  eye = _eye_like(a)
  y = a / tr[..., None, None]
  z = eye
  states = []
  for k in range(num_iters):
    states.append((y, z))
    t = 1.5 * eye - 0.5 * (z @ y)
    # The last iteration needs only Y (iSQRT-COV Sec. 3.2): Z_N is never used.
    y, z = y @ t, (t @ z if k + 1 < num_iters else None)
  return jnp.sqrt(tr)[..., None, None] * y, tr, states


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _ns_sqrtm(a: jax.Array, num_iters: int) -> jax.Array:
  return _ns_iterates(a, num_iters)[0]


def _ns_sqrtm_fwd(a, num_iters):
  out, tr, states = _ns_iterates(a, num_iters)
  return out, (a, out, tr, states)


def _ns_sqrtm_bwd(num_iters, residuals, g):
  """Reverse pass of the iterations (iSQRT-COV Eqs. (5)-(7), transposes kept).

  With T = (3I - Z Y) / 2, Y' = Y T, Z' = T Z and cotangents gY', gZ':
    gT = Y^T gY' + gZ' Z^T,   gY = gY' T^T - Z^T gT / 2,   gZ = T^T gZ' - gT Y^T / 2.
  For symmetric input Y, Z and T are symmetric polynomials of A and this is the paper's Eq. (6);
  keeping the transposes makes it the exact derivative of the iterations for any square input
  and any num_iters >= 1 (users of the fast-MPN-COV code report wrong gradients for one
  iteration and for non-symmetric input; the tests check both cases here).
  Pre-normalisation Y_0 = A / tr(A) and post-compensation C = sqrt(tr A) Y_N give Eq. (7):
    gA = gY_0 / tr A + (<gC, Y_N> / (2 sqrt(tr A)) - <gY_0, A> / tr(A)^2) I.
  """
  a, out, tr, states = residuals
  sqrt_tr = jnp.sqrt(tr)[..., None, None]
  y_n = out / sqrt_tr
  gy = sqrt_tr * g
  gz = None
  eye = _eye_like(a)
  for k in reversed(range(num_iters)):
    y, z = states[k]
    t = 1.5 * eye - 0.5 * (z @ y)
    gt = _t(y) @ gy
    if gz is not None:
      gt = gt + gz @ _t(z)
    new_gy = gy @ _t(t) - 0.5 * (_t(z) @ gt)
    new_gz = -0.5 * (gt @ _t(y))
    if gz is not None:
      new_gz = new_gz + _t(t) @ gz
    gy, gz = new_gy, new_gz
  # gZ_0 is dropped: Z_0 = I does not depend on A.
  tr_b = tr[..., None, None]
  g_tr = (jnp.sum(g * y_n, axis=(-2, -1)) / (2.0 * jnp.sqrt(tr))
          - jnp.sum(gy * a, axis=(-2, -1)) / tr**2)
  return (gy / tr_b + g_tr[..., None, None] * eye,)


_ns_sqrtm.defvjp(_ns_sqrtm_fwd, _ns_sqrtm_bwd)


def sqrtm_newton_schulz(a: jax.Array, num_iters: int = 5) -> jax.Array:
  """Matrix square root of symmetric positive (semi-)definite matrices by iSQRT-COV.

      Y_0 = A / tr(A), Z_0 = I;  T_k = (3I - Z_{k-1} Y_{k-1}) / 2,
      Y_k = Y_{k-1} T_k,  Z_k = T_k Z_{k-1};   sqrtm(A) ~ sqrt(tr A) Y_N     (Eqs. (2)-(4))

  Y_N converges quadratically to (A / tr A)^{1/2} (and Z_N to its inverse) because every
  eigenvalue of A / tr A lies in (0, 1]; ill-conditioned input needs more iterations (the
  smallest eigenvalues converge last). A few iterations give an approximate square root, which is
  what iSQRT-COV trains with (the paper uses N = 5). The input is symmetrised, (A + A^T) / 2,
  before the iterations; the gradient is that of this whole function (custom VJP, reverse
  iterations, see `_ns_sqrtm_bwd`), so it is exact for non-symmetric input and one iteration too.

  Args:
    a: (..., d, d) float, symmetric positive semi-definite with a positive trace.
    num_iters: N >= 1 iterations (static).

  Returns: (..., d, d), same dtype as a (float32 for integer input).

  Raises: ValueError naming `a` (not square, non-finite when concrete) or `num_iters`.
  """
  a = jnp.asarray(a)
  _check_square(a, "a")
  if not isinstance(num_iters, (int, np.integer)) or isinstance(num_iters, bool) or num_iters < 1:
    raise ValueError(f"num_iters must be an integer >= 1, got {num_iters!r}.")
  a = a.astype(jnp.promote_types(a.dtype, jnp.float32))
  return _ns_sqrtm(0.5 * (a + _t(a)), int(num_iters))


def sqrtm_eigh(a: jax.Array) -> jax.Array:
  """Reference square root of symmetric PSD matrices via an eigendecomposition (slow, exact).

  Args: a: (..., d, d) float, symmetrised as in `sqrtm_newton_schulz`; negative round-off
  eigenvalues are clipped to zero. Returns: (..., d, d).
  """
  a = jnp.asarray(a)
  _check_square(a, "a")
  a = a.astype(jnp.promote_types(a.dtype, jnp.float32))
  w, v = jnp.linalg.eigh(0.5 * (a + _t(a)))
  return (v * jnp.sqrt(jnp.maximum(w, 0.0))[..., None, :]) @ _t(v)


def upper_triangle(a: jax.Array) -> jax.Array:
  """The upper triangle (diagonal included) of (..., d, d) as (..., d (d + 1) / 2) features.

  A symmetric matrix holds d (d + 1) / 2 distinct entries; iSQRT-COV feeds them to the classifier.
  """
  a = jnp.asarray(a)
  _check_square(a, "a")
  rows, cols = np.triu_indices(a.shape[-1])
  return a[..., rows, cols]


def top_k_gates(logits: jax.Array, k: int) -> jax.Array:
  """GM-SOP's sparsity-constrained gate: softmax over the K largest logits, zero elsewhere.

      G(x) = softmax(KeepTopK(H(x), K)),  KeepTopK(v, K)_i = v_i if v_i is among the K largest
                                                             of v, else -inf

  (GM-SOP Sec. 3.1, after Shazeer et al. 2017 Eqs. (3)-(5); the noisy H(x) is the caller's).
  Ties are broken by index (lax.top_k), so exactly K entries are non-zero.

  Args:
    logits: (..., N) float; k: 1 <= K <= N.

  Returns: (..., N) gates, non-negative, K non-zeros per row summing to one.
  """
  logits = jnp.asarray(logits)
  if logits.ndim < 1:
    raise ValueError(f"logits must have shape (..., num_components), got {logits.shape}.")
  n = logits.shape[-1]
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= n:
    raise ValueError(f"k must be an integer with 1 <= k <= num_components = {n}, got {k!r}.")
  values, indices = jax.lax.top_k(logits, int(k))
  weights = jax.nn.softmax(values, axis=-1)
  one_hot = jax.nn.one_hot(indices, n, dtype=weights.dtype)
  return jnp.einsum("...k,...kn->...n", weights, one_hot)


def gate_balance_loss(gates: jax.Array, eps: float = 1e-10) -> jax.Array:
  """Squared coefficient of variation of the components' importance over a batch.

      Importance(X) = sum_{x in X} G(x);   L_balance = CV(Importance(X))^2 = Var / Mean^2

  (Shazeer et al. 2017, Eq. (6), which GM-SOP adds to its loss with a weight so that the gate
  does not settle on a few components). Zero exactly when every component carries the same total
  gate weight; the population variance over the N components is used.

  Args:
    gates: (batch, N) non-negative gates. Returns: scalar float32-or-wider.
  """
  gates = jnp.asarray(gates)
  if gates.ndim != 2:
    raise ValueError(f"gates must have shape (batch, num_components), got {gates.shape}.")
  importance = jnp.sum(gates.astype(jnp.promote_types(gates.dtype, jnp.float32)), axis=0)
  mean = jnp.mean(importance)
  return jnp.var(importance) / (mean * mean + eps)
