"""The typed records the fused epoch's functions pass around (CPU).

Each is a ``namedtuple``, which Numba compiles as a typed record (fields by name, no
Python objects): the epoch, its steps and its worker threads take a few of these
instead of two dozen positional arrays. Shapes:

- :class:`Net`: ``layers`` (L, 7) int64, ``params`` (K, 2) int64 (see :mod:`fused_mlp`).
- :class:`Buffers`: the flat parameter buffer ``P`` (total,), the gradient scratch ``G``
  and the optimizer state ``S1``..``S3`` laid out like ``P``; ``H`` (K, 8) float64
  hyperparameter rows, ``steps`` (K,) int64 optimizer step counts, ``firsts`` (K,) int64
  1 while a momentum buffer does not exist.
- :class:`Batches`: ``X`` (N, F), ``labels`` (N,) int64 (cross-entropy; else empty),
  ``targets`` (N, K) (MSE; else (0, 1)), ``order`` (N,) int64 the epoch's permutation
  (empty: in order).
- :class:`Rule`: ``opt_kind`` and ``loss_kind`` codes, ``smoothing`` (label smoothing),
  ``mean_reduction``, ``do_flush`` (store subnormal optimizer state as 0).
- :class:`Masks`: Dropout / DropConnect ``keys`` ((steps, 2L) uint64 for an epoch, (2L,)
  for one step; empty without masks), ``thresholds`` (2L,) uint64, ``scales`` (2L,);
  ``weights`` the step's masked weights of the DropConnect layers, flat (each (out, in),
  shared by all threads; empty without DropConnect), ``offsets`` (L,) int64 where
  layer ``l``'s starts in ``weights`` (-1: not a DropConnect layer).
- :class:`Team`: the threads of multi-thread steps (:mod:`threads`): ``flags`` int64,
  ``shared`` (T, 1 + sum of widths) float64 (each thread's loss sum and bias-gradient
  column sums), ``G_parts`` (T - 1, total) the workers' ``dW``, ``works`` (T - 1, size)
  the workers' scratch, ``epoch_work`` the calling thread's scratch, ``routes`` (2,)
  int64 the route table (:mod:`routes`). One thread: ``flags`` empty.
"""

from __future__ import annotations

from collections import namedtuple

Net = namedtuple("Net", ["layers", "params"])
Buffers = namedtuple("Buffers", ["P", "G", "S1", "S2", "S3", "H", "steps", "firsts"])
Batches = namedtuple("Batches", ["X", "labels", "targets", "order"])
Rule = namedtuple("Rule", ["opt_kind", "loss_kind", "smoothing", "mean_reduction", "do_flush"])
Masks = namedtuple("Masks", ["keys", "thresholds", "scales", "weights", "offsets"])
Team = namedtuple("Team", ["flags", "shared", "G_parts", "works", "epoch_work", "routes"])


def make_rule(opt_kind, loss_kind, smoothing, mean_reduction, do_flush) -> Rule:
    """A :class:`Rule` with the Python types every caller passes (one compiled
    specialization)."""
    return Rule(
        int(opt_kind), int(loss_kind), float(smoothing), bool(mean_reduction), bool(do_flush)
    )
