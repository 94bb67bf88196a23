"""Fastfood RBF random features: bias, row norms and error against dense Gaussian features.

    python tools/measure_rbf_features.py

1. 200 Gaussian points in 64 dimensions, sigma 8, 1,024 features: mean off-diagonal error of
   phi(x).phi(y) over 20 draws (the bias) and the row norms of V against chi_64.
2. 200 bundled-MNIST digits (784 pixels padded to 1024), sigma the median distance: mean absolute
   kernel error of Fastfood and of dense Gaussian random features, 5 draws per feature count.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from fastnets import data, ops

rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((200, 64)), jnp.float32)
kernel = np.asarray(ops.rbf_kernel(x, x, 8.0))
off = ~np.eye(200, dtype=bool)
bias = [float((np.asarray(ops.fastfood_rbf_features(jax.random.key(s), x, 1024, 8.0) @
                          ops.fastfood_rbf_features(jax.random.key(s), x, 1024, 8.0).T)
               - kernel)[off].mean()) for s in range(20)]
print(f"bias over 20 draws: {np.mean(bias):.1e} +- {np.std(bias) / np.sqrt(20):.1e} (s.e.)")
v = np.asarray(ops.fastfood_matrix(*ops.fastfood_rbf_params(jax.random.key(0), 64, 4096)))
chi_mean = math.sqrt(2) * math.exp(math.lgamma(32.5) - math.lgamma(32))
norms = np.linalg.norm(v, axis=1)
print(f"row norms of V: mean {norms.mean():.3f} (chi_64: {chi_mean:.3f}), std {norms.std():.3f}")

ds = data.load_dataset("mnist_bundled")
xs = jnp.asarray(ds.validation.images[:200].astype(np.float32).reshape(200, -1) / 255.0)
dists = np.sqrt(((np.asarray(xs)[:, None] - np.asarray(xs)[None]) ** 2).sum(-1))
sigma = float(np.median(dists[np.triu_indices(200, 1)]))
kernel = np.asarray(ops.rbf_kernel(xs, xs, sigma))
for m in [64, 256, 512, 1024, 2048, 4096]:
  ff, rff = [], []
  for r in range(5):
    phi = ops.fastfood_rbf_features(jax.random.key(1000 * r + m), xs, m, sigma)
    ff.append(np.abs(np.asarray(phi @ phi.T) - kernel).mean())
    proj = np.asarray(xs) @ rng.standard_normal((784, m)) / sigma
    psi = np.concatenate([np.cos(proj), np.sin(proj)], 1) / np.sqrt(m)
    rff.append(np.abs(psi @ psi.T - kernel).mean())
  print(f"MNIST, m={m:5d}: Fastfood {np.mean(ff):.4f}   dense Gaussian features {np.mean(rff):.4f}")
