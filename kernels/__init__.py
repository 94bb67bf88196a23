"""Pallas kernels and native CPU kernels, imported as `fastnets.kernels`.

`native` holds C++ kernels for the CPU (sources in `csrc/`), compiled on first use and called as
XLA FFI custom calls; the others are Pallas kernels for GPUs.

Each Pallas kernel module holds its pure-JAX reference (the test oracle), its kernel and its custom
VJP, and imports only leaf modules (`fastnets.checks`, `fastnets.sparse_format`), never
`fastnets.ops`: the ops import the kernels and dispatch on `impl=`. Pallas kernels take
`interpret=` (run on a CPU through the Pallas interpreter) and are tested by lowering for CUDA
from the CPU; see docs/KERNELS.md.
"""

__all__ = []
