"""Copies of a model's and optimizer's training state, to put back later.

Used where steps must be undone: the fit loop after a non-finite step of an engine that
trains the model's own arrays, and ``engine="auto"`` after its warm-up steps.
"""

from __future__ import annotations

from gpunet.train.checkpoint import mask_state, set_mask_state


def take_snapshot(model, optimizer):
    """Copies of the parameters and buffers, the optimizer's state dict and the mask
    layers' (seed, counter)."""
    tensors = list(model._state_tensors().values())
    arrays = [t.data.copy() for t in tensors]
    return tensors, arrays, optimizer.state_dict(), mask_state(model)


def restore_snapshot(snapshot, model, optimizer) -> None:
    """Put back what :func:`take_snapshot` copied (gradients are left None)."""
    tensors, arrays, optimizer_state, masks = snapshot
    set_mask_state(model, masks)
    for t, saved in zip(tensors, arrays):
        t.data[...] = saved
        t.grad = None
    groups, state = optimizer._validated_load(optimizer_state)
    optimizer.param_groups, optimizer.state = groups, state
