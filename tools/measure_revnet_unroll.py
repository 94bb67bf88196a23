"""RevNet on XLA:CPU: looped vs unrolled reversible stacks (step time, compiled temp memory).

    python tools/measure_revnet_unroll.py            # about 2 minutes on 2 cores

1. A scan of 8 convs: median forward and gradient time with `lax.scan(unroll=1|2|True)`.
2. `reversible_sequence` of 4 and 16 conv blocks (32 x 16 x 16 x 32 input): compiled temp
   memory of `jit(grad)` for backprop "reversible" / "store" and unroll 1 / True.
3. RevNet (filters 32, 32, 64, 112; batch 32 of 28x28x1) with 3 and 9 units per stage:
   `jit(grad)` compile time, median step time and `compiled.memory_analysis()` temp bytes, for
   backprop "reversible" / "store" and unroll 1 / True.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from fastnets.models.revnet import RevNet
from fastnets.ops import reversible_sequence


def median_time(fn, repeats=5):
  jax.block_until_ready(fn())
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts))


def conv_scan():
  x = jnp.ones((64, 16, 16, 16))
  ws = jnp.ones((8, 3, 3, 16, 16)) * 0.01

  def loss(ws, x, unroll):
    def body(h, w):
      conv = lax.conv_general_dilated(h, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return h + jnp.tanh(conv), None
    return jnp.sum(lax.scan(body, x, ws, unroll=unroll)[0])

  for unroll in (1, 2, True):
    fwd = jax.jit(lambda ws, x, u=unroll: loss(ws, x, u))
    grad = jax.jit(jax.grad(lambda ws, x, u=unroll: loss(ws, x, u)))
    print(f"conv scan, unroll={unroll}: forward {median_time(lambda: fwd(ws, x)) * 1e3:.1f} ms, "
          f"gradient {median_time(lambda: grad(ws, x)) * 1e3:.1f} ms", flush=True)


def conv_blocks():
  def block(p, h):
    return jnp.tanh(lax.conv_general_dilated(h, p, (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))

  x = jnp.ones((32, 16, 16, 32))
  for blocks in (4, 16):
    params = (jnp.ones((blocks, 3, 3, 16, 16)) * .01, jnp.ones((blocks, 3, 3, 16, 16)) * .01)
    for unroll in (1, True):
      for backprop in ("reversible", "store"):
        grad = jax.jit(jax.grad(lambda p, x, b=backprop, u=unroll: jnp.sum(reversible_sequence(
            block, block, p, x, backprop=b, unroll=u)), argnums=(0, 1)))
        temp = grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes / 2**20
        print(f"{blocks} conv blocks, {backprop}, unroll={unroll}: temp {temp:.1f} MiB",
              flush=True)


def revnet():
  x = jnp.ones((32, 28, 28, 1))
  y = jnp.zeros((32,), jnp.int32)
  for units in ((3, 3, 3), (9, 9, 9)):
    for backprop, unroll in (("reversible", 1), ("reversible", True), ("store", True)):
      model = RevNet(units=units, filters=(32, 32, 64, 112), backprop=backprop, unroll=unroll)
      v = model.init(jax.random.key(0), x)

      def loss(p, bs, model=model):
        out, _ = model.apply({"params": p, "batch_stats": bs}, x, train=True,
                             mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

      t0 = time.perf_counter()
      compiled = jax.jit(jax.grad(loss)).lower(v["params"], v["batch_stats"]).compile()
      compile_s = time.perf_counter() - t0
      temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
      step = median_time(lambda: compiled(v["params"], v["batch_stats"]), repeats=3)
      print(f"RevNet-{model.depth} units {units}, {backprop}, unroll={unroll}: compile "
            f"{compile_s:.1f} s, step {step * 1e3:.0f} ms, temp {temp:.1f} MiB", flush=True)


if __name__ == "__main__":
  conv_scan()
  conv_blocks()
  revnet()
