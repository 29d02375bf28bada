"""Progress of a benchmark run on stderr: a tqdm bar on a terminal, else one line per
finished item (``[3/20] label  12 s``), so a log file shows where a run is."""

from __future__ import annotations

import sys
import time


class Progress:
    """``step(label)`` before each of ``total`` items; ``close()`` at the end."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total, self.done = total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.started = time.perf_counter()
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm  # noqa: PLC0415  (a gpunet dependency)

            self.bar = tqdm(total=total, file=self.stream, unit="item", desc="gpunet bench")

    def step(self, label: str) -> None:
        """Announce the next item (the previous one is done)."""
        if not self.enabled:
            return
        if self.bar is not None:
            if self.done:
                self.bar.update(1)
            self.bar.set_postfix_str(label)
        else:
            elapsed = time.perf_counter() - self.started
            print(f"[{self.done + 1}/{self.total}] {label}  ({elapsed:.0f} s)", file=self.stream)
            self.stream.flush()
        self.done += 1

    def note(self, message: str) -> None:
        """A line that is not an item (a skipped part, a file written)."""
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(message, file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.total - self.bar.n)
            self.bar.close()
