"""infoplane's C kernels: their sources (``csrc/``), compiling and caching them (:mod:`~infoplane._native.build`),
and the typed, checked calls into them (:mod:`~infoplane._native.kernels`)."""
