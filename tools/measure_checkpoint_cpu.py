"""Why `jax.checkpoint` saves nothing (or little) in unrolled code on XLA:CPU (docs/MEMORY.md).

    python tools/measure_checkpoint_cpu.py     # about 20 s on 2 cores
    XLA_FLAGS=--xla_disable_hlo_passes=cse_barrier_expander python tools/measure_checkpoint_cpu.py

A stack of 16 residual conv blocks h + tanh(1.5 tanh(conv3x3(h))) on a 16x16x16x16 float32 batch
(one activation = 256 KiB), differentiated with respect to the stacked weights. Prints the
compiled temp memory (`memory_analysis()`) of `jit(grad)` for: plain autodiff, `jax.checkpoint`
per block, and `fastnets.ops.remat(..., "recompute")` (checkpoint with the recomputation tied to
the cotangent), each unrolled (a Python loop) and under `lax.scan`; and whether the
optimisation barrier that `jax.checkpoint` emits survives into the optimised HLO.
"""
import jax
import jax.numpy as jnp
from jax import lax

from fastnets.ops import remat

DEPTH = 16


def block(w, h):
  c = lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return h + jnp.tanh(jnp.tanh(c) * 1.5)


WRAPS = {"plain": lambda f: f, "jax.checkpoint": jax.checkpoint,
         "remat(tie=True)": lambda f: remat(f, "recompute")}


def unrolled(wrap):
  def loss(ws, x):
    h = x
    for i in range(DEPTH):
      h = wrap(block)(ws[i], h)
    return jnp.sum(h)
  return loss


def scanned(wrap):
  def loss(ws, x):
    return jnp.sum(lax.scan(lambda h, w: (wrap(block)(w, h), None), x, ws)[0])
  return loss


def main():
  x = jnp.ones((16, 16, 16, 16))
  ws = jnp.ones((DEPTH, 3, 3, 16, 16)) * 0.01
  act = x.size * 4
  for form, make in (("unrolled", unrolled), ("lax.scan", scanned)):
    for name, wrap in WRAPS.items():
      lowered = jax.jit(jax.grad(make(wrap))).lower(ws, x)
      compiled = lowered.compile()
      temp = compiled.memory_analysis().temp_size_in_bytes
      barriers = (lowered.as_text().count("optimization_barrier"),
                  compiled.as_text().count("opt-barrier"))
      print(f"{form:9s} {name:16s} temp {temp / 2**20:6.2f} MiB = {temp / act:5.1f} activations;"
            f" optimization barriers before/after XLA: {barriers}", flush=True)


if __name__ == "__main__":
  main()
