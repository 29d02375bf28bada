"""Numba CPU kernels: fast versions of the backend's fused ops.

Nothing compiles at import; each kernel compiles on its first call (``cache=True``, so
later processes load the machine code from ``__pycache__``).

* :func:`dense_forward`, :func:`dense_backward` (:mod:`.dense`): BLAS matmuls plus one
  fused Numba pass (bias + activation; activation derivative + bias gradient).
* :func:`softmax_cross_entropy` (:mod:`.softmax_xent`): losses and gradient, one pass per row.
* :data:`UPDATE_KERNELS` / :func:`fused_update` (:mod:`.optim_updates`): in-place
  SGD, Adagrad, RMSprop, Adam/AdamW updates with the references' signatures.
* :mod:`.denormals`: per-kernel denormal flush setting and the FTZ/DAZ context manager
  :func:`flush_denormals`.

Cache freshness: Numba stamps a cached kernel with the hash of its *own* source file,
but kernels here inline code from sibling modules (``softmax_xent`` and ``fused_mlp``
use ``dense``'s math), so editing ``dense.py`` alone would leave their caches stale.
:func:`_install_package_cache_stamp` (run before any kernel module is imported) makes
every cache entry of this package carry the hash of *all* its ``.py`` files instead.
"""

from __future__ import annotations

import functools
import hashlib
import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@functools.cache
def _file_hash(path, mtime, size):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).digest()


def package_stamp() -> bytes:
    """sha256 over the names and contents of every ``.py`` file of this package."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(PACKAGE_DIR)):
        if name.endswith(".py"):
            path = os.path.join(PACKAGE_DIR, name)
            st = os.stat(path)
            h.update(name.encode())
            h.update(_file_hash(path, st.st_mtime, st.st_size))
    return h.digest()


def _install_package_cache_stamp() -> bool:
    """Stamp Numba cache entries of functions defined in this directory with a hash of
    every ``.py`` file here. Uses Numba's cache-locator list (``CacheImpl._locator_classes``,
    not public API); if it is missing, caching keeps Numba's per-file stamps. Returns
    success."""
    try:
        from numba.core import caching  # noqa: PLC0415

        impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in 0.6x
        bases = [
            caching.UserProvidedCacheLocator,  # NUMBA_CACHE_DIR keeps precedence
            caching.InTreeCacheLocator,
            caching.UserWideCacheLocator,
        ]
        locators = impl._locator_classes
    except (ImportError, AttributeError):
        return False
    pkg_dir = PACKAGE_DIR

    def in_package(py_file):
        return os.path.dirname(os.path.abspath(py_file)) == pkg_dir

    new = []
    for base in bases:
        if any(getattr(c, "_gpunet_base", None) is base for c in locators):
            return True  # already installed (module reloaded)

        class PackageStampLocator(base):
            _gpunet_base = base

            @classmethod
            def from_function(cls, py_func, py_file):
                if not in_package(py_file):
                    return None
                return super().from_function(py_func, py_file)

            def get_source_stamp(self):
                return package_stamp()

        new.append(PackageStampLocator)
    locators[:0] = new
    return True


_install_package_cache_stamp()

from gpunet.kernels.cpu.denormals import (  # noqa: E402
    flush_denormals,
    get_flush_denormals,
    get_mxcsr,
    mxcsr_supported,
    set_flush_denormals,
    set_mxcsr,
)
from gpunet.kernels.cpu.dense import (  # noqa: E402
    ACTIVATION_CODES,
    activation_code,
    dense_backward,
    dense_forward,
)
from gpunet.kernels.cpu.optim_updates import (  # noqa: E402
    UPDATE_KERNELS,
    adagrad_,
    adam_,
    fused_update,
    rmsprop_,
    sgd_,
)
from gpunet.kernels.cpu.softmax_xent import softmax_cross_entropy  # noqa: E402

__all__ = [
    "ACTIVATION_CODES",
    "UPDATE_KERNELS",
    "activation_code",
    "adagrad_",
    "adam_",
    "dense_backward",
    "dense_forward",
    "flush_denormals",
    "fused_update",
    "get_flush_denormals",
    "get_mxcsr",
    "mxcsr_supported",
    "rmsprop_",
    "set_flush_denormals",
    "set_mxcsr",
    "sgd_",
    "softmax_cross_entropy",
]
