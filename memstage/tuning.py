"""Process tuning for the data path.

glibc returns freed 1 MiB message buffers to the kernel and maps fresh ones for the next message;
page faults then cost more than the copies themselves (a bare grpcio stream runs ~0.56 GB/s
without this, ~0.9 GB/s with it here). mallopt() raises the thresholds at runtime, the same effect
as MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ in the environment, for processes we do not start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 256 * 1024 * 1024


def keep_large_buffers() -> bool:
    """Ask glibc to keep large freed buffers for reuse. False (and harmless) on other C libraries."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # M_MMAP_THRESHOLD is capped at 32 MiB by glibc on 64-bit: larger values are refused.
    ok = mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1 and mallopt(_M_TRIM_THRESHOLD, _THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the thresholds; running with glibc defaults")
    return ok
