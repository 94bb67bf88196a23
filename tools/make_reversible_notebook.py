"""Writes colabs/reversible.ipynb (kept as code so the notebook's source is reviewable).

    python tools/make_reversible_notebook.py

Cells are stored without outputs; `FASTNETS_SMOKE=1` runs every cell in seconds (the notebook test
does: `python -m pytest tests/test_notebooks.py -q -k reversible`).
"""
import os

import nbformat as nbf

md = nbf.v4.new_markdown_cell
code = nbf.v4.new_code_cell

cells = [
  md("# Reversible residual networks (RevNet)\n\n"
     "A RevNet (Gomez, Ren, Urtasun, Grosse, NeurIPS 2017) splits the channels of every block's "
     "input into halves `(x1, x2)` and computes\n\n"
     "    y1 = x1 + F(x2)        x2 = y2 - G(y1)\n"
     "    y2 = x2 + G(y1)        x1 = y1 - F(x2)\n\n"
     "(Eq. (3) on the left, its exact inverse Eq. (4) on the right). Because every block can be "
     "undone, the backward pass does not need stored activations: it rebuilds each block's input "
     "from its output, block by block from the last (Algorithm 1), so activation memory does not "
     "grow with depth, for about one extra forward pass of compute. In JAX this is one "
     "`jax.custom_vjp` over the whole stack (`fastnets.ops.reversible_sequence`). This notebook\n\n"
     "1. inverts a coupling block by hand and with the library,\n"
     "2. watches the compiled backward pass's memory stay flat as blocks are added (the "
     "benchmark's plot, and a RevNet train step with batch norm),\n"
     "3. trains a small RevNet on the bundled MNIST digits with the shared training loop.\n\n"
     "**Install.** From a checkout: `pip install -e .` (on Colab: clone the repository, `%cd` into "
     "it, `%pip install -e .`). Set `FASTNETS_SMOKE=1` to run every cell in seconds."),
  code("import os, sys, tempfile\n"
       "# Make the repository's experiments/ importable when the notebook runs from colabs/.\n"
       "REPO = os.path.abspath('..') if os.path.isdir('../experiments') else os.path.abspath('.')\n"
       "sys.path.insert(0, REPO)\n"
       "SMOKE = os.environ.get('FASTNETS_SMOKE') == '1'\n"
       "import jax, jax.numpy as jnp, numpy as np\n"
       "import flax.linen as nn\n"
       "import matplotlib.pyplot as plt\n"
       "from IPython.display import Image, Markdown, display\n"
       "from fastnets import data, models, ops, train\n"
       "from fastnets import nn as fnn\n"
       "print('jax', jax.__version__, '|', jax.devices())"),
  md("## 1. Invert a block by hand\n"
     "F and G are any pure functions that keep the shape of their half; here small MLPs. "
     "`ops.additive_coupling` is Eq. (3); undoing it takes two subtractions, in the opposite "
     "order (G first, because `y1` is known and `x2` is not yet)."),
  code("def mlp(p, h):\n"
       "    return jnp.tanh(h @ p['w1']) @ p['w2']\n"
       "\n"
       "k = jax.random.split(jax.random.key(0), 5)\n"
       "half, hidden = 4, 16\n"
       "f_params = {'w1': jax.random.normal(k[0], (half, hidden)), 'w2': jax.random.normal(k[1], (hidden, half))}\n"
       "g_params = {'w1': jax.random.normal(k[2], (half, hidden)), 'w2': jax.random.normal(k[3], (hidden, half))}\n"
       "x = jax.random.normal(k[4], (3, 2 * half))\n"
       "x1, x2 = ops.split_channels(x)\n"
       "y1, y2 = ops.additive_coupling(mlp, mlp, f_params, g_params, x1, x2)\n"
       "\n"
       "# By hand, Eq. (4): G first, then F.\n"
       "x2_rebuilt = y2 - mlp(g_params, y1)\n"
       "x1_rebuilt = y1 - mlp(f_params, x2_rebuilt)\n"
       "print('by hand: max |x - rebuilt| =', float(jnp.max(jnp.abs(jnp.concatenate([x1_rebuilt, x2_rebuilt], -1) - x))))\n"
       "# The library's inverse does the same.\n"
       "r1, r2 = ops.additive_coupling_inverse(mlp, mlp, f_params, g_params, y1, y2)\n"
       "print('library: max |x - rebuilt| =', float(jnp.max(jnp.abs(jnp.concatenate([r1, r2], -1) - x))))"),
  md("The same with Flax modules: `fastnets.nn.RevBlock(f=...)` takes a template module for F "
     "(G gets the same architecture with its own parameters) and has an `inverse` method. "
     "In evaluation mode batch norm uses its running statistics, so the block is a fixed "
     "function and the inverse is exact up to float32 rounding."),
  code("class ConvBN(nn.Module):\n"
       "    features: int\n"
       "    @nn.compact\n"
       "    def __call__(self, h, train=False):\n"
       "        h = nn.BatchNorm(use_running_average=not train)(h)\n"
       "        return nn.Conv(self.features, (3, 3))(nn.relu(h))\n"
       "\n"
       "block = fnn.RevBlock(f=ConvBN(4))\n"
       "img = jax.random.normal(jax.random.key(1), (2, 8, 8, 8))\n"
       "variables = block.init(jax.random.key(2), img)\n"
       "out = block.apply(variables, img)\n"
       "back = block.apply(variables, out, method='inverse')\n"
       "print('variables:', jax.tree.map(jnp.shape, variables['params']))\n"
       "print('RevBlock inverse error:', float(jnp.max(jnp.abs(back - img))))"),
  md("## 2. Memory stays flat with depth\n"
     "`experiments/bench_reversible.py` compiles `jit(value_and_grad(loss))` for a stack of "
     "coupling blocks (MLP F and G) at several depths and reads the compiled executable's "
     "temporary memory (`jit(...).lower(...).compile().memory_analysis()`), for plain autodiff "
     "(`backprop='store'`: every block's activations kept), `jax.checkpoint` per block under the "
     "same `lax.scan`, and the reversible backward pass. Its quick setting (depths 8-64) takes "
     "about a minute on a CPU."),
  code("from experiments import bench_reversible, common\n"
       "bench_dir = tempfile.mkdtemp(prefix='bench_reversible_')\n"
       "overrides = bench_reversible.SMOKE if SMOKE else bench_reversible.QUICK\n"
       "bench = bench_reversible.run(common.merge_config(bench_reversible.DEFAULTS, overrides,\n"
       "                                                 {'workdir': bench_dir, 'sgd_step_memory': False}))\n"
       "rows = ['| method | ' + ' | '.join(f'{d} blocks' for d in sorted(bench['metrics']['plain'], key=int)) + ' |',\n"
       "        '|---|' + '---|' * len(bench['metrics']['plain'])]\n"
       "for method, by_depth in bench['metrics'].items():\n"
       "    rows.append(f'| {method} | ' + ' | '.join(f\"{by_depth[d]['temp_bytes'] / 2**20:.2f} MiB\"\n"
       "                                           for d in sorted(by_depth, key=int)) + ' |')\n"
       "display(Markdown('\\n'.join(rows)))\n"
       "display(Image(os.path.join(bench_dir, 'memory_vs_depth.png')))"),
  md("The same property in a real RevNet: the compiled train step of a RevNet whose first stage "
     "has more and more reversible blocks (convolutions, batch norm), reversible against plain "
     "backprop of the identical network. Only shapes are needed to compile, so nothing is "
     "initialised (`jax.eval_shape`). Each compile takes a few seconds on a CPU."),
  code("def revnet_temp_bytes(units, backprop, batch=32):\n"
       "    filters = (4, 4, 8, 8) if SMOKE else (8, 8, 16, 28)\n"
       "    model = models.RevNet(num_classes=10, units=units, filters=filters, backprop=backprop)\n"
       "    x = jnp.zeros((batch, 28, 28, 1))\n"
       "    variables = jax.eval_shape(model.init, jax.random.key(0), x)\n"
       "    def loss(params, stats):\n"
       "        logits, new = model.apply({'params': params, 'batch_stats': stats}, x, train=True,\n"
       "                                  mutable=['batch_stats'])\n"
       "        return jnp.mean(logits ** 2), new\n"
       "    step = jax.jit(jax.value_and_grad(loss, has_aux=True))\n"
       "    compiled = step.lower(variables['params'], variables['batch_stats']).compile()\n"
       "    return compiled.memory_analysis().temp_size_in_bytes\n"
       "\n"
       "first_stage = [2, 3] if SMOKE else [2, 5, 9, 17]\n"
       "mem = {mode: [revnet_temp_bytes((u, 1, 1), mode) / 2**20 for u in first_stage]\n"
       "       for mode in ('reversible', 'store')}\n"
       "blocks = [u - 1 for u in first_stage]  # the first unit of a stage is a (stored) transition\n"
       "plt.figure(figsize=(5, 3.2))\n"
       "for mode, values in mem.items():\n"
       "    plt.plot(blocks, values, marker='o', label=mode)\n"
       "    print(mode, ', '.join(f'{b} blocks: {v:.2f} MiB' for b, v in zip(blocks, values)))\n"
       "plt.xlabel('reversible blocks in stage 1'); plt.ylabel('compiled temp memory (MiB)')\n"
       "plt.title('RevNet train step, batch 32, 28x28'); plt.legend(); plt.grid(alpha=0.3); plt.show()"),
  md("## 3. Train a small RevNet\n"
     "RevNet-38 (units 3-3-3 as in the paper) with every width divided by 4, on the bundled "
     "MNIST digits, with the shared training loop `fastnets.train.fit`; batch norm's running "
     "statistics are updated once per step even though the backward pass runs F and G again. "
     "The registry knows the paper's models by name: `models.create_model('revnet38', 10)`, "
     "`'revnet110'`, `'revnet164'` and their baselines `'resnet32'`, `'resnet110'`, "
     "`'resnet164'` (bottleneck). `python -m experiments.revnet --quick` compares RevNet-38 with "
     "ResNet-32 (accuracy, memory, step time).\n\n"
     "On a CPU the RevNet step is several times slower than a ResNet step of the same size: XLA:CPU "
     "runs convolution gradients inside a `lax.scan` (the reversible stacks) on a slow path. On a "
     "GPU the cost is about one extra forward pass."),
  code("ds = data.load_dataset('mnist_bundled')\n"
       "if SMOKE:\n"
       "    model = models.create_model('revnet38', ds.num_classes, units=(2, 1, 1), filters=(4, 4, 8, 8))\n"
       "else:\n"
       "    model = models.create_model('revnet38', ds.num_classes, filters=(8, 8, 16, 28))\n"
       "config = train.TrainConfig(steps=2 if SMOKE else 200, batch_size=8 if SMOKE else 32,\n"
       "                           optimizer='adam', learning_rate=1e-2, eval_batch_size=500,\n"
       "                           log_every=1 if SMOKE else 25)\n"
       "result = train.fit(model, ds, config)\n"
       "print('depth', model.depth, '| params', sum(p.size for p in jax.tree.leaves(result.state.params)),\n"
       "      '| validation accuracy', result.metrics['val_accuracy'])"),
  code("hist = result.history\n"
       "pts = [(h['step'], h['train_loss']) for h in hist if 'train_loss' in h]\n"
       "plt.figure(figsize=(5, 3.2))\n"
       "plt.plot(*zip(*pts), marker='.'); plt.xlabel('step'); plt.ylabel('train loss'); plt.yscale('log')\n"
       "plt.title(f\"RevNet-{model.depth}: {100 * result.metrics['val_accuracy']:.1f}% validation accuracy\")\n"
       "plt.show()"),
  md("The trained network is still invertible: run its last reversible stack forward and back "
     "(evaluation mode, running statistics)."),
  code("stack_name = [k for k in result.state.params if k.endswith('_reversible')][-1]\n"
       "params = jax.device_get(result.state.params)\n"
       "stats = jax.device_get(result.state.model_state['batch_stats'])\n"
       "stage = int(stack_name[len('stage')])\n"
       "width = model.filters[stage] * (4 if model.bottleneck else 1)\n"
       "stack = fnn.ReversibleStack(models.RevResidualFn(width // 2, model.bottleneck),\n"
       "                            num_blocks=model.units[stage - 1] - 1)\n"
       "stack_vars = {'params': params[stack_name], 'batch_stats': stats[stack_name]}\n"
       "h = jax.random.normal(jax.random.key(3), (4, 7, 7, width))\n"
       "back = stack.apply(stack_vars, stack.apply(stack_vars, h), method='inverse')\n"
       "print(stack_name, f'({stack.num_blocks} blocks): inverse error', float(jnp.max(jnp.abs(back - h))))"),
]

nb = nbf.v4.new_notebook(cells=cells, metadata={
  "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
  "language_info": {"name": "python"}})
out = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colabs",
                   "reversible.ipynb")
nbf.write(nb, out)
print("wrote", out)
