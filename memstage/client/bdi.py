"""The kernel's read-ahead on a mount: how far ahead of a reader it asks the file system for data.

Every FUSE mount starts at the kernel's default of 128 KiB, and libfuse's max_readahead can only
lower it: only the mount's backing device (/sys/class/bdi/MAJOR:MINOR/read_ahead_kb, writable by
root) raises it. With more, the kernel sends reads of up to 1 MiB (libfuse 3's largest) and
several at once, ahead of the application. A mount without the right to raise it keeps the default.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

KiB = 1024


def mount_device(target: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """MAJOR:MINOR of the file system mounted last at `target` (a resolved path), or None.
    Read from the mount table: a look at the mount point itself would wait for the mount."""
    found = None
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split(" ")
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    found = fields[2]
    except OSError:
        return None
    return found


def _unescape(field: str) -> str:
    """The mount table writes space, tab, newline and backslash in paths as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def raise_read_ahead(target: str, size: int, mountinfo: str = "/proc/self/mountinfo",
                     bdi_root: str = "/sys/class/bdi") -> int | None:
    """Raise the kernel's read-ahead of the mount at `target` to `size` bytes (never lower it).
    Returns the read-ahead it has then, in bytes; None if it cannot be known."""
    device = mount_device(target, mountinfo)
    if device is None:
        return None
    knob = f"{bdi_root}/{device}/read_ahead_kb"
    current = None
    try:
        with open(knob) as f:
            current = int(f.read()) * KiB
        if current < size:
            with open(knob, "w") as f:
                f.write(str(size // KiB))
            current = size
    except (OSError, ValueError) as e:
        log.info("kernel read-ahead of %s stays as it is (%s): reads come in smaller pieces", target, e)
    return current
