"""Writes colabs/memory.ipynb (kept as code so the notebook's source is reviewable).

    python tools/make_memory_notebook.py

Cells are stored without outputs; `FASTNETS_SMOKE=1` runs every cell in seconds (the notebook test
does: `python -m pytest tests/test_notebooks.py -q -k memory`).
"""

import nbcommon  # tools/nbcommon.py: shared cells and writer
from nbcommon import code, md, setup_cell

cells = [
  md("# Memory planning: cost-aware recomputation and a planner under a budget\n\n"
     "Training keeps activations from the forward pass for the backward pass. SuperNeurons (Wang "
     "et al., PPoPP 2018) keeps the outputs of expensive layers (convolutions) and recomputes "
     "the cheap ones (batch norm, ReLU) in the backward pass. fastnets decides *expensive* from "
     "the jaxpr (FLOPs per byte of output), and plans one strategy per block of a chain for the "
     "least FLOPs under a memory budget, exactly (a dynamic program over the chain). Memory is "
     "read from the compiled program (`memory_analysis()`). This notebook\n\n"
     "1. shows what the cost-aware policy keeps in one residual block,\n"
     "2. compiles a ResNet chain under each uniform strategy,\n"
     "3. asks the planner for a budget and looks at the plan it picks.\n\n"
     "Why plain `jax.checkpoint` keeps little on XLA:CPU in unrolled code, and how fastnets "
     "makes it work, is in `docs/MEMORY.md`.\n\n"
     "**Install.** From a checkout: `pip install -e .` (on Colab: clone the repository, `%cd` "
     "into it, `%pip install -e .`). Set `FASTNETS_SMOKE=1` to run every cell in seconds."),
  setup_cell("import os, sys",
       "import collections\n"
       "import jax, jax.numpy as jnp\n"
       "from jax.ad_checkpoint import print_saved_residuals\n"
       "from fastnets import benchmarking, data, ops\n"
       "from fastnets import nn as fnn\n"
       "from fastnets.models.chains import resnet_chain\n"
       "print('jax', jax.__version__, '|', jax.devices())"),
  md("## 1. What the cost-aware policy keeps\n"
     "One basic residual block (conv-BN-ReLU-conv-BN, shortcut, ReLU) in training mode. Plain "
     "autodiff keeps every intermediate; the cost-aware policy keeps the block's input, the two "
     "convolution outputs and the batch-norm statistics (reductions: many FLOPs for a tiny "
     "output) and recomputes the rest."),
  code("depth = 2 if SMOKE else 8\n"
       "width, batch = 8, 8 if SMOKE else 16\n"
       "ds = data.load_dataset()\n"
       "x = jnp.asarray(ds.normalize(ds.train.images[:batch]))\n"
       "chain = resnet_chain(depth, width)\n"
       "variables = jax.jit(chain.init)(jax.random.key(0), x)\n"
       "block = chain.blocks[1]\n"
       "v1 = {col: tree['blocks_1'] for col, tree in variables.items()}\n"
       "h = jnp.zeros((batch, 14, 14, width))  # the block's input: the stem halves 28x28\n"
       "def f(v, h):\n"
       "    return block.apply(v, h, train=True, mutable=['batch_stats'])\n"
       "for strategy in ('store', 'cost_aware', 'recompute'):\n"
       "    kept = ops.residual_bytes(ops.remat(f, strategy), v1, h, free_argnums=(0,))\n"
       "    print(f'{strategy:10s} keeps {kept / 1024:7.1f} KiB')\n"
       "print_saved_residuals(jax.checkpoint(f, policy=ops.cost_aware_policy()), v1, h)"),
  md("## 2. Compiled memory of the chain under each uniform strategy\n"
     "`fastnets.nn.planned_apply(chain, strategies)` runs block i under `strategies[i]`; its "
     "gradients equal plain autodiff's. The compiled training step's temp bytes:"),
  code("n = len(chain.blocks)\n"
       "uniform = {}\n"
       "for strategy in ('store', 'cost_aware', 'recompute'):\n"
       "    step = fnn.training_step(fnn.planned_apply(chain, [strategy] * n))\n"
       "    uniform[strategy] = benchmarking.compiled_memory(step, variables, x)['temp_bytes']\n"
       "    print(f'{strategy:10s} {uniform[strategy] / 2**20:.2f} MiB')"),
  md("## 3. A budget and the plan\n"
     "Halfway between recompute-everything and store-everything. The planner measures each block "
     "once (identical blocks are measured once), calibrates its model against the compiled "
     "uniform figures, solves the chain exactly and compiles the plan to check it."),
  code("budget = (uniform['store'] + uniform['recompute']) // 2\n"
       "plan = fnn.plan_memory(chain, variables, x, budget, calibrate=uniform)\n"
       "print(f'budget {budget / 2**20:.2f} MiB: estimate {plan.estimate_bytes / 2**20:.2f} MiB, '\n"
       "      f'compiled {plan.compiled_temp_bytes / 2**20:.2f} MiB, solved in {plan.solve_s * 1e3:.1f} ms')\n"
       "for i, (blk, s) in enumerate(zip(chain.blocks, plan.strategies)):\n"
       "    print(f'block {i:2d} {type(blk).__name__:12s} {s}')\n"
       "print(collections.Counter(plan.strategies))\n"
       "print('offload:', plan.unavailable['offload'])"),
  md("A budget below what any plan reaches is refused with the least reachable figure:"),
  code("try:\n"
       "    fnn.plan_memory(chain, variables, x, budget // 10, calibrate=uniform,\n"
       "                    options=plan.block_figures)\n"
       "except ValueError as err:\n"
       "    print(err)"),
]

if __name__ == "__main__":
  nbcommon.write(cells, "memory.ipynb")
