"""Neural-network modules (PyTorch names and semantics)."""

from gpunet.losses import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, MSELoss, NLLLoss
from gpunet.nn import utils
from gpunet.nn.activation import GELU, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from gpunet.nn.container import Sequential
from gpunet.nn.dropout import DropConnectDense, Dropout
from gpunet.nn.layers import Dense, Flatten, Identity, Linear
from gpunet.nn.module import Module, Parameter
from gpunet.nn.normalization import BatchNorm1d

__all__ = [
    "BCELoss",
    "BatchNorm1d",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "Dense",
    "DropConnectDense",
    "Dropout",
    "Flatten",
    "GELU",
    "Identity",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "Module",
    "NLLLoss",
    "Parameter",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "utils",
]
