"""Second-order pooling heads: iSQRT-COV covariance pooling and the GM-SOP gated mixture.

Both replace global average pooling at the end of a CNN: they take a feature map
(batch, height, width, channels) or (batch, locations, channels) and return one vector per image.

- `CovariancePooling` (Li et al., CVPR 2018, iSQRT-COV): 1x1 reduction, covariance of the
  locations, matrix square root by Newton-Schulz (`ops.sqrtm_newton_schulz`), upper triangle.
- `GMSOP` (Wang et al., NeurIPS 2018): N such components, each with its own reduction (the
  "parametric" part), and a top-K gate computed from the average-pooled features; the output is
  the gate-weighted sum of the K chosen components. The gate's balance loss
  (`ops.gate_balance_loss`) is sown into the "losses" collection; add it to the training loss
  (`fastnets.train.with_sown_losses` does).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnets import ops


def _locations(x: jax.Array) -> jax.Array:
  if x.ndim == 4:
    return x.reshape((x.shape[0], x.shape[1] * x.shape[2], x.shape[3]))
  if x.ndim == 3:
    return x
  raise ValueError(f"x must be (batch, height, width, channels) or (batch, locations, channels), "
                   f"got shape {x.shape}.")


class CovariancePooling(nn.Module):
  """iSQRT-COV: reduce, covariance, Newton-Schulz square root, upper triangle.

  Attributes:
    dim: channels after the 1x1 reduction (Dense over channels + ReLU); None keeps the input's.
    num_iters: Newton-Schulz iterations (iSQRT-COV uses 5).
  Output: (batch, dim (dim + 1) / 2) float32.
  """
  dim: int | None = 16
  num_iters: int = 5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _locations(x)
    if self.dim is not None:
      x = nn.relu(nn.Dense(self.dim, name="reduce")(x))
    cov = ops.covariance_pool(x)
    return ops.upper_triangle(ops.sqrtm_newton_schulz(cov, self.num_iters))


class GMSOP(nn.Module):
  """Global gated mixture of second-order pooling (GM-SOP).

  Gate: H(x) = GAP(x) W_g (+ N(0, 1) * softplus(GAP(x) W_noise) while training, the noisy gate
  of Shazeer et al. 2017 that GM-SOP uses), G = `ops.top_k_gates(H, k)`. Component i: ReLU of a
  per-component 1x1 reduction to `dim` channels, covariance, Newton-Schulz square root, upper
  triangle. Output: sum_i G_i(x) component_i(x). All N components are computed for every image
  (dense; sparse dispatch only pays off for many large components) and the unchosen ones get
  weight zero, so the gradient reaches exactly the K chosen ones.

  Attributes:
    num_components: N; k: K (1 <= K <= N); dim: channels per component; num_iters: as in
    `CovariancePooling`; noisy: add gate noise in training (needs the `noise_rng` stream);
    noise_rng: the rng stream name ("dropout": the one `fastnets.train` provides).
  Output: (batch, dim (dim + 1) / 2) float32. Sows "losses"/"gate_balance" (a scalar) and
  "intermediates"/"gates" ((batch, N)) when those collections are mutable.
  """
  num_components: int = 4
  k: int = 2
  dim: int = 16
  num_iters: int = 5
  noisy: bool = True
  noise_rng: str = "dropout"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if not 1 <= self.k <= self.num_components:
      raise ValueError(f"k must satisfy 1 <= k <= num_components = {self.num_components}, got "
                       f"k={self.k}.")
    x = _locations(x)
    pooled = jnp.mean(x, axis=1)
    logits = nn.Dense(self.num_components, name="gate")(pooled)
    if train and self.noisy:
      noise_scale = nn.softplus(nn.Dense(self.num_components, name="gate_noise")(pooled))
      logits = logits + jax.random.normal(self.make_rng(self.noise_rng), logits.shape) * noise_scale
    elif self.noisy:
      nn.Dense(self.num_components, name="gate_noise")(pooled)  # Same parameters in eval.
    gates = ops.top_k_gates(logits, self.k)
    kernel = self.param("reduce", nn.initializers.lecun_normal(batch_axis=(0,)),
                        (self.num_components, x.shape[-1], self.dim))
    bias = self.param("reduce_bias", nn.initializers.zeros, (self.num_components, self.dim))
    reduced = nn.relu(jnp.einsum("bmc,ncd->bnmd", x, kernel) + bias[None, :, None, :])
    cov = ops.covariance_pool(reduced)  # (batch, N, dim, dim)
    comps = ops.upper_triangle(ops.sqrtm_newton_schulz(cov, self.num_iters))
    if not self.is_initializing():
      self.sow("losses", "gate_balance", ops.gate_balance_loss(gates))
      self.sow("intermediates", "gates", gates)
    return jnp.einsum("bn,bnf->bf", gates, comps)
