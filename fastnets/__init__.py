"""fastnets: efficient deep networks in JAX.

Subpackages (dependencies point downwards): `train`, `models`, `nn`, `ops`, `data`; Pallas kernels
in `fastnets.kernels`; `evidence` (seed statistics and verdicts) is a leaf any layer may use. `from fastnets import ops, nn` is the entry point for use in your own code.
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
