"""Moved to ``gpunet.bench.peers`` (installed with the package, which ``gpunet bench`` runs).

This name stays so the scripts here and their tests keep importing ``benchmarks.peers``:
it is the same module object, private names and monkeypatching included.
"""

import sys

from gpunet.bench import peers as _moved

sys.modules[__name__] = _moved
