"""Pallas kernels, imported as `fastnets.kernels`.

Every kernel has a pure-JAX reference in `fastnets.ops` that is both the CPU path and the test
oracle. Kernels take `interpret=` (run on CPU through the Pallas interpreter) and are tested by
lowering for CUDA from the CPU (see tests/ and ../shared/design/KERNELS.md).
"""

__all__ = []
