"""Hand-written kernels (installed as ``gpunet.kernels``).

Each kernel module here is a fast implementation of an op whose reference lives in
``gpunet.backend`` (written once against ``xp``). Nothing here is compiled at import:
Numba functions compile lazily on first call.
"""
