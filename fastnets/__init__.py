"""fastnets: efficient deep networks in JAX.

Subpackages (dependencies point downwards): `train`, `models`, `nn`, `ops`, `kernels` (Pallas and
native kernels), `data`. Leaf modules any layer may use: `checks` (argument checks), `evidence`
(seed statistics and verdicts), `benchmarking` (interleaved timing), `sparse_format`. See
docs/ARCHITECTURE.md. `from fastnets import ops, nn` is the entry point for your own code.
"""

import importlib as _importlib

__version__ = "0.1.0"

_SUBMODULES = ("data", "evidence", "kernels", "models", "nn", "ops", "train")


def __getattr__(name):
  # Lazy so that `import fastnets.ops` does not pay for orbax/tfds imports of `train`/`data`.
  if name in _SUBMODULES:
    return _importlib.import_module(f"fastnets.{name}")
  raise AttributeError(f"module 'fastnets' has no attribute {name!r}")


__all__ = list(_SUBMODULES)
