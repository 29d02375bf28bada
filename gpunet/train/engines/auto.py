"""``engine="auto"`` on the CPU: whichever engine finishes this fit first, measured.

Which engine is faster depends on the network, the batch size, the machine and how busy
it is (the fused epoch wins by 1.3-3x at small batches and can lose at 512 rows), and the
fused kernels cost a load from Numba's cache (about half a second on a small machine) or
a compile (minutes) before their first step. So :class:`AutoCpuEngine` measures, as
``torch.backends.cudnn.benchmark`` does:

1. The fit's time on autograd is projected from timed steps at the fit's batch size (the
   difference between runs of 2k and k steps, so per-run costs cancel, after a first
   untimed run that loads the kernels). Every measured step is undone afterwards
   (:mod:`gpunet.train.snapshot`). If
   the fit is too short to repay loading the fused kernels should they save
   ``PAYBACK_SHARE`` of it, or the fused kernels are not compiled
   (:func:`gpunet.backend.jit_cache.use`, which then starts compiling them in the
   background for later fits), the fit runs on autograd.
2. Otherwise the fused kernels are loaded and timed the same way, and the faster engine
   runs the fit. A step's cost can change as training goes on (the first steps misled
   the probe at batch 32 on the 2-core VM), so a first epoch slower per step than the
   other engine's probe gives the other engine an epoch, and the faster epoch decides.

Where an epoch has few steps (large batches), timing a few steps would cost a large part
of an epoch, so the epochs themselves are the measurement: a warm-up epoch on a few rows
(undone) loads the autograd kernels, then epoch 1 runs on autograd, epoch 2 fused, then
the faster; the switch between epochs is exact, since the model and optimizer hold the
whole training state. A fit thus never waits for a compile and loses at most the load
and one epoch on the slower engine.

The choice is kept in the cache directory (``gpunet-auto-choices.json``, keyed by the
kernels, machine, network, optimizer, loss, batch size and CPUs): later fits of the same
kind take it without measuring (in the default compile mode; delete the file to measure
again). Autograd kept without timing the fused engine (the fit was too short, or the
kernels were not compiled) is kept with its seconds per step, so a later fit long enough
to repay the load measures again. Results agree with either engine to rounding; a fit
that must repeat bit for bit names its engine.
"""

from __future__ import annotations

import contextlib
import json
import time

from gpunet.backend import jit_cache
from gpunet.train.engines.base import Engine

#: the fused kernels are tried only if saving this share of the rest of the fit would
#: repay their load time. A prior, not a measurement: the fused epoch saved 0-70% of the
#: autograd engine's time on the 784-512-512-10 benchmark at batches 1-512 on two cores
#: (benchmarks/results/auto-engine-*); a fit shorter than load / share stays on autograd
#: unmeasured, and a longer one on which the fused engine loses pays at most this share
PAYBACK_SHARE = 0.2
#: rows of the warm-up steps that load an engine's kernels
WARMUP_ROWS = 64
#: timed steps cover at least this many rows (and two steps)...
PROBE_ROWS = 32
#: ...and are measured this way only when an epoch has this many times more steps
PROBE_SHARE_OF_EPOCH = 16
#: timed runs of the probe steps per engine (the fastest counts)
PROBE_REPEATS = 3
#: the fused kernels' load time assumed before one was measured on this machine (the
#: background compile measures it, and so does every first load; 0.3-0.8 s on a 2-core VM)
UNMEASURED_LOAD_SECONDS = 0.5

_load_seconds: dict[str, float | None] = {}  # engine -> its kernels' load here (None: compiled)


def fused_kernels_loaded() -> bool:
    """Whether this process has run a fused CPU epoch (of any kind) already."""
    from gpunet.kernels.cpu import fused_mlp  # noqa: PLC0415

    return bool(fused_mlp.train_epoch.signatures)


