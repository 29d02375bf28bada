"""``python -m benchmarks`` (from a source checkout): the same as ``gpunet bench``."""

import sys

from gpunet.bench.cli import main

sys.exit(main())
