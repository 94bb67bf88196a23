"""Writes colabs/sparse_conv.ipynb (kept as code so the notebook's source is reviewable).

    python tools/make_sparse_conv_notebook.py

Cells are stored without outputs; `FASTNETS_SMOKE=1` runs every cell in seconds (the notebook test
does: `python -m pytest tests/test_notebooks.py -q -k sparse`).
"""

import nbcommon  # tools/nbcommon.py: shared cells and writer
from nbcommon import code, md, setup_cell

cells = [
  md("# Sparse convolution for pruned CNNs (Escort)\n\n"
     "Escort (Chen, 2018) computes the convolutions of a pruned network *directly* from the nonzero "
     "weights instead of lowering them to a matrix product (im2col + GEMM) or to a general sparse "
     "library. This notebook\n\n"
     "1. trains the baseline CNN on the bundled MNIST digits while pruning it gradually to 90% "
     "(Zhu & Gupta's schedule, `fastnets.ops.gradual_magnitude_pruning`),\n"
     "2. converts its convolutions to the sparse format (`fastnets.nn.sparsify_variables`) and runs "
     "the unchanged model with direct sparse convolutions (`fastnets.nn.sparse_apply`),\n"
     "3. checks that its predictions equal the pruned dense model's,\n"
     "4. shows a small benchmark table (dense XLA convolution, im2col + matmul, im2col + BCOO, "
     "direct sparse) and the FLOPs saved.\n\n"
     "On a GPU `sparse_conv2d(impl=\"auto\")` runs the Pallas (Triton) kernel; on CPU the pure-JAX "
     "direct path. **Install.** From a checkout: `pip install -e .` (on Colab: clone the "
     "repository, `%cd` into it, `%pip install -e .`). Set `FASTNETS_SMOKE=1` to run every cell in "
     "seconds."),
  setup_cell("import os, sys, time, statistics",
       "import jax, jax.numpy as jnp, numpy as np\n"
       "import matplotlib.pyplot as plt\n"
       "from IPython.display import Markdown, display\n"
       "from fastnets import data, models, ops, train\n"
       "from fastnets import nn as fnn\n"
       "print('jax', jax.__version__, '|', jax.devices())"),
  md("## 1. Train the CNN while pruning it\n"
     "`gradual_magnitude_pruning` wraps the optimizer: at each mask update it keeps the "
     "largest-magnitude weights of every prunable kernel, at the sparsity of Zhu & Gupta's "
     "schedule `s_t = s_f (1 - (t - t_0) / (n dt))^3`, and pruned weights stay exactly zero. The "
     "first conv (one input channel, 288 weights) and the classifier stay dense."),
  code("ds = data.load_dataset('mnist_bundled')\n"
       "model = models.create_model('cnn', ds.num_classes)\n"
       "STEPS = 2 if SMOKE else 300\n"
       "KEEP_DENSE = {'Conv_0', 'Dense_1'}\n"
       "module_of = lambda path: '/'.join(str(getattr(k, 'key', k)) for k in path[:-1])\n"
       "prunable = lambda path, leaf: ops.default_prunable(path, leaf) and module_of(path) not in KEEP_DENSE\n"
       "schedule = ops.ZhuGuptaSchedule(0.9, begin_step=0 if SMOKE else 50,\n"
       "                                end_step=1 if SMOKE else 200, frequency=1 if SMOKE else 15)\n"
       "config = train.TrainConfig(steps=STEPS, batch_size=32 if SMOKE else 128,\n"
       "                           eval_batch_size=500, log_every=1 if SMOKE else 50)\n"
       "result = train.fit(model, ds, config, tx_wrapper=lambda tx: ops.gradual_magnitude_pruning(\n"
       "    tx, schedule, prunable=prunable))\n"
       "params = jax.device_get(result.state.params)\n"
       "masks = ops.pruning_masks(result.state.opt_state)\n"
       "print(ops.format_sparsity_report(ops.sparsity_report(params, masks, prunable=prunable)))"),
  code("t = np.arange(STEPS + 1)\n"
       "plt.figure(figsize=(5, 2.5))\n"
       "plt.plot(t, np.asarray(schedule(t)))\n"
       "plt.xlabel('step'); plt.ylabel('target sparsity'); plt.title('Zhu & Gupta schedule')\n"
       "plt.grid(alpha=0.3); plt.show()"),
  md("## 2. Convert to sparse convolutions\n"
     "`sparsify_variables` replaces each sufficiently sparse conv kernel by a `SparseKernel`: for "
     "every output channel its nonzero values and their (row, column, input channel) coordinates, "
     "padded to the largest count. `to_dense` inverts it exactly."),
  code("variables = {'params': params, **jax.device_get(result.state.model_state)}\n"
       "sparse_vars = fnn.sparsify_variables(variables, min_sparsity=0.5)\n"
       "sk = sparse_vars['params']['Conv_1']['kernel']\n"
       "print(type(sk).__name__, 'kernel_shape', sk.kernel_shape, '| values', sk.values.shape,\n"
       "      '| nonzeros', sk.num_nonzero(), f'| sparsity {sk.sparsity():.1%}')\n"
       "assert np.array_equal(np.asarray(ops.to_dense(sk)), np.asarray(params['Conv_1']['kernel']))"),
  md("## 3. Same predictions as the pruned dense model\n"
     "The dense model computes the same zeros with XLA's convolution; the sparse model skips them. "
     "Logits agree to float rounding, so the argmax predictions must agree (a mismatch could only "
     "come from a float tie between the two largest logits)."),
  code("dense_f = jax.jit(lambda v, x: model.apply(v, x, train=False))\n"
       "sparse_f = jax.jit(lambda v, x: fnn.sparse_apply(model, v, x, train=False))\n"
       "n = 256 if SMOKE else len(ds.validation)\n"
       "mismatches, max_diff, correct = 0, 0.0, 0\n"
       "for start in range(0, n, 500):\n"
       "    images, labels = ds.validation.get(np.arange(start, min(start + 500, n)))\n"
       "    x = jnp.asarray(ds.normalize(images))\n"
       "    a, b = np.asarray(dense_f(variables, x)), np.asarray(sparse_f(sparse_vars, x))\n"
       "    mismatches += int(np.sum(a.argmax(-1) != b.argmax(-1)))\n"
       "    max_diff = max(max_diff, float(np.max(np.abs(a - b))))\n"
       "    correct += int(np.sum(b.argmax(-1) == labels))\n"
       "print(f'{n} validation digits: {mismatches} prediction mismatches, max |logit diff| '\n"
       "      f'{max_diff:.2e}, sparse-model accuracy {correct / n:.4f}')\n"
       "assert mismatches == 0"),
  md("## 4. A small benchmark table\n"
     "One ResNet-50 3x3 layer (64 -> 64 channels on 56x56, scaled down here) at several "
     "sparsities, four ways: dense XLA convolution, im2col + dense matmul (the cuBLAS lowering), "
     "im2col + BCOO matmul (the cuSPARSE-like path) and the direct sparse path. Medians of "
     "interleaved rounds after warm-up; ratios > 1 mean faster than dense. "
     "`python -m experiments.bench_sparse_conv --quick` runs the full benchmark."),
  code("from fastnets.experiments import bench_sparse_conv\n"
       "bench_config = {'workdir': '', 'networks': ['resnet50'], 'layers': ['conv2_x_3x3'],\n"
       "                'end_to_end': False, 'batch': 1 if SMOKE else 2,\n"
       "                'sparsities': [0.9] if SMOKE else [0.5, 0.8, 0.9, 0.95],\n"
       "                'spatial_scale': 0.15 if SMOKE else 0.5, 'channel_scale': 0.125 if SMOKE else 0.5,\n"
       "                'warmup': 1, 'repeats': 2 if SMOKE else 7}\n"
       "bench = bench_sparse_conv.run(bench_config)['metrics']['layers']\n"
       "ms = lambda v: '-' if v is None else f'{1e3 * v:.2f}'\n"
       "lines = ['| layer | x | sparsity | dense ms | im2col ms | im2col+BCOO ms | direct ms | '\n"
       "         'direct vs dense | vs BCOO | FLOPs saved |', '|' + '---|' * 10]\n"
       "for r in bench:\n"
       "    lines.append(f\"| {r['layer']} | {'x'.join(map(str, r['shape']['x']))} | {r['sparsity']:.0%} | \"\n"
       "                 f\"{ms(r['dense_s'])} | {ms(r['im2col_s'])} | {ms(r['im2col_bcoo_s'])} | \"\n"
       "                 f\"{ms(r['direct_sparse_s'])} | {r['speedup_direct_sparse_vs_dense']:.2f}x | \"\n"
       "                 f\"{'-' if r['direct_vs_bcoo'] is None else format(r['direct_vs_bcoo'], '.2f') + 'x'} | \"\n"
       "                 f\"{r['flops_saved']:.0%} |\")\n"
       "display(Markdown('\\n'.join(lines)))"),
  md("### The trained CNN, dense vs sparse\n"
     "Inference of one batch of the pruned CNN with dense and with sparse convolutions (only "
     "`Conv_1` is sparse; the dense layers run as dense matmuls in both)."),
  code("xb = jnp.asarray(ds.normalize(ds.validation.get(np.arange(8 if SMOKE else 128))[0]))\n"
       "fns = {'dense': lambda: dense_f(variables, xb), 'sparse': lambda: sparse_f(sparse_vars, xb)}\n"
       "for f in fns.values():\n"
       "    for _ in range(2):\n"
       "        jax.block_until_ready(f())\n"
       "times = {k: [] for k in fns}\n"
       "for _ in range(3 if SMOKE else 9):\n"
       "    for k, f in fns.items():\n"
       "        t0 = time.perf_counter(); jax.block_until_ready(f()); times[k].append(time.perf_counter() - t0)\n"
       "med = {k: statistics.median(v) for k, v in times.items()}\n"
       "print(f\"batch {xb.shape[0]}: dense {1e3 * med['dense']:.2f} ms, sparse {1e3 * med['sparse']:.2f} ms, \"\n"
       "      f\"sparse speed-up {med['dense'] / med['sparse']:.2f}x (noisy on a shared machine)\")"),
  md("## 5. FLOPs saved\n"
     "Multiply-adds (2 FLOPs each) per example of every layer, dense against nonzero weights "
     "(`fastnets.ops.conv_flops`)."),
  code("layers = [('Conv_0', (1, 28, 28, 1)), ('Conv_1', (1, 14, 14, 32))]\n"
       "rows = []\n"
       "for name, x_shape in layers:\n"
       "    w = np.asarray(params[name]['kernel'])\n"
       "    rows.append((name, ops.conv_flops(x_shape, w.shape),\n"
       "                 ops.conv_flops(x_shape, w.shape, nonzeros=int(np.count_nonzero(w)))))\n"
       "for name in ('Dense_0', 'Dense_1'):\n"
       "    w = np.asarray(params[name]['kernel'])\n"
       "    rows.append((name, 2 * w.size, 2 * int(np.count_nonzero(w))))\n"
       "lines = ['| layer | dense FLOPs | nonzero FLOPs | saved |', '|---|---|---|---|']\n"
       "lines += [f'| {n} | {d:,} | {z:,} | {1 - z / d:.0%} |' for n, d, z in rows]\n"
       "total_d, total_z = sum(r[1] for r in rows), sum(r[2] for r in rows)\n"
       "lines.append(f'| **total** | {total_d:,} | {total_z:,} | {1 - total_z / total_d:.0%} |')\n"
       "display(Markdown('\\n'.join(lines)))\n"
       "plt.figure(figsize=(5, 2.5))\n"
       "plt.bar([r[0] for r in rows], [r[1] for r in rows], label='dense')\n"
       "plt.bar([r[0] for r in rows], [r[2] for r in rows], label='nonzero')\n"
       "plt.ylabel('FLOPs / example'); plt.legend(); plt.show()"),
]

nbcommon.write(cells, "sparse_conv.ipynb")
