"""fwht on the CPU: the native kernel on XLA's thread pool vs one thread (interleaved medians).

    python tools/measure_fwht_threads.py

Prints, per n (batch 256, float32), the median time of `ops.fwht` (default impl), of the native
kernel with `parallel=True` and with `parallel=False`. Run on a quiet machine.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from fastnets import ops
from fastnets.kernels import native

rng = np.random.default_rng(0)
for n in [256, 1024, 4096, 16384]:
  x = jnp.asarray(rng.standard_normal((256, n)), jnp.float32)
  fns = {"fwht (auto)": jax.jit(lambda v: ops.fwht(v)),
         "native, thread pool": jax.jit(lambda v: native.fwht_native(v[..., None])[..., 0]),
         "native, 1 thread": jax.jit(
             lambda v: native.fwht_native(v[..., None], parallel=False)[..., 0])}
  times = {k: [] for k in fns}
  for f in fns.values():
    jax.block_until_ready(f(x))
    jax.block_until_ready(f(x))
  for _ in range(41):
    for k, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(x))
      times[k].append(time.perf_counter() - t0)
  print(f"n={n:6d}: " + ", ".join(f"{k} {np.median(v) * 1e6:.0f} us" for k, v in times.items()))
