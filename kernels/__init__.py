"""Compute kernels. Imports only torch (and triton, where a Triton implementation exists)."""
