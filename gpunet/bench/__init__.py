"""``gpunet bench``: gpunet against its peers on every usable device, in one run.

Modules, one job each:

- ``peers``: the frameworks compared (gpunet's engines, PyTorch, scikit-learn, a plain
  NumPy MLP) behind one adapter interface; ``isolated``: a peer in a process of its own.
- ``machine``: what a result was measured on (CPU, GPU, versions, threads, denormals).
- ``workloads``: the networks, synthetic data, FLOP counts and the real data sets.
- ``timing``: medians with their spread, host and CUDA-event timers.
- ``ceilings``: the device's sgemm rate and (GPU) copy bandwidth.
- ``throughput``: samples/s and GFLOP/s from batch 1 to the full batch.
- ``accuracy``: time to a target accuracy for the batch, stochastic and mini-batch regimes.
- ``report`` (Markdown), ``plots`` (PNG, needs matplotlib), ``compare`` (two JSON files).
- ``runner``: one run of all of it; ``cli``: the ``gpunet bench`` options.

Nothing here is imported by ``import gpunet``; torch, scikit-learn, CuPy and matplotlib
are imported only when the part that needs them runs.
"""
