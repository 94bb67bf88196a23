"""Pallas kernels and native CPU kernels, imported as `fastnets.kernels`.

`native` holds C++ kernels for the CPU (sources in `csrc/`), compiled on first use and called as
XLA FFI custom calls; the others are Pallas kernels for GPUs.

Every kernel has a pure-JAX reference in `fastnets.ops` that is the test oracle (and the fallback
path). Pallas kernels take `interpret=` (run on CPU through the Pallas interpreter) and are tested by
lowering for CUDA from the CPU (see tests/ and ../shared/design/KERNELS.md).
"""

__all__ = []
