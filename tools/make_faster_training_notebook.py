"""Writes colabs/faster_training.ipynb: the dynamic downsampling and FFNet notebook
(cells as reviewable Python)."""

from nbcommon import code, md, setup_cell, write

cells = [
    md(
        '# Faster training: dynamic downsampling and input fast-forwarding (FFNet)\n'
        '\n'
        'Two techniques:\n'
        '\n'
        '* **Dynamic input and kernel downsampling** (Poulos, Nouri, Moshovos 2019): some mini-batches run a *downsampled* step — the input average-pooled by 2 and every 3x3 convolution kernel pooled to 2x2 — with the same parameters; the pooling is differentiable, so the gradients reach the full-size kernels.\n'
        "* **FFNet** (Ibrahim, Abbott, Hussein 2017): a fast-forward branch sends each stage's input past its main path, which keeps the gradients of the early layers large.\n"
        '\n'
        'Set `FASTNETS_SMOKE=1` to run every cell in seconds (the notebook test does); numbers are then meaningless.'),
    setup_cell(
        'import os, sys',
        'import jax, jax.numpy as jnp, numpy as np\n'
        'import matplotlib.pyplot as plt\n'
        'from fastnets import data, models, ops, nn as fnn\n'
        'from fastnets.train import downsampling\n'
        "print('jax', jax.__version__, jax.devices())"),
    md(
        '## A downsampled step, piece by piece\n'
        '`ops.pool_kernel` averages a 3x3 kernel to 2x2 with a stride-1 2x2 window (and, by default, rescales by 9/4 so that a smooth kernel keeps its total weight); `ops.pool_input` averages 2x2 blocks of the image.'),
    code(
        'w = jnp.arange(9.0).reshape(3, 3, 1, 1)\n'
        "print('3x3 kernel:\\n', w[..., 0, 0])\n"
        "print('pooled to 2x2 (plain average):\\n', ops.pool_kernel(w, 2, rescale=False)[..., 0, 0])\n"
        "ds = data.load_dataset('mnist_bundled')\n"
        'digit = ds.normalize(ds.train.images[:1])\n'
        'fig, axes = plt.subplots(1, 2, figsize=(4, 2))\n'
        "axes[0].imshow(digit[0, ..., 0], cmap='gray'); axes[0].set_title('28x28')\n"
        "axes[1].imshow(ops.pool_input(jnp.asarray(digit), 2)[0, ..., 0], cmap='gray'); axes[1].set_title('pooled 14x14')\n"
        "for ax in axes: ax.axis('off')\n"
        'plt.show()'),
    md(
        'Any fastnets CNN runs downsampled without copying the model: `fnn.pooled_kernels()` intercepts every `nn.Conv` and uses its pooled kernel. The gradient is taken with respect to the original (3x3) parameters.'),
    code(
        'model = models.ResNet(num_classes=10, depth=8, widths=(8, 8, 16, 32))\n'
        'x = jnp.asarray(ds.normalize(ds.train.images[:8]))\n'
        'variables = model.init(jax.random.key(0), x)\n'
        'loss = downsampling.downsampled_loss(model)\n'
        "grads, _ = jax.jit(jax.grad(loss, has_aux=True))(variables['params'], {'batch_stats': variables['batch_stats']},\n"
        "                                                 {'image': x, 'label': jnp.asarray(ds.train.labels[:8])}, jax.random.key(1))\n"
        "print('gradient of the stem kernel:', grads['stem']['kernel'].shape)\n"
        'full = fnn.model_conv_flops(model, (1, 28, 28, 1))\n'
        'down = fnn.model_conv_flops(model, (1, 28, 28, 1), downsampled=True)\n'
        "print(f'conv FLOPs of a training step per example: full {full/1e6:.1f}M, downsampled {down/1e6:.1f}M ({100*down/full:.1f}%)')"),
    md(
        '## The time / accuracy trade-off\n'
        '`experiments.dynamic_downsampling.run` trains the ResNet with and without downsampled batches for the same number of optimizer steps (the schedules: every k-th batch, with probability p, or the first fraction of training, optionally followed by full-size steps only). The quick setting: 1,500 steps of batch 32 on the bundled MNIST, schedules `phase:0.25` and `every:4`, five seeds. The accuracy change (test split) is paired by seed (same initialisation and batches); the report judges the measured training time of the paired runs, and the estimate from the interleaved full and downsampled step times is printed beside it.'),
    code(
        'from fastnets.experiments import dynamic_downsampling as dds, common\n'
        "cfg = dict(dds.SMOKE if SMOKE else dds.QUICK, workdir='')\n"
        'res = dds.run(cfg)\n'
        "m = res['metrics']\n"
        "names = [k for k, v in m.items() if isinstance(v, dict) and 'time_saving' in v]\n"
        'for i, n in enumerate(names):\n'
        "    plt.scatter(m[n]['wall_time_s'], 100 * m[n]['test_accuracy'], label=n, color=f'C{i}')\n"
        "plt.xlabel('training time (s, compilation excluded)'); plt.ylabel('test accuracy (%)'); plt.legend(); plt.show()\n"
        'for n in names:\n'
        "    if n == 'baseline':\n"
        '        continue\n'
        "    same = m[n]['time_saving_same_run']\n"
        "    same = 'n/a' if same is None else f'{100 * same:.1f}%'\n"
        '    print(f"{n:>10}: {same} less time (same-run estimate; sequential runs {100 * m[n][\'time_saving\']:.1f}%), "\n'
        '          f"accuracy {m[n][\'accuracy_change_points\']:+.2f} +- {m[n][\'accuracy_change_points_std\']:.2f} points "\n'
        '          f"(paired, {len(cfg[\'seeds\'])} seed(s))")'),
    md(
        '## FFNet: gradient norms of the early layers\n'
        'The released FFNet and the same net without fast-forward branches; the gradient norm of each main-path conv at initialisation, against depth.'),
    code(
        'from fastnets.experiments import ffnet as ffx\n'
        'features, stages = (4, 2) if SMOKE else (16, 6)\n'
        "batch = {'image': x, 'label': jnp.asarray(ds.train.labels[:8])}\n"
        "for name, fast_forward in (('ffnet', True), ('ablation', False)):\n"
        '    net = models.FFNet(num_classes=10, features=features, stages=stages, fast_forward=fast_forward)\n'
        "    params = net.init(jax.random.key(0), x)['params']\n"
        '    norms = ffx.make_grad_norms(net)(params, {}, batch)\n'
        "    profile = [float(norms[f'stage{s}/main/conv{c}/kernel']) for s in range(1, stages + 1) for c in (1, 2, 3)]\n"
        "    plt.plot(range(1, len(profile) + 1), profile, marker='o', label=f'{name} (early {ffx.early_norm(norms):.3g})')\n"
        "plt.yscale('log'); plt.xlabel('main-path conv (depth)'); plt.ylabel('gradient norm at init'); plt.legend(); plt.show()"),
]
write(cells, "faster_training.ipynb")
