"""Writes colabs/pacgan.ipynb: the PacGAN notebook (cells as reviewable Python)."""

from nbcommon import code, md, setup_cell, write

cells = [
    md(
        '# PacGAN: packing the discriminator against mode collapse\n'
        '\n'
        'Lin, Khetan, Fanti, Oh (NeurIPS 2018): let the discriminator judge *m* samples at once. Here we train a plain GAN and PacGAN2 on the 2-D ring (8 Gaussians on the unit circle, std 0.01) for a few minutes on a CPU, and plot their samples over the true modes.\n'
        '\n'
        '**Install.** From a checkout: `pip install -e .` (on Colab: clone, `%cd` into the repository, `%pip install -e .`). `FASTNETS_SMOKE=1` runs every cell in seconds (the notebook test does).'),
    setup_cell(
        'import os, sys',
        'import jax, jax.numpy as jnp, numpy as np\n'
        'import matplotlib.pyplot as plt\n'
        'from fastnets import ops\n'
        'from fastnets.data import synthetic\n'
        'from fastnets.models import pacgan\n'
        'from fastnets.nn.packing import Packed\n'
        'from fastnets.ops import gan_metrics\n'
        'from fastnets.train import gan\n'
        "print('jax', jax.__version__, jax.devices())"),
    md(
        '## Packing is a one-line change\n'
        "`Packed(D, degree=m)` wraps any Flax discriminator: a batch is cut into packs of *m* consecutive samples concatenated on the feature axis; a list of *m* generator batches is packed across the batches (the paper's fake pack). A batch size that does not divide by *m* is an error (or `drop_remainder=True`)."),
    code(
        'x = jnp.arange(12.).reshape(6, 2)\n'
        'print(ops.packing.pack(x, 2))            # pack i = samples 2i and 2i+1\n'
        'try:\n'
        '    ops.packing.pack(x[:5], 2)\n'
        'except ValueError as e:\n'
        "    print('ValueError:', e)"),
    md(
        '## Train GAN and PacGAN2 on the ring\n'
        "The paper's architecture at reduced width (the full setting is G 400 wide, D 200x5 maxout, 400,000 steps); both runs of a pack degree share one `vmap`ped, `lax.scan`ned program."),
    code(
        'steps = 4 if SMOKE else 6000\n'
        'width = 8 if SMOKE else 64\n'
        'ring = synthetic.make_ring(seed=0)\n'
        'cfg = gan.GANConfig(batch_size=100, learning_rate=1e-3, beta1=0.8)\n'
        'generator = pacgan.MLPGenerator(hidden=width, depth=2 if SMOKE else 4)\n'
        'samples, stats = {}, {}\n'
        'for m in (1, 2):\n'
        '    discriminator = Packed(pacgan.MaxoutDiscriminator(hidden=width, pieces=5), degree=m)\n'
        '    state = gan.init_gan_state(generator, discriminator, cfg, jax.random.key(0), (2,))\n'
        '    step = gan.make_gan_step(generator, discriminator, cfg)\n'
        '    state, history = gan.train_gan(step, state, jnp.asarray(ring.points), jax.random.key(1), steps,\n'
        "                                   chunk_size=2 if SMOKE else 1000, label=f'm={m}')\n"
        "    name = 'GAN' if m == 1 else f'PacGAN{m}'\n"
        '    samples[name] = np.asarray(gan.generate(generator, state, jax.random.key(2), 2500, cfg))\n'
        '    stats[name] = jax.device_get(gan_metrics.mode_collapse_metrics(samples[name], ring.means, ring.std))\n'
        '    print(name, int(stats[name][\'modes\']), \'modes of 8,\', f"{100 * float(stats[name][\'high_quality\']):.1f}% high quality,",\n'
        '          f"reverse KL {float(stats[name][\'reverse_kl\']):.2f}")'),
    code(
        'fig, axes = plt.subplots(1, 2, figsize=(8, 4))\n'
        'for ax, (name, x) in zip(axes, samples.items()):\n'
        '    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.3)\n'
        "    ax.scatter(ring.means[:, 0], ring.means[:, 1], marker='x', color='red')\n"
        '    ax.set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6), aspect=\'equal\', title=f"{name}: {int(stats[name][\'modes\'])}/8 modes")\n'
        'plt.show()'),
    md(
        '## The whole table\n'
        "`experiments.pacgan.run` trains GAN and PacGAN2/3/4 on the ring and the grid over several seeds and returns the table beside the paper's (`python -m experiments.pacgan --quick --workdir=runs/pacgan` from a shell)."),
    code(
        'from fastnets.experiments import pacgan as exp\n'
        "config = dict(exp.SMOKE if SMOKE else exp.QUICK, workdir='', datasets=['ring'], degrees=[1, 2])\n"
        'results = exp.run(config)\n'
        "print(results['table'])"),
]
write(cells, "pacgan.ipynb")
