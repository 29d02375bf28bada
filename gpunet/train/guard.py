"""What ends training early: a non-finite loss or parameter, and Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

NONFINITE_POLICIES = ("raise", "stop", "warn")
INTERRUPT_POLICIES = ("stop", "raise")


class NonFiniteError(FloatingPointError):
    """Training met a NaN or infinite loss or parameter. ``epoch`` and ``step`` are
    1-based; ``history`` holds the epochs completed before it (the model and optimizer
    are as they were at the end of the last of them)."""

    def __init__(self, message: str, epoch: int, step: int, history=None):
        super().__init__(message)
        self.epoch, self.step, self.history = epoch, step, history


@contextlib.contextmanager
def ctrl_c_stops(control, enabled: bool = True):
    """While training: the first Ctrl-C asks ``control`` to stop at the next step
    boundary; a second one raises KeyboardInterrupt (after the step in progress, where
    an engine runs it on another thread). Only on the main thread, and only where
    SIGINT has Python's default handler (a handler the user installed is kept)."""
    if (
        not enabled
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def handler(signum, frame):
        if control.stop_requested:
            raise KeyboardInterrupt
        control.request_stop()
        print(
            "\ngpunet: stopping after the current step (Ctrl-C again to abort)",
            file=sys.stderr,
        )

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
