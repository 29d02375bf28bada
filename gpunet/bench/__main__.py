"""``python -m gpunet.bench``: the same as ``gpunet bench``."""

import sys

from gpunet.bench.cli import main

sys.exit(main())
