"""Writes colabs/quickstart.ipynb (kept as code so the notebook's source is reviewable)."""
import nbcommon  # tools/nbcommon.py: shared cells and writer
from nbcommon import code, md, setup_cell

cells = [
    md(
        "# fastnets quickstart\n\n"
        "Install, load the bundled MNIST digits, train the baseline CNN, plot its curve, and use an "
        "op from `fastnets.ops` in plain JAX.\n\n"
        "**Install.** From a checkout of the repository: `pip install -e .` (on Colab: clone the "
        "repository, `%cd` into it and run `%pip install -e .`). Set `FASTNETS_SMOKE=1` to run "
        "every cell in seconds (the notebook test does)."),
    setup_cell("import os, sys",
        "import jax, jax.numpy as jnp\n"
        "import matplotlib.pyplot as plt\n"
        "import fastnets\n"
        "from fastnets import data, models, ops, train\n"
        "print('fastnets', fastnets.__version__, '| jax', jax.__version__, '|', jax.devices())"),
    md("## The bundled data\n10,000 real MNIST test digits ship with the "
                             "package (checksums verified on load), split 8,000 / 2,000."),
    code(
        "ds = data.load_dataset('mnist_bundled')\n"
        "print(len(ds.train), 'train,', len(ds.validation), 'validation, shape', ds.image_shape)\n"
        "fig, axes = plt.subplots(1, 8, figsize=(8, 1.3))\n"
        "for ax, img, label in zip(axes, ds.train.images[:8], ds.train.labels[:8]):\n"
        "    ax.imshow(img[..., 0], cmap='gray'); ax.set_title(int(label)); ax.axis('off')\n"
        "plt.show()"),
    md("## Train the baseline\n`experiments.baseline.run` is what "
                             "`python -m experiments.baseline` calls."),
    code(
        "from fastnets.experiments import baseline, common\n"
        "config = {'workdir': '', 'steps': 3 if SMOKE else 300, 'batch_size': 32 if SMOKE else 128,\n"
        "          'log_every': 1 if SMOKE else 50}\n"
        "results = baseline.run(config)\n"
        "print('validation accuracy', results['metrics']['val_accuracy'])"),
    code(
        "hist = results['history']\n"
        "train_pts = [(h['step'], h['train_loss']) for h in hist if 'train_loss' in h]\n"
        "plt.plot(*zip(*train_pts), marker='.'); plt.xlabel('step'); plt.ylabel('train loss')\n"
        "plt.yscale('log'); plt.show()"),
    md("## Ops in plain JAX\n`fastnets.ops` holds pure functions; use them "
                             "under `jit` and `grad` in your own code."),
    code(
        "logits = jax.random.normal(jax.random.key(0), (4, 10))\n"
        "labels = jnp.array([1, 2, 3, 4])\n"
        "loss, grad = jax.jit(jax.value_and_grad(ops.cross_entropy_loss))(logits, labels)\n"
        "print('loss', float(loss), 'grad shape', grad.shape, 'accuracy', float(ops.accuracy(logits, labels)))"),
]
nbcommon.write(cells, "quickstart.ipynb")