class AutoCpuEngine(Engine):
    """The autograd engine, then the fused engine where it is measured faster; see the
    module docstring. ``make_autograd()`` and ``make_fused()`` build the two engines for
    the same model, loss and optimizer; ``fused_ready()`` says (once) whether the fused
    kernels, jit_cache set ``kernel_set``, may be used now."""

    runs_dropout = True

    def __init__(self, make_autograd, make_fused, fused_ready, kernel_set, model, loss, optimizer):
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.kernel_set = kernel_set  # the fused kernels' set (gpunet.backend.jit_cache)
        self._make_fused, self._fused_ready = make_fused, fused_ready
        self.autograd = make_autograd()
        self.fused = None
        self.current = self.autograd
        self.planned_epochs = None
        self.epoch_seconds: dict[str, float] = {}  # engine name -> its timed epoch
        self.step_seconds: dict[str, float] = {}  # engine name -> its timed step
        self.decision = None  # why the current engine, once decided
        self._stage = "first"
        self.epochs_done = 0
        self._data = None
        self._last_seconds = None

    # the fit loop reads these per epoch: they follow the current engine
    @property
    def name(self) -> str:
        return self.current.name

    @property
    def whole_epochs(self) -> bool:
        return self.current.whole_epochs

    @property
    def trains_in_place(self) -> bool:
        return self.current.trains_in_place

    def plan(self, epochs: int) -> None:
        self.planned_epochs = epochs

    def prepare(self, X, y, batch_size: int) -> None:
        self._data = (X, y, batch_size)
        if self._stage == "first":
            self._key = self._choice_key(batch_size)
            recorded = jit_cache.load_choices().get(self._key) if self._keeps_choices() else None
            steps = self._epoch_steps()
            if recorded is not None and self._use_recorded(recorded, steps):
                pass
            else:
                probe_steps = max(2, -(-PROBE_ROWS // batch_size))
                if steps >= PROBE_SHARE_OF_EPOCH * probe_steps:
                    # the probe's first, untimed run loads the autograd kernels
                    self._choose_by_steps(probe_steps, steps)
                    _load_seconds.setdefault("autograd", None)
                elif "autograd" not in _load_seconds:  # so that epoch 1's time is steps
                    _load_seconds["autograd"] = self._warm_up(self.autograd, "ops")
        self.autograd.prepare(X, y, batch_size)
        if self.fused is not None:
            self.fused.prepare(X, y, batch_size)

    def _choice_key(self, batch_size: int) -> str:
        """What a measured choice depends on: kernels, machine, network, optimizer, loss,
        batch size, CPUs."""
        from gpunet.parallel import get_num_threads  # noqa: PLC0415

        parts = (
            jit_cache.stamp(),
            repr(self.model),
            type(self.optimizer).__name__,
            type(self.loss).__name__,
            str(self.model.dtype),
            batch_size,
            get_num_threads(),
        )
        return json.dumps(parts)

    def _use_recorded(self, recorded: dict, steps: int) -> bool:
        """Take a choice measured earlier on this machine for ``steps`` steps per epoch;
        False if it does not hold now: the fused kernels are not compiled, or autograd was
        kept without timing the fused engine and this fit is long enough to try it."""
        engine = recorded.get("engine")
        if engine == "fused":
            if not self._fused_ready():
                return False
            self._load_fused()
            self.current = self.fused
            self.decision = "fused: measured faster for this fit earlier on this machine"
        elif engine == "autograd" and recorded.get("fused_measured"):
            self.decision = "autograd: measured faster for this fit earlier on this machine"
        elif engine == "autograd":
            per_step = recorded.get("autograd_step_seconds")
            if not isinstance(per_step, float):
                return False
            why_not = self._fused_pays(per_step * steps * (self.planned_epochs or 1))
            if why_not is None:
                return False
            self.decision = f"autograd: {why_not} (a step timed earlier on this machine)"
        else:
            return False
        self._stage = "decided"
        return True

    @staticmethod
    def _keeps_choices() -> bool:
        """Choices are kept across processes in the default (background compile) mode;
        ``GPUNET_COMPILE=foreground`` (the test suite) measures every fit afresh."""
        return jit_cache.compile_mode() == "background"

    def _record(self, autograd_step_seconds: float) -> None:
        """Keep the decision for later fits of this kind, with autograd's seconds per step
        (from which a later, longer fit judges whether the fused engine could pay)."""
        if not self._keeps_choices():
            return
        jit_cache.save_choice(
            self._key,
            {
                "engine": self.current.name,
                "fused_measured": "fused" in self.step_seconds or "fused" in self.epoch_seconds,
                "autograd_step_seconds": float(autograd_step_seconds),
                "step_seconds": self.step_seconds,
                "epoch_seconds": self.epoch_seconds,
                "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )

    def _epoch_steps(self) -> int:
        X, _, batch_size = self._data
        return -(-len(X) // batch_size)

    def run_epoch(self, order=None, on_batch_end=None, control=None):
        start = time.perf_counter()
        result = self.current.run_epoch(order, on_batch_end, control)
        complete = control is None or (control.nonfinite_step < 0 and not control.stop_requested)
        self._last_seconds = time.perf_counter() - start if complete else None
        return result

    def write_back(self) -> None:
        self.current.write_back()
        seconds, self._last_seconds = self._last_seconds, None
        if seconds is not None:
            self._decide(seconds)

    def parameters_finite(self) -> bool:
        return self.current.parameters_finite()

    # ------------------------------------------------------------------ choice
    def _fused_pays(self, autograd_seconds: float) -> str | None:
        """None when the fused engine is worth trying against ``autograd_seconds`` for the
        rest of the fit; else why not (after which the decision is final)."""
        load = self._fused_load_estimate()
        if autograd_seconds * PAYBACK_SHARE < load:
            return (
                f"the rest of the fit ({autograd_seconds:.2f} s on autograd) is too short "
                "to repay loading the fused kernels"
            )
        if not self._fused_ready():
            return "the fused kernels are not compiled yet"
        return None

    def _fused_load_estimate(self) -> float:
        """Seconds loading the fused kernels will cost: 0 once loaded in this process,
        else as last measured on this machine, else ``UNMEASURED_LOAD_SECONDS``."""
        if "fused" in _load_seconds:
            return _load_seconds["fused"] or 0.0
        recorded = jit_cache.recorded_load_seconds(self.kernel_set)
        return UNMEASURED_LOAD_SECONDS if recorded is None else recorded

    def _load_fused(self) -> None:
        self.fused = self._make_fused()
        if "fused" not in _load_seconds:
            # a load is kept for later processes only if it was one: not when another
            # engine of this process had loaded the fused kernels already
            fresh = not fused_kernels_loaded()
            seconds = _load_seconds["fused"] = self._warm_up(self.fused, self.kernel_set)
            if seconds is not None and fresh:
                jit_cache.record_load_seconds(self.kernel_set, seconds)

    def _choose_by_steps(self, probe_steps: int, steps: int) -> None:
        """Time ``probe_steps`` steps of each engine at the fit's batch size and start on
        the faster; its first epoch checks the choice (stage "probed")."""
        self._stage = "decided"
        per_step = {"autograd": self._time_steps(self.autograd, probe_steps)}
        why_not = self._fused_pays(per_step["autograd"] * steps * (self.planned_epochs or 1))
        if why_not is not None:
            self.decision = f"autograd: {why_not}"
            self._record(per_step["autograd"])
            return
        self._load_fused()
        per_step["fused"] = self._time_steps(self.fused, probe_steps)
        self.step_seconds = per_step
        if per_step["fused"] < per_step["autograd"]:
            self.current = self.fused
        self.decision = (
            f"{self.current.name}: a step took {per_step['autograd'] * 1e3:.3g} ms on "
            f"autograd, {per_step['fused'] * 1e3:.3g} ms fused"
        )
        self._stage = "probed"

    def _time_steps(self, engine, count: int) -> float:
        """Seconds per step of ``engine`` at the fit's batch size: the difference between
        runs of ``2 * count`` and ``count`` steps (so what a run costs once, such as
        starting a worker thread, cancels), each the best of ``PROBE_REPEATS``, after a
        first run; all undone afterwards."""
        X, y, batch_size = self._data
        best = {}
        with self._undone():
            for steps in (count, 2 * count):
                engine.prepare(X[: steps * batch_size], y[: steps * batch_size], batch_size)
                if steps == count:
                    engine.run_epoch()
                best[steps] = float("inf")
                for _ in range(PROBE_REPEATS):  # the best run: least disturbed by other work
                    start = time.perf_counter()
                    engine.run_epoch()
                    best[steps] = min(best[steps], time.perf_counter() - start)
        return max(best[2 * count] - best[count], 0.0) / count

    def _decide(self, seconds: float) -> None:
        """After a complete epoch of ``seconds`` on the current engine (written back)."""
        self.epoch_seconds[self.current.name] = seconds
        self.epochs_done += 1
        if self._stage == "first":
            self._stage = "decided"
            left = (self.planned_epochs or 1) - self.epochs_done
            why_not = self._fused_pays(seconds * left) if left >= 1 else "no epoch left"
            if why_not is not None:
                self.decision = f"autograd: {why_not}"
                self._record(seconds / self._epoch_steps())
            else:
                self._load_fused()
                self.fused.prepare(*self._data)
                self.current = self.fused
                self._stage = "fused trial"
        elif self._stage == "probed":
            # a few steps at the start can mislead (a step's cost may change as training
            # goes on): an epoch slower per step than the other engine's probe tries that
            # engine for an epoch
            self._stage = "decided"
            other = self.autograd if self.current is self.fused else self.fused
            left = (self.planned_epochs or 1) - self.epochs_done
            if left >= 1 and seconds / self._epoch_steps() > self.step_seconds[other.name]:
                self.current = other
                self._stage = "trial"
            else:
                self._record(self.step_seconds["autograd"])
        elif self._stage in ("fused trial", "trial"):
            self._stage = "decided"
            fused, autograd = self.epoch_seconds["fused"], self.epoch_seconds["autograd"]
            self.current = self.autograd if fused > autograd else self.fused
            self.decision = (
                f"{self.current.name}: an epoch took {autograd:.3f} s on autograd, "
                f"{fused:.3f} s fused"
            )
            self._record(autograd / self._epoch_steps())

    def _warm_up(self, engine, kernel_set: str) -> float | None:
        """One epoch of ``engine`` on the first rows (loading its kernels), whose steps
        are then undone; its seconds, or None when the kernels had to be compiled (the
        time then says nothing about a load)."""
        was_compiled = jit_cache.is_ready(kernel_set)
        X, y, batch_size = self._data
        rows = min(len(X), WARMUP_ROWS)
        start = time.perf_counter()
        with self._undone():
            engine.prepare(X[:rows], y[:rows], min(batch_size, rows))
            engine.run_epoch()
            seconds = time.perf_counter() - start
        return seconds if was_compiled else None

    @contextlib.contextmanager
    def _undone(self):
        """Within: steps that are measured, not kept (model and optimizer restored)."""
        from gpunet.train.snapshot import restore_snapshot, take_snapshot  # noqa: PLC0415

        snapshot = take_snapshot(self.model, self.optimizer)
        try:
            yield
        finally:
            restore_snapshot(snapshot, self.model, self.optimizer)
