"""Writes colabs/bt_rnn.ipynb (kept as code so the notebook's source is reviewable).

    python tools/make_bt_rnn_notebook.py   # from the repository root
"""
import nbcommon  # tools/nbcommon.py: shared cells and writer
from nbcommon import code, md, setup_cell

cells = [
    md(
        "# Block-Term RNNs: compact input-to-hidden maps\n\n"
        "BT-RNN (Ye et al. 2018, CVPR) replaces the huge input-to-hidden matrix of an RNN on "
        "high-dimensional frames by a **Block-Term** matrix: the dimensions are factored, "
        "I = I_1 ... I_N and J = J_1 ... J_N, and W is a sum of C Tucker blocks,\n\n"
        "W[i, j] = sum_c sum_r G_c[r_1..r_N] prod_n A_c^(n)[i_n, j_n, r_n],\n\n"
        "with C (sum_n I_n J_n R + R^N) parameters instead of I J. `fastnets.ops.bt_matmul` "
        "computes x W by contracting x with the factors and cores, never building W.\n\n"
        "This notebook (1) fits Block-Term factors to a given dense matrix and compares "
        "parameter counts and reconstruction errors across ranks, (2) trains a small BT-LSTM "
        "against the dense LSTM on sequences of MNIST digits (the `bt_rnn` experiment).\n\n"
        "**Install.** From a checkout of the repository: `pip install -e .` (on Colab: clone the "
        "repository, `%cd` into it and run `%pip install -e .`). Set `FASTNETS_SMOKE=1` to run "
        "every cell in seconds (the notebook test does)."),
    setup_cell("import os, sys",
        "import jax, jax.numpy as jnp, numpy as np, optax\n"
        "import matplotlib.pyplot as plt\n"
        "from fastnets import ops\n"
        "print('jax', jax.__version__, '|', jax.devices())"),
    md(
        "## x W without W\n"
        "A 784 x 256 map with input factors 4 x 7 x 4 x 7 (rows and columns of a 28 x 28 frame) "
        "and output factors 4 x 4 x 4 x 4, Tucker rank 2, 2 blocks. `bt_matmul` agrees with the "
        "product by the materialised matrix (`bt_dense`), and `bt_matmul_flops` shows the "
        "contraction order and its cost against the dense product."),
    code(
        "IN_F, OUT_F = (4, 7, 4, 7), (4, 4, 4, 4)\n"
        "factors, cores = ops.bt_init(jax.random.key(0), IN_F, OUT_F, rank=2, num_blocks=2)\n"
        "x = jax.random.normal(jax.random.key(1), (32, 784))\n"
        "y = ops.bt_matmul(x, factors, cores)\n"
        "W = ops.bt_dense(factors, cores)\n"
        "print('max |x W_bt - x W_dense| =', float(jnp.abs(y - x @ W).max()))\n"
        "print('parameters:', ops.bt_num_params(IN_F, OUT_F, 2, 2), 'instead of', W.size)\n"
        "plan = ops.bt_matmul_flops(32, IN_F, OUT_F, 2, 2)\n"
        "print(f'FLOPs {plan.flops:,} vs dense {plan.dense_flops:,}; order {plan.path}')"),
    md(
        "## Factor a dense matrix into Block-Term form\n"
        "The target: a 784 x 256 matrix made of a Block-Term matrix of rank 3 with 2 blocks plus "
        "5% noise (relative Frobenius norm), so a good fit of rank >= 3 reaches about the noise "
        "level. For each Tucker rank R we fit the factors and cores by Adam on the relative "
        "squared error ||W_bt - W||^2 / ||W||^2 (a few hundred steps; ALS would also do), and "
        "record the parameter count. The same for Tensor-Train matrices of similar sizes. The "
        "target is Block-Term by construction, which favours BT over TT here; a random dense "
        "matrix has no such structure, and no format this small fits it well."),
    code(
        "k1, k2 = jax.random.split(jax.random.key(2))\n"
        "planted = ops.bt_dense(*ops.bt_init(k1, IN_F, OUT_F, rank=3, num_blocks=2))\n"
        "noise = jax.random.normal(k2, planted.shape)\n"
        "target = planted + 0.05 * noise * jnp.linalg.norm(planted) / jnp.linalg.norm(noise)\n"
        "STEPS = 5 if SMOKE else 400\n"
        "BT_RANKS, TT_RANKS = ((1, 2), (2,)) if SMOKE else ((1, 2, 3, 4), (2, 4, 8))\n"
        "\n"
        "def fit(params, to_dense, steps=STEPS, lr=0.05):\n"
        "  \"\"\"Adam on the relative squared error; returns (params, relative error).\"\"\"\n"
        "  norm2 = jnp.sum(target ** 2)\n"
        "  loss = lambda p: jnp.sum((to_dense(p) - target) ** 2) / norm2\n"
        "  tx = optax.adam(optax.cosine_decay_schedule(lr, steps))\n"
        "  @jax.jit\n"
        "  def step(p, s):\n"
        "    l, g = jax.value_and_grad(loss)(p)\n"
        "    u, s = tx.update(g, s, p)\n"
        "    return optax.apply_updates(p, u), s, l\n"
        "  state = tx.init(params)\n"
        "  for _ in range(steps):\n"
        "    params, state, l = step(params, state)\n"
        "  return params, float(jnp.sqrt(loss(params)))\n"
        "\n"
        "rows = []\n"
        "for rank in BT_RANKS:\n"
        "  p0 = ops.bt_init(jax.random.key(10 + rank), IN_F, OUT_F, rank=rank, num_blocks=2)\n"
        "  _, err = fit(p0, lambda p: ops.bt_dense(*p))\n"
        "  rows.append(('BT', rank, ops.bt_num_params(IN_F, OUT_F, rank, 2), err))\n"
        "for rank in TT_RANKS:\n"
        "  p0 = ops.tt_init(jax.random.key(20 + rank), IN_F, OUT_F, rank)\n"
        "  _, err = fit(p0, ops.tt_dense)\n"
        "  rows.append(('TT', rank, ops.tt_num_params(IN_F, OUT_F, rank), err))\n"
        "print(f'dense: {target.size:,} parameters')\n"
        "for fmt, rank, n, err in rows:\n"
        "  print(f'{fmt} rank {rank}: {n:6,} parameters ({target.size / n:5.0f}x fewer), '\n"
        "        f'relative error {err:.3f}')"),
    code(
        "fig, ax = plt.subplots(figsize=(5, 3.5))\n"
        "for fmt, marker in (('BT', 'o'), ('TT', 's')):\n"
        "  pts = [(n, e, r) for f, r, n, e in rows if f == fmt]\n"
        "  ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=fmt + ' (C=2)' * (fmt == 'BT'))\n"
        "  for n, e, r in pts:\n"
        "    ax.annotate(f'R={r}', (n, e), fontsize=8)\n"
        "ax.axhline(0.05, color='gray', linestyle=':', label='noise level')\n"
        "ax.set(xscale='log', xlabel='parameters', ylabel='relative error',\n"
        "       title='fitting a 784 x 256 matrix')\n"
        "ax.legend(); plt.show()"),
    md(
        "## Train a small BT-LSTM\n"
        "`experiments.bt_rnn.run`: sequences of 8 MNIST frames, label = the digit that appears "
        "3 times (the other 5 frames are different digits). The dense LSTM and a BT-LSTM with "
        "Tucker rank 4 and 2 blocks (784 -> 4 x 64 input map, 131x fewer parameters) are trained "
        "with `fastnets.train.fit`, each at the learning rate the experiment's one sweep chose "
        "for its kind (dense 1e-3, BT 1e-2: the BT factors are products of several tensors and "
        "need a larger Adam step). This short run is an illustration; in the experiment's quick "
        "setting (1,000 steps, 3 seeds) the BT-LSTM stays below the dense LSTM on this task: the "
        "fastnets accuracy target is not met on MNIST frames (the numbers are in the results "
        "document, `docs/RESULTS.md`)."),
    code(
        "from fastnets.experiments import bt_rnn\n"
        "config = {**bt_rnn.QUICK, 'workdir': '', 'models': ['lstm', 'bt_lstm_r4_c2'],\n"
        "          'seeds': [0], 'steps': 300, 'eval_every': 50}\n"
        "if SMOKE:\n"
        "  config.update(train_sequences=64, val_sequences=40, test_sequences=40, hidden=16, hidden_factors=[2, 2, 2, 2],\n"
        "                steps=2, batch_size=16, eval_batch_size=40, log_every=1, eval_every=1)\n"
        "results = bt_rnn.run(config)\n"
        "for name in config['models']:\n"
        "  m = results['metrics'][name]\n"
        "  print(f\"{name:14s} test accuracy {m['test_accuracy']:.3f} | input-map params \"\n"
        "        f\"{m['input_params']:,} | total params {m['total_params']:,}\")"),
    code(
        "fig, ax = plt.subplots(figsize=(5, 3.5))\n"
        "for name, hist in results['histories'].items():\n"
        "  pts = [(h['step'], h['val_accuracy']) for h in hist if 'val_accuracy' in h]\n"
        "  ax.plot(*zip(*pts), marker='o', label=name)\n"
        "ax.set(xlabel='step', ylabel='validation accuracy'); ax.legend(); plt.show()"),
]
nbcommon.write(cells, "bt_rnn.ipynb")
