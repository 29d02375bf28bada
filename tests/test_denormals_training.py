"""Denormal flushing during training: on by default, off on request, state restored."""

import numpy as np
import pytest

import gpunet
from gpunet import Tensor, nn, optim
from gpunet.backend import get_backend
from gpunet.kernels.cpu import denormals
from gpunet.train import Trainer

TINY = np.finfo(np.float32).tiny


@pytest.mark.parametrize("flush", [True, False])
def test_optimizer_step_inside_training_context(flush):
    p = Tensor(np.array([1.0], np.float32), requires_grad=True)
    opt = optim.SGD([p], lr=0.0, momentum=0.9)
    with get_backend("cpu").training_context(flush):
        p.grad = Tensor(np.array([1.05 * TINY], np.float32))  # normal
        opt.step()
        p.grad = Tensor(np.zeros(1, np.float32))  # buffer decays to 0.945 * tiny
        opt.step()
    buf = opt.state[p]["momentum_buffer"][0]
    assert (buf == 0) if flush else (0 < buf < TINY)
    assert denormals.get_flush_denormals() is True  # module default restored
    if denormals.mxcsr_supported():
        assert denormals.get_mxcsr() & denormals.FTZ_BIT == 0  # MXCSR restored


@pytest.mark.parametrize("engine", ["fused", "autograd"])
def test_momentum_buffers_of_a_dead_input_are_flushed(engine):
    # Feature 0 is non-zero only in the first sample: its weights get one gradient, then
    # their momentum decays by 0.9 per step and crosses into subnormals after ~800 steps.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 3)).astype(np.float32)
    X[1:, 0] = 0.0
    y = rng.integers(0, 2, 1000)
    results = {}
    for flush in (True, False):
        gpunet.manual_seed(0)
        model = nn.Sequential(nn.Dense(3, 4, "tanh"), nn.Dense(4, 2))
        opt = optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        Trainer(
            model,
            nn.CrossEntropyLoss(),
            opt,
            engine=engine,
            flush_denormals=flush,
            progress=False,
            verbose=0,
        ).fit(X, y, epochs=1, batch_size=1, shuffle=False)
        buf = opt.state[model[0].weight]["momentum_buffer"][:, 0]
        results[flush] = (buf, model.state_dict())
    flushed, unflushed = results[True][0], results[False][0]
    assert np.all(flushed == 0)
    assert np.any((unflushed != 0) & (np.abs(unflushed) < TINY))
    for key, value in results[True][1].items():  # the weights agree to float tolerance
        np.testing.assert_allclose(value, results[False][1][key], rtol=1e-6, atol=1e-30)
