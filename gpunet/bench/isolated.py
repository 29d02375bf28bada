"""Run each benchmark peer in its own process, behind the peer interface.

``train_throughput.py`` lets frameworks take turns, one timed repeat each. In one process
they also share state beyond the CPU: thread pools, the allocator's heap, libraries'
global settings. On the 2-core VM, gpunet's batch-128 SGD epochs ran at 37,100-43,300
samples/s when gpunet ran alone (15 of 15, 1 s pauses between epochs) but 5 of 15 fell
to 24,200-26,100 when they alternated with PyTorch epochs in the same process. An
``IsolatedPeer`` keeps the turns (a slow spell of the VM still hits every framework
alike) and gives every framework a process of its own.

The data set goes to the workers once, through shared memory; ``train(X, y, b)`` then
takes a leading slice of it (``X[:n]``, as the benchmark passes) and only ``n`` and
``b`` cross the pipe. Timing stays in the parent: a command's round trip is well under
a millisecond, against timed repeats of a second or more.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing import shared_memory

import numpy as np


class SharedArrays:
    """Arrays copied into shared memory once; workers attach to them by name."""

    def __init__(self, **arrays):
        self._blocks = {}
        self.specs = {}
        self.arrays = {}
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            block = shared_memory.SharedMemory(create=True, size=max(a.nbytes, 1))
            view = np.ndarray(a.shape, a.dtype, buffer=block.buf)
            view[...] = a
            self._blocks[name] = block
            self.specs[name] = (block.name, a.shape, a.dtype.str)
            self.arrays[name] = view

    def close(self) -> None:
        self.arrays.clear()
        for block in self._blocks.values():
            block.close()
            block.unlink()
        self._blocks.clear()


def _attach(specs):
    blocks, arrays = [], {}
    for name, (block_name, shape, dtype) in specs.items():
        block = shared_memory.SharedMemory(name=block_name)
        blocks.append(block)
        arrays[name] = np.ndarray(shape, np.dtype(dtype), buffer=block.buf)
    return blocks, arrays


def _serve(conn, key, widths, kwargs, specs):
    """Worker: build the peer, then answer commands until ``stop``."""
    from gpunet.bench import peers  # noqa: PLC0415

    blocks, data = _attach(specs)
    X, y = data["X"], data["y"]
    try:
        peer = peers.PEERS[key](widths, seed=0, **kwargs)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ok", (peer.key, peer.label)))
    while True:
        command, args = conn.recv()
        if command == "stop":
            break
        try:
            if command == "setup":
                result = peer.setup(*args)
            elif command == "train":
                n, batch_size = args
                result = peer.train(X[:n], y[:n], batch_size)
            else:  # supports, loss, info
                result = getattr(peer, command)(*args)
            conn.send(("ok", result))
        except Exception as exc:  # report it in the parent, with the framework named
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    del X, y, data
    for block in blocks:
        block.close()


def _leading_slice(part, whole) -> bool:
    """Whether ``part`` is ``whole[:n]`` for some ``n`` (a view, not a copy)."""
    return part.ctypes.data == whole.ctypes.data and part.strides == whole.strides


class IsolatedPeer:
    """``peers.PEERS[key](widths, seed=0, **kwargs)`` in a spawned process, with the same
    ``setup / train / loss / supports / info`` interface and ``key`` / ``label``.
    ``train`` takes leading slices of ``shared.arrays["X"]`` / ``["y"]`` only."""

    def __init__(self, key: str, widths, shared: SharedArrays, **kwargs):
        self._shared = shared
        self.key = key  # until the worker names its peer
        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, key, list(widths), kwargs, shared.specs), daemon=True
        )
        self._process.start()
        child.close()
        self.key, self.label = self._answer()

    def _answer(self):
        try:
            status, result = self._conn.recv()
        except EOFError:
            status, result = "error", f"its process ended (exit code {self._process.exitcode})"
        if status != "ok":
            raise RuntimeError(f"benchmark peer {self.key}: {result}")
        return result

    def _call(self, command, *args):
        self._conn.send((command, args))
        return self._answer()

    def setup(self, optimizer_name: str, dtype) -> None:
        self._call("setup", optimizer_name, dtype)

    def train(self, X, y, batch_size: int) -> None:
        if not _leading_slice(X, self._shared.arrays["X"]):
            raise ValueError("IsolatedPeer.train takes leading slices of the shared X only")
        if len(y) != len(X) or not _leading_slice(y, self._shared.arrays["y"]):
            raise ValueError("IsolatedPeer.train takes the matching slice of the shared y")
        self._call("train", len(X), batch_size)

    def loss(self, X, y) -> float:
        return self._call("loss", np.asarray(X), np.asarray(y))

    def supports(self, batch_size: int, n_samples: int) -> bool:
        return self._call("supports", batch_size, n_samples)

    def info(self) -> dict:
        return self._call("info")

    def close(self) -> None:
        if self._process.is_alive():
            self._conn.send(("stop", ()))
            self._process.join(timeout=30)
        self._conn.close()
