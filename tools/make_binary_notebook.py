"""Writes colabs/binary.ipynb (kept as code so the notebook's source is reviewable).

    python tools/make_binary_notebook.py

Cells are stored without outputs; `FASTNETS_SMOKE=1` runs every cell in seconds (the notebook test
does: `python -m pytest tests/test_notebooks.py -q -k binary`).
"""

import nbcommon  # tools/nbcommon.py: shared cells and writer
from nbcommon import code, md, setup_cell

cells = [
  md("# Binary and integer-only arithmetic: K-TanH and ABC-Net\n\n"
     "Two ways to replace floating-point arithmetic by bit manipulation:\n\n"
     "* **K-TanH** (Kundu et al. 2019): tanh from the float's bit pattern with a mask, a shift, "
     "an add and a 32-entry table (`fastnets.ops.ktanh`).\n"
     "* **ABC-Net** (Lin, Zhao, Pan, NeurIPS 2017): weights as a combination of M binary bases, "
     "activations as a combination of N binary activations (`fastnets.ops.binary_bases`, "
     "`fastnets.nn.ABCConv`, `fastnets.nn.ABCDense`); a trained network then runs on packed "
     "bits, every binary dot product an XNOR and a population count "
     "(`fastnets.nn.binary_apply`).\n\n"
     "This notebook compares K-TanH with tanh, looks at the binary bases of a trained layer, and "
     "runs a packed layer and a packed model. **Install.** From a checkout: `pip install -e .` "
     "(on Colab: clone the repository, `%cd` into it, `%pip install -e .`). Set "
     "`FASTNETS_SMOKE=1` to run every cell in seconds."),
  setup_cell("import os, sys, time, statistics",
             "import jax, jax.numpy as jnp, numpy as np\n"
             "import ml_dtypes\n"
             "import matplotlib.pyplot as plt\n"
             "from fastnets import data, models, ops, train\n"
             "from fastnets import nn as fnn\n"
             "print('jax', jax.__version__, '|', jax.devices())"),
  md("## 1. K-TanH against tanh\n"
     "For 0.25 <= |x| <= 3.75 the index t is bits 24..20 of the float32 pattern (two exponent "
     "bits, three mantissa bits); the table gives an exponent E_t, a shift r_t and a bias b_t, and "
     "the output mantissa is (Mi >> r_t) + b_t, Mi being the seven bfloat16 mantissa bits. Below "
     "0.25 the input is returned, above 3.75 its sign. The output is a bfloat16 value, so the "
     "curve is a staircase at bfloat16 resolution."),
  code("for x in (0.5, 1.0, 2.0, 3.0):\n"
       "    y = ops.ktanh(jnp.float32(x))\n"
       "    bits = np.asarray(jnp.float32(x)).view(np.uint32)\n"
       "    print(f'K({x}) = {float(y)!r:12}  tanh = {np.tanh(x):.6f}  index t = {(bits >> 20) & 31:2d}  '\n"
       "          f'table {ops.KTANH_TABLE[(bits >> 20) & 31]}')\n"
       "x = jnp.linspace(-5, 5, 2001)\n"
       "y = ops.ktanh(x)\n"
       "fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3))\n"
       "a1.plot(x, jnp.tanh(x), label='tanh'); a1.plot(x, y, '--', label='K-TanH'); a1.legend()\n"
       "a1.set_title('K-TanH and tanh'); a2.plot(x, y - jnp.tanh(x)); a2.set_title('K-TanH - tanh')\n"
       "for a in (a1, a2): a.grid(alpha=0.3)\n"
       "plt.show()"),
  md("Every finite bfloat16 in [-8, 8] (about 33,000 values), and the speed against XLA's own "
     "tanh on float32 (both jitted, interleaved rounds; noisy on a shared machine; "
     "`python -m experiments.ktanh --quick` measures it properly)."),
  code("patterns = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(ml_dtypes.bfloat16)\n"
       "vals = patterns[np.isfinite(patterns.astype(np.float32)) & (np.abs(patterns.astype(np.float32)) <= 8)]\n"
       "err = np.abs(np.asarray(ops.ktanh(jnp.asarray(vals))).astype(np.float64) - np.tanh(vals.astype(np.float64)))\n"
       "print(f'{vals.size} bfloat16 values: max |K-TanH - tanh| = {err.max():.5f} at x = {float(vals[err.argmax()])}')\n"
       "big = jax.random.uniform(jax.random.key(0), (1 << (12 if SMOKE else 24),), minval=-5, maxval=5)\n"
       "fns = {'ktanh': jax.jit(ops.ktanh), 'tanh': jax.jit(jnp.tanh)}\n"
       "for f in fns.values():\n"
       "    f(big).block_until_ready()\n"
       "times = {k: [] for k in fns}\n"
       "for _ in range(3 if SMOKE else 7):\n"
       "    for k, f in fns.items():\n"
       "        t0 = time.perf_counter(); f(big).block_until_ready(); times[k].append(time.perf_counter() - t0)\n"
       "ratio = statistics.median(a / b for a, b in zip(times['ktanh'], times['tanh']))\n"
       "print(f'{big.size:,} float32 values: K-TanH time / tanh time = {ratio:.2f} (median of rounds)')"),
  md("## 2. The binary bases of a trained layer\n"
     "Train the float version of the ABC CNN briefly, then approximate its middle conv kernel by "
     "M binary bases B_i = sign(W - mean(W) + u_i std(W)) with least-squares coefficients alpha "
     "(ABC-Net Eq. 1-3). The relative error falls as M grows."),
  code("ds = data.load_dataset('mnist_bundled')\n"
       "cfg = train.TrainConfig(steps=2 if SMOKE else 300, batch_size=32 if SMOKE else 64,\n"
       "                        eval_batch_size=500, log_every=1 if SMOKE else 100)\n"
       "float_model = models.create_model('abc_cnn_float', 10, channels=(16, 32), hidden=128)\n"
       "float_result = train.fit(float_model, ds, cfg)\n"
       "w = float_result.state.params['Conv_1']['kernel']\n"
       "errors = {m: float(ops.binary_approximation_error(w, m)) for m in (1, 2, 3, 4, 5)}\n"
       "print('kernel', w.shape, '| relative error by M:', {m: round(e, 3) for m, e in errors.items()})\n"
       "bases, alpha = ops.binary_bases(w, 3)\n"
       "print('alpha for M = 3:', np.round(np.asarray(alpha), 4))\n"
       "fig, axes = plt.subplots(1, 5, figsize=(13, 2.6))\n"
       "axes[0].hist(np.asarray(w).ravel(), 60); axes[0].set_title('W values')\n"
       "axes[1].plot(list(errors), list(errors.values()), 'o-'); axes[1].set_title('error vs M')\n"
       "for i in range(3):\n"
       "    axes[2 + i].imshow(np.asarray(bases[i, :, :, :, 0]).reshape(3, -1)[:, :48], cmap='gray')\n"
       "    axes[2 + i].set_title(f'B_{i + 1}, alpha={float(alpha[i]):.3f}'); axes[2 + i].axis('off')\n"
       "plt.show()"),
  md("## 3. A packed layer\n"
     "`pack_binary_variables` stores the signs of each base in uint32 words; the layer binarises "
     "its input into N sign planes, packs them, and computes every binary dot product as "
     "K - 2 popcount(a XOR b). The counts are exact integers, so the packed layer equals the "
     "float evaluation of the same binary layer bit for bit."),
  code("features = 256 if SMOKE else 4096\n"
       "batch = 8 if SMOKE else 64\n"
       "layer = fnn.ABCDense(features, weight_bases=1, activation_bases=1, use_bias=False)\n"
       "xd = jax.random.normal(jax.random.key(1), (batch, features))\n"
       "lv = jax.jit(layer.init)(jax.random.key(2), xd)\n"
       "packed_lv = fnn.pack_binary_variables(lv, 1)\n"
       "k = packed_lv['params']['kernel']\n"
       "print('packed kernel words', k.words.shape, k.words.dtype, '| fan-in', k.length,\n"
       "      f'| {lv[\"params\"][\"kernel\"].nbytes / k.words.nbytes:.0f}x smaller than float32')\n"
       "packed_f = jax.jit(lambda v, x: fnn.binary_apply(layer, v, x))\n"
       "float_f = jax.jit(lambda v, x: fnn.binary_apply(layer, v, x, impl='float'))\n"
       "assert np.array_equal(packed_f(packed_lv, xd), float_f(lv, xd))\n"
       "matmul = jax.jit(jnp.dot)\n"
       "wd = lv['params']['kernel']\n"
       "fns = {'float32 matmul': lambda: matmul(xd, wd), 'packed': lambda: packed_f(packed_lv, xd)}\n"
       "for f in fns.values():\n"
       "    jax.block_until_ready(f())\n"
       "times = {k: [] for k in fns}\n"
       "for _ in range(3 if SMOKE else 7):\n"
       "    for name, f in fns.items():\n"
       "        t0 = time.perf_counter(); jax.block_until_ready(f()); times[name].append(time.perf_counter() - t0)\n"
       "speedup = statistics.median(a / b for a, b in zip(times['float32 matmul'], times['packed']))\n"
       "print(f'{features} x {features} at batch {batch}: float32 time / packed time = {speedup:.2f}')"),
  md("## 4. A packed model\n"
     "Train the ABC CNN with M = N = 3 (first and last layers full precision), then run it on the "
     "packed path and on the float evaluation of the same binary network: the predictions are "
     "identical."),
  code("abc_model = models.create_model('abc_cnn', 10, channels=(16, 32), hidden=128,\n"
       "                                 weight_bases=3, activation_bases=3)\n"
       "abc_result = train.fit(abc_model, ds, cfg)\n"
       "print('float net val accuracy', float_result.metrics['val_accuracy'],\n"
       "      '| ABC (3, 3) val accuracy', abc_result.metrics['val_accuracy'])\n"
       "variables = {'params': abc_result.state.params, **abc_result.state.model_state}\n"
       "packed_vars = fnn.pack_binary_variables(variables, 3)\n"
       "images, labels = ds.validation.get(np.arange(200 if SMOKE else 1000))\n"
       "xv = jnp.asarray(ds.normalize(images))\n"
       "y_packed = jax.jit(lambda v, x: fnn.binary_apply(abc_model, v, x))(packed_vars, xv)\n"
       "y_float = jax.jit(lambda v, x: fnn.binary_apply(abc_model, v, x, impl='float'))(variables, xv)\n"
       "same = np.array_equal(np.asarray(y_packed).argmax(1), np.asarray(y_float).argmax(1))\n"
       "print(f'{len(labels)} validation digits: packed predictions identical to float: {same}; '\n"
       "      f'packed accuracy {np.mean(np.asarray(y_packed).argmax(1) == labels):.4f}')\n"
       "assert same"),
]

nbcommon.write(cells, "binary.ipynb")
