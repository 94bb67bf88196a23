"""Writes colabs/low_precision.ipynb (kept as code so the notebook's source is reviewable).

    python tools/make_low_precision_notebook.py

The notebook is stored without outputs; tests/test_notebooks.py runs it with FASTNETS_SMOKE=1.
"""
import nbcommon  # tools/nbcommon.py: shared cells and writer
from nbcommon import code, md, setup_cell

cells = [
    md(
        "# Limited-precision training with fastnets\n\n"
        "Number formats (16-bit fixed point, bfloat16, FP8), round-to-nearest against stochastic "
        "rounding, and a short training run in 16-bit fixed point with both roundings: Gupta et "
        "al. 2015 (*Deep Learning with Limited Numerical Precision*) and Wang et al. 2018 "
        "(*Training Deep Neural Networks with 8-bit Floating Point Numbers*).\n\n"
        "**Install.** From a checkout of the repository: `pip install -e .` (on Colab: clone the "
        "repository, `%cd` into it and run `%pip install -e .`). Set `FASTNETS_SMOKE=1` to run "
        "every cell in seconds (the notebook test does)."),
    setup_cell("import os, sys",
        "import numpy as np\n"
        "import jax, jax.numpy as jnp\n"
        "import matplotlib.pyplot as plt\n"
        "from fastnets import ops\n"
        "from fastnets.ops import BFLOAT16, FLOAT16, FP8_E4M3, FP8_E5M2, FP16_WANG, FixedPoint\n"
        "print('jax', jax.__version__, '|', jax.devices())"),
    md(
        "## Formats and their grids\n"
        "`FixedPoint(IL, FL)` is a signed two's-complement word of IL + FL bits (sign included in "
        "IL): a uniform grid of step 2^-FL on [-2^(IL-1), 2^(IL-1)), saturating at the ends. "
        "`FloatFormat(exponent_bits, mantissa_bits)` is a binary float: the step doubles every "
        "binade, with subnormals below the smallest normal number."),
    code(
        "formats = {'fixed <2,14>': FixedPoint(2, 14), 'fixed <8,8>': FixedPoint(8, 8),\n"
        "           'bfloat16': BFLOAT16, 'float16': FLOAT16, 'FP16 1-6-9 (Wang)': FP16_WANG,\n"
        "           'FP8 E4M3': FP8_E4M3, 'FP8 E5M2 (Wang)': FP8_E5M2}\n"
        "print(f\"{'format':>20} {'bits':>5} {'largest':>12} {'smallest step':>14}\")\n"
        "for name, f in formats.items():\n"
        "    if isinstance(f, FixedPoint):\n"
        "        bits, top, step = f.word_bits, f.max_value, f.resolution\n"
        "    else:\n"
        "        bits, top, step = 1 + f.exponent_bits + f.mantissa_bits, f.max_value, f.smallest_step\n"
        "    print(f'{name:>20} {bits:>5} {top:>12.6g} {step:>14.3g}')"),
    code(
        "x = jnp.linspace(0.0, 4.0, 4001, dtype=jnp.float32)\n"
        "fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))\n"
        "for ax, (name, f) in zip(axes, [('fixed <3,2> (step 1/4)', FixedPoint(3, 2)),\n"
        "                                ('FP8 E5M2', FP8_E5M2), ('FP8 E4M3', FP8_E4M3)]):\n"
        "    ax.plot(x, ops.round_nearest(x, f), lw=1, label='round to nearest')\n"
        "    ax.plot(x, x, 'k:', lw=0.8)\n"
        "    ax.set(title=name, xlabel='x', ylabel='round(x)')\n"
        "    ax.grid(alpha=0.3)\n"
        "plt.tight_layout(); plt.show()\n"
        "# The whole positive grid of FP8 E5M2: uniform within a binade, doubling every binade.\n"
        "grid = np.unique(np.asarray(ops.round_nearest(jnp.logspace(-5, 5, 200000, dtype=jnp.float32), FP8_E5M2)))\n"
        "grid = grid[(grid > 0) & np.isfinite(grid)]\n"
        "print(len(grid), 'positive finite FP8 E5M2 values from', grid[0], 'to', grid[-1])\n"
        "plt.figure(figsize=(10, 1.2)); plt.semilogx(grid, np.zeros_like(grid), '|', ms=15)\n"
        "plt.yticks([]); plt.title('positive FP8 E5M2 values (log axis)'); plt.show()"),
    md(
        "## Stochastic rounding is unbiased\n"
        "Between neighbours a < x < b, `stochastic_round` returns b with probability "
        "(x - a) / (b - a): E[SR(x)] = x. Round-to-nearest always returns the same neighbour, so "
        "an update smaller than half a step is lost every time (Gupta's failure mode)."),
    code(
        "fmt = FixedPoint(4, 2)  # step 0.25\n"
        "n = 2_000 if SMOKE else 200_000\n"
        "x = jnp.full((n,), 0.3, jnp.float32)\n"
        "sr = np.asarray(ops.stochastic_round(jax.random.key(0), x, fmt))\n"
        "values, counts = np.unique(sr, return_counts=True)\n"
        "print('SR(0.3) values', values, 'frequencies', counts / n, '| mean', sr.mean(),\n"
        "      '| nearest', float(ops.round_nearest(x[:1], fmt)[0]))\n"
        "xs = jnp.linspace(-1.0, 1.0, 201, dtype=jnp.float32)\n"
        "reps = 50 if SMOKE else 2000\n"
        "keys = jax.random.split(jax.random.key(1), reps)\n"
        "mean_sr = jax.vmap(lambda k: ops.stochastic_round(k, xs, fmt))(keys).mean(0)\n"
        "fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.3))\n"
        "ax1.bar(values, counts / n, width=0.05)\n"
        "ax1.axvline(0.3, color='k', ls=':', label='x = 0.3'); ax1.axvline(sr.mean(), color='C1', label='mean of SR(x)')\n"
        "ax1.set(title=f'SR(0.3) on a 0.25 grid, {n:,} draws', xlabel='value', ylabel='frequency'); ax1.legend()\n"
        "ax2.plot(xs, ops.round_nearest(xs, fmt) - xs, label='nearest: round(x) - x')\n"
        "ax2.plot(xs, mean_sr - xs, label=f'stochastic: mean of {reps} draws - x')\n"
        "ax2.set(title='rounding error against x', xlabel='x'); ax2.legend(); ax2.grid(alpha=0.3)\n"
        "plt.tight_layout(); plt.show()"),
    code(
        "# Wang's example: 10,000 updates of 1e-4 to weights of 1.0 kept in FP16 1-6-9 (1,000 weights).\n"
        "steps = 200 if SMOKE else 10_000\n"
        "def accumulate(mode):\n"
        "    def body(i, w):\n"
        "        return ops.quantize(w + 1e-4, FP16_WANG, mode, key=jax.random.fold_in(jax.random.key(2), i))\n"
        "    return jax.jit(lambda: jax.lax.fori_loop(0, steps, body, jnp.ones((1000,), jnp.float32)))()\n"
        "near, sto = accumulate('nearest'), accumulate('stochastic')\n"
        "print(f'after {steps} updates of 1e-4: exact {1 + steps * 1e-4:.4f}, nearest {float(near.mean()):.4f}, '\n"
        "      f'stochastic {float(sto.mean()):.4f} +- {float(sto.std()):.4f} (mean +- std over 1,000 weights)')"),
    md(
        "## Training in 16-bit fixed point\n"
        "`experiments.low_precision` trains an MLP on the bundled MNIST digits with weights, "
        "activations, gradients and the weight update in 16-bit fixed point, via the "
        "`fastnets.nn.quantized` interceptor (entered inside the loss function) and "
        "`fastnets.ops.low_precision_updates` (the optimizer wrapper). Here: float32 against 8 "
        "fraction bits with round-to-nearest and with stochastic rounding, at SGD learning rate "
        "0.01. The full grid (FL 8, 10, 12, 14 and FP8) is `python -m experiments.low_precision "
        "--quick`."),
    code(
        "from fastnets.experiments import low_precision\n"
        "config = {'workdir': '', 'dataset': 'mnist_bundled', 'model': 'mlp', 'features': [100, 100],\n"
        "          'fraction_bits': [8], 'fp8': False, 'verbose': False, 'seeds': [0],\n"
        "          'steps': 3 if SMOKE else 1000, 'batch_size': 20 if SMOKE else 100,\n"
        "          'log_every': 1 if SMOKE else 100, 'eval_every': 0 if SMOKE else 100,\n"
        "          'eval_batch_size': 500 if SMOKE else 1000}\n"
        "results = low_precision.run(config)\n"
        "for name, m in results['metrics'].items():\n"
        "    print(f\"{name:>26}: test accuracy {m['test_accuracy']:.4f}\")\n"
        "print(results['formats']['fixed16_fl8_stochastic']['layer1'])"),
    code(
        "for name, hist in results['history'].items():\n"
        "    pts = [(h['step'], h['val_accuracy']) for h in hist if 'val_accuracy' in h]\n"
        "    plt.plot(*zip(*pts), marker='o', label=name)\n"
        "plt.xlabel('step'); plt.ylabel('validation accuracy'); plt.ylim(0, 1); plt.legend()\n"
        "plt.title('16-bit fixed point, FL 8: round-to-nearest loses the small updates'); plt.show()"),
]
nbcommon.write(cells, "low_precision.ipynb")
