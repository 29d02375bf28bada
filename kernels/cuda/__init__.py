"""CUDA kernels: CUDA C sources (loaded with cupy.RawModule) and Numba CUDA kernels."""
