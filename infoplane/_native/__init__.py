"""Compiling and loading infoplane's C kernels (:mod:`~infoplane._native.build`)."""
