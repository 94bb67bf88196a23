"""Writes colabs/kernel_distances.ipynb (kept as code so the notebook's source is reviewable).

    python tools/make_kernel_distances_notebook.py

Cells are stored without outputs; `FASTNETS_SMOKE=1` runs every cell in seconds (the notebook test
does: `python -m pytest tests/test_notebooks.py -q -k kernel_distances`).
"""

import nbcommon  # tools/nbcommon.py: shared cells and writer
from nbcommon import code, md, setup_cell

cells = [
  md("# Closed-form statistics instead of learned critics\n\n"
     "Three techniques replace a learned adversary or a first-order summary with a statistic "
     "computed in closed form:\n\n"
     "1. the **Cramer-Wold distance** (Tabor et al. 2018; Knop et al., JMLR 2020), a kernel "
     "distance between samples that trains a generator without a discriminator (the LCW "
     "generator);\n"
     "2. **iSQRT-COV** (Li et al., CVPR 2018) and **GM-SOP** (Wang et al., NeurIPS 2018): "
     "covariance pooling with a Newton-Schulz matrix square root, and a gated mixture of such "
     "poolings;\n"
     "3. **PKT** (Passalis & Tefas, ECCV 2018): knowledge transfer by matching pairwise "
     "similarity distributions.\n\n"
     "The experiments are `python -m experiments.lcw --quick`, "
     "`python -m experiments.gm_sop --quick` and `python -m experiments.pkt --quick`.\n\n"
     "**Install.** From a checkout: `pip install -e .` (on Colab: clone the repository, `%cd` into "
     "it, `%pip install -e .`). Set `FASTNETS_SMOKE=1` to run every cell in seconds."),
  setup_cell("import os, sys",
             "import jax, jax.numpy as jnp, numpy as np\n"
             "import optax\n"
             "import matplotlib.pyplot as plt\n"
             "from fastnets import data, ops\n"
             "print('jax', jax.__version__, '| smoke' if SMOKE else '')"),

  md("## 1. The Cramer-Wold distance\n\n"
     "Project both samples on a unit direction $v$, smooth each projection with a Gaussian of "
     "variance $\\gamma$, take the squared $L^2$ distance of the two densities, and average over "
     "all directions. The average has a closed form:\n\n"
     "$$d^2_{cw}(X, Y) = \\frac{1}{2\\sqrt{\\pi\\gamma}}\\Big(\\frac{1}{n^2}\\sum_{ij}"
     "\\phi_D\\big(\\tfrac{\\|x_i-x_j\\|^2}{4\\gamma}\\big) + \\frac{1}{m^2}\\sum_{ij}"
     "\\phi_D\\big(\\tfrac{\\|y_i-y_j\\|^2}{4\\gamma}\\big) - \\frac{2}{nm}\\sum_{ij}"
     "\\phi_D\\big(\\tfrac{\\|x_i-y_j\\|^2}{4\\gamma}\\big)\\Big)$$\n\n"
     "with $\\phi_D(s) = {}_1F_1(\\frac12; \\frac D2; -s)$, approximated for $D \\ge 20$ by "
     "$(1 + \\frac{4s}{2D-3})^{-1/2}$, and $\\gamma$ by Silverman's rule "
     "$(1.06\\,\\sigma)^2 n^{-2/5}$. `ops.cramer_wold_phi` evaluates $\\phi_D$ exactly (a series "
     "and an asymptotic expansion) or by the closed form:"),
  code("s = jnp.linspace(0.0, 30.0, 200)\n"
       "for dim in (2, 5, 20):\n"
       "    plt.plot(s, ops.cramer_wold_phi(s, dim, approximate=False), label=f'exact D={dim}')\n"
       "    plt.plot(s, ops.cramer_wold_phi(s, dim, approximate=True), '--', label=f'closed form D={dim}')\n"
       "plt.xlabel('s'); plt.ylabel('phi_D(s)'); plt.legend(); plt.show()"),
  md("The distance is zero for identical samples and grows as two Gaussians move apart:"),
  code("x = jax.random.normal(jax.random.key(0), (256, 8))\n"
       "print('identical samples:', float(ops.cramer_wold_distance(x, x)))\n"
       "shifts = [0.0, 0.25, 0.5, 1.0, 2.0]\n"
       "y = jax.random.normal(jax.random.key(1), (256, 8))\n"
       "print([round(float(ops.cramer_wold_distance(x, y + d)), 5) for d in shifts])"),
  md("### A generator trained with it (the idea of the LCW generator)\n\n"
     "No discriminator: an MLP maps Gaussian noise to 2-d points, and its loss is the "
     "Cramer-Wold distance between a batch of its samples and a batch of data (eight Gaussians "
     "on a ring). The LCW generator applies the same loss in an autoencoder's latent space; "
     "here it works directly on the data."),
  code("centers = jnp.stack([jnp.cos(jnp.arange(8) * jnp.pi / 4), jnp.sin(jnp.arange(8) * jnp.pi / 4)], 1)\n"
       "def data_batch(key, n):\n"
       "    k1, k2 = jax.random.split(key)\n"
       "    return centers[jax.random.randint(k1, (n,), 0, 8)] + 0.05 * jax.random.normal(k2, (n, 2))\n"
       "def init(key, sizes=(2, 64, 64, 2)):\n"
       "    keys = jax.random.split(key, len(sizes) - 1)\n"
       "    return [(jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros(b)) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]\n"
       "def generate(params, z):\n"
       "    for w, b in params[:-1]:\n"
       "        z = jax.nn.relu(z @ w + b)\n"
       "    w, b = params[-1]\n"
       "    return z @ w + b\n"
       "params = init(jax.random.key(0))\n"
       "tx = optax.adam(3e-3); opt = tx.init(params)\n"
       "@jax.jit\n"
       "def step(params, opt, key):\n"
       "    kz, kx = jax.random.split(key)\n"
       "    loss, g = jax.value_and_grad(lambda p: ops.cramer_wold_distance(\n"
       "        generate(p, jax.random.normal(kz, (256, 2))), data_batch(kx, 256)))(params)\n"
       "    updates, opt = tx.update(g, opt)\n"
       "    return optax.apply_updates(params, updates), opt, loss\n"
       "for i in range(20 if SMOKE else 2000):\n"
       "    params, opt, loss = step(params, opt, jax.random.key(i))\n"
       "print('final Cramer-Wold loss', float(loss))\n"
       "samples = generate(params, jax.random.normal(jax.random.key(99), (2000, 2)))\n"
       "plt.figure(figsize=(4, 4)); plt.scatter(*samples.T, s=2, label='generated')\n"
       "plt.scatter(*centers.T, c='r', label='modes'); plt.legend(); plt.axis('equal'); plt.show()"),

  md("### The LCW generator on MNIST: an autoencoder, then the latent trick\n\n"
     "Digits live in 784 dimensions, where a kernel distance between batches says little; the "
     "LCW generator (Knop et al. 2020) first trains a Cramer-Wold autoencoder (reconstruction "
     "error plus the log Cramer-Wold distance of the codes from $N(0, I)$), then trains a small "
     "generator from noise to the 8-d codes with the Cramer-Wold distance against the encoded "
     "training digits. Samples are decoded generated codes. Both phases are pure steps that the "
     "GAN loop `fastnets.train.gan.train_gan` runs in compiled chunks."),
  code("from fastnets import models\n"
       "from fastnets.train import gan, init_train_state, lcw\n"
       "from fastnets.data import synthetic\n"
       "ds = data.load_dataset('mnist_bundled')\n"
       "imgs, _ = ds.train.get(np.arange(len(ds.train)))\n"
       "digits = jnp.asarray(synthetic.to_tanh_range(imgs).reshape(len(imgs), -1))  # [-1, 1]\n"
       "steps, width = (20, 32) if SMOKE else (1000, 256)\n"
       "ae = models.MLPAutoencoder(sample_shape=(784,), latent_dim=8, hidden=width, depth=2)\n"
       "tx = optax.adam(1e-3)\n"
       "ae_state = init_train_state(ae, tx, jax.random.key(0), digits[:2])\n"
       "ae_state, _ = gan.train_gan(lcw.make_autoencoder_step(ae, tx, 128), ae_state, digits,\n"
       "                            jax.random.key(1), steps, chunk_size=steps, label='autoencoder')\n"
       "codes = lcw.encode(ae, ae_state, digits)\n"
       "gen = models.latent_generator(8, hidden=width, depth=3)\n"
       "g_state = init_train_state(gen, tx, jax.random.key(2), codes[:2])\n"
       "# approximate=True: the closed-form kernel, as the authors' code uses in every dimension\n"
       "g_state, _ = gan.train_gan(lcw.make_latent_generator_step(gen, tx, 256, 8, approximate=True),\n"
       "                           g_state, codes,\n"
       "                           jax.random.key(3), steps, chunk_size=steps, label='latent generator')\n"
       "samples = lcw.lcw_sample(ae, ae_state, gen, g_state, jax.random.key(4), 64, 8)\n"
       "grid = (np.asarray(samples).reshape(8, 8, 28, 28).transpose(0, 2, 1, 3).reshape(224, 224) + 1) / 2\n"
       "plt.figure(figsize=(4, 4)); plt.imshow(grid, cmap='gray'); plt.axis('off'); plt.show()"),
  md("`experiments/lcw.py` compares this generator with a GAN (same decoder as generator) and "
     "the autoencoder's own samples by a Frechet distance in a classifier's features "
     "(`ops.frechet_distance`), and with the GAN and PacGAN2 on the 2-D ring and grid by PacGAN's "
     "mode metrics."),

  md("## 2. Covariance pooling and its square root (iSQRT-COV)\n\n"
     "`ops.covariance_pool` turns a feature map's $M$ locations into a $d\\times d$ covariance. "
     "iSQRT-COV normalises it by its matrix square root, computed by coupled Newton-Schulz "
     "iterations on $A/\\mathrm{tr}A$ (only matrix products, GPU friendly), then multiplies by "
     "$\\sqrt{\\mathrm{tr}A}$. The error against an eigendecomposition falls quadratically once "
     "the iteration has entered its convergence region:"),
  code("feats = jax.random.normal(jax.random.key(2), (4, 49, 16))  # (batch, locations, channels)\n"
       "cov = ops.covariance_pool(feats) + 1e-3 * jnp.eye(16)\n"
       "exact = ops.sqrtm_eigh(cov)\n"
       "iters = list(range(1, 16))\n"
       "errs = [float(jnp.max(jnp.abs(ops.sqrtm_newton_schulz(cov, n) - exact))) for n in iters]\n"
       "plt.semilogy(iters, errs, marker='o'); plt.xlabel('Newton-Schulz iterations')\n"
       "plt.ylabel('max |error|'); plt.show()"),
  md("The gradient is a `custom_vjp` that runs the iterations backwards (iSQRT-COV's backward). "
     "It is the exact derivative of the truncated iteration, for one iteration and for "
     "non-symmetric input too (the input is symmetrised first), and it approaches the "
     "eigendecomposition's gradient as the iterations converge:"),
  code("w = jax.random.normal(jax.random.key(3), cov.shape)\n"
       "g_eig = jax.grad(lambda a: jnp.sum(w * ops.sqrtm_eigh(a)))(cov)\n"
       "for n in (1, 3, 5, 10, 20):\n"
       "    g = jax.grad(lambda a: jnp.sum(w * ops.sqrtm_newton_schulz(a, n)))(cov)\n"
       "    print(n, 'iterations: max |grad - eigh grad| =', float(jnp.max(jnp.abs(g - g_eig))))"),
  md("### The GM-SOP gate\n\n"
     "GM-SOP mixes $N$ such second-order components with a gate that keeps the top $K$ per "
     "image; a balance loss, the squared coefficient of variation of the components' total gate "
     "weight, keeps the gate from always choosing the same ones:"),
  code("logits = jax.random.normal(jax.random.key(4), (8, 6))\n"
       "gates = ops.top_k_gates(logits, 2)\n"
       "print(np.round(np.asarray(gates), 2))\n"
       "print('non-zeros per row:', np.asarray((gates > 0).sum(1)))\n"
       "print('balance loss:', float(ops.gate_balance_loss(gates)),\n"
       "      '| uniform load:', float(ops.gate_balance_loss(jnp.full((8, 6), 1 / 6))))"),

  md("## 3. Probabilistic knowledge transfer\n\n"
     "PKT turns each representation into conditional probabilities "
     "$p_{i|j} = K(x_i, x_j) / \\sum_{k\\ne j} K(x_k, x_j)$ with the cosine kernel "
     "$K = (\\cos + 1)/2$ and trains the student to minimise $KL(P_{teacher}\\,\\|\\,P_{student})$. "
     "Only similarities enter, so teacher and student may differ in dimension. Retrieval mAP "
     "measures how well a representation ranks same-class digits first: here raw pixels against "
     "a 32-d PCA projection of them, and the PKT loss between them."),
  code("ds = data.load_dataset('mnist_bundled')\n"
       "n_db, n_q = (500, 100) if SMOKE else (7000, 2000)\n"
       "db_x, db_y = ds.train.get(np.arange(n_db)); q_x, q_y = ds.split('test').get(np.arange(n_q))\n"
       "flat = lambda im: ds.normalize(im).reshape(len(im), -1)\n"
       "db, q = flat(db_x), flat(q_x)\n"
       "_, _, vt = np.linalg.svd(db - db.mean(0), full_matrices=False)\n"
       "proj = vt[:32].T\n"
       "print('pixels mAP   ', float(ops.retrieval_map(db, db_y, q, q_y)))\n"
       "print('PCA-32 mAP   ', float(ops.retrieval_map(db @ proj, db_y, q @ proj, q_y)))\n"
       "print('PKT(pixels -> PCA-32) on a batch of 64:', float(ops.pkt_loss(db[:64] @ proj, db[:64])))\n"
       "print('PKT(random 32-d -> pixels):', float(ops.pkt_loss(np.random.default_rng(0).normal(size=(64, 32)), db[:64])))"),
  md("`fastnets.train.distillation_loss(student, teacher_fn, pkt_weight=..., kd_weight=...)` "
     "is the `fit` loss hook that adds PKT (and Hinton distillation) to the cross-entropy; "
     "`experiments/pkt.py` trains a teacher, then a student five ways, and reports test accuracy "
     "and mAP over seeds."),
]

nbcommon.write(cells, "kernel_distances.ipynb")
