"""Training engines: how the epochs of a fit are executed.

Every engine implements :class:`Engine` (``base.py``): ``prepare(X, y, batch_size)`` once
per fit, then per epoch ``run_epoch(order, on_batch_end)`` and ``write_back()``.

- :class:`AutogradEngine` (``autograd.py``): any model, one Python step per batch
  through the autograd graph.
- :class:`FusedCpuEngine` (``fused_cpu.py``): whole epochs of a qualifying dense
  ``Sequential`` in one compiled call on the CPU (qualification and the flat buffers
  of parameters and optimizer state: ``qualify.py``).
- ``FusedGpuEngine`` (``fused_gpu.py``): the same networks on a CUDA GPU, each step a
  sequence of CUDA C kernels captured into a CUDA graph (imported only for CuPy).

:func:`select_engine` is the one place that picks an engine; ``Trainer`` calls it. This
package never imports ``gpunet.train.loop``.
"""

from __future__ import annotations

from gpunet.train.engines.auto import AutoCpuEngine
from gpunet.train.engines.autograd import AutogradEngine
from gpunet.train.engines.base import Engine
from gpunet.train.engines.fused_cpu import FusedCpuEngine
from gpunet.train.engines.qualify import dense_layers, fused_model_reason

__all__ = [
    "AutoCpuEngine",
    "AutogradEngine",
    "Engine",
    "FusedCpuEngine",
    "dense_layers",
    "fused_model_reason",
    "fused_unsupported_reason",
    "select_engine",
]


def _fused_engine_class(backend):
    """``(engine class, None)``: the fused engine for ``backend``'s device, or
    ``(None, reason)`` when the device has none."""
    if backend.name == "numpy":
        return FusedCpuEngine, None
    if backend.name == "cupy":
        from gpunet.train.engines.fused_gpu import FusedGpuEngine  # noqa: PLC0415

        return FusedGpuEngine, None
    return None, f"backend {backend.name} ({backend.device}) has no fused engine"


def fused_unsupported_reason(model, loss, optimizer, backend, callbacks) -> str | None:
    """None if a fused engine can train this setup on ``backend``, else why not (for
    messages): first the device (:func:`_fused_engine_class`), then the model, loss,
    optimizer and callbacks (:func:`fused_model_reason`)."""
    engine_class, reason = _fused_engine_class(backend)
    if reason is None:
        reason = fused_model_reason(
            model,
            loss,
            optimizer,
            callbacks,
            dropout=engine_class.runs_dropout,
            dropconnect=engine_class.runs_dropconnect,
        )
    return reason


def select_engine(
    choice,
    model,
    loss,
    optimizer,
    backend,
    callbacks,
    *,
    track_accuracy: bool,
    flush_denormals: bool = True,
    workspace_cache: dict | None = None,
) -> Engine:
    """The engine that trains ``model`` with ``loss`` and ``optimizer`` on ``backend``.

    ``choice``: "autograd"; "auto" (autograd when the setup does not qualify for the
    device's fused engine; else on a GPU the fused engine, on the CPU
    :class:`AutoCpuEngine`, which measures both between epochs); "fused" (the fused
    engine, or ValueError naming why it cannot); or a callable
    ``factory(model, loss, optimizer, track_accuracy) -> Engine``, which is called as is.
    ``flush_denormals`` and ``workspace_cache`` (scratch kept across fits) go to a fused
    engine. An explicit "fused" on the CPU compiles its kernels first if they are not
    (:mod:`gpunet.backend.jit_cache`), saying so.
    """
    if callable(choice):
        engine = choice(model, loss, optimizer, track_accuracy)
        if not isinstance(engine, Engine):
            raise TypeError(f"the engine factory returned a {type(engine).__name__}, not an Engine")
        return engine
    if not isinstance(choice, str) or choice not in ("auto", "autograd", "fused"):
        raise ValueError(
            f"unknown engine {choice!r}; expected 'auto', 'autograd', 'fused' or a factory"
        )
    if choice == "autograd":
        return AutogradEngine(model, loss, optimizer, track_accuracy)
    reason = fused_unsupported_reason(model, loss, optimizer, backend, callbacks)
    if reason is not None:
        if choice == "fused":
            raise ValueError(f"engine='fused' cannot train this model: {reason}")
        return AutogradEngine(model, loss, optimizer, track_accuracy)
    engine_class, _ = _fused_engine_class(backend)

    def make_fused():
        return engine_class(
            model,
            loss,
            optimizer,
            track_accuracy,
            flush_denormals,
            workspace_cache=workspace_cache,
        )

    if engine_class is not FusedCpuEngine:
        return make_fused()
    from gpunet.backend import jit_cache  # noqa: PLC0415

    kernel_set = jit_cache.epoch_set(model.dtype)
    if choice == "fused":
        if not jit_cache.is_ready(kernel_set) and jit_cache.compile_mode() == "background":
            from gpunet.train.warmup import compile_now  # noqa: PLC0415

            compile_now(kernel_set)  # a notice, the compile, its time
        return make_fused()
    return AutoCpuEngine(
        lambda: AutogradEngine(model, loss, optimizer, track_accuracy),
        make_fused,
        lambda: jit_cache.use(kernel_set),
        kernel_set,
        model,
        loss,
        optimizer,
    )
