"""Moved to ``gpunet.bench.isolated`` (installed with the package, which ``gpunet bench`` runs).

This name stays so the scripts here and their tests keep importing ``benchmarks.isolated``:
it is the same module object, private names and monkeypatching included.
"""

import sys

from gpunet.bench import isolated as _moved

sys.modules[__name__] = _moved
