"""gpunet: train dense neural networks fast on NVIDIA GPUs (CuPy) or the CPU (NumPy + Numba).

Importing gpunet needs only NumPy and Numba; nothing is compiled at import.
"""

from gpunet import data, functional, losses, nn, optim, regularizers, train
from gpunet.autograd import Tensor, enable_grad, is_grad_enabled, no_grad, ones, tensor, zeros
from gpunet.backend import get_backend
from gpunet.dtypes import get_default_dtype, set_default_dtype
from gpunet.parallel import get_num_threads, set_num_threads
from gpunet.random import manual_seed

__version__ = "0.1.0"

__all__ = [
    "Tensor",
    "data",
    "optim",
    "regularizers",
    "train",
    "enable_grad",
    "functional",
    "get_backend",
    "get_default_dtype",
    "get_num_threads",
    "is_grad_enabled",
    "losses",
    "manual_seed",
    "nn",
    "no_grad",
    "ones",
    "set_default_dtype",
    "set_num_threads",
    "tensor",
    "zeros",
]
