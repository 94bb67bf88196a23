"""Flax Linen modules: thin wrappers that own parameters and call `fastnets.ops`."""

__all__ = []
