"""The timed operations every benchmark mode shares: a raw disk write, a memstage file write."""

from __future__ import annotations

import os
import time
from typing import Any


def disk_write_seconds(path: str, data: memoryview, write_size: int) -> float:
    """Write `data` to a new file in write_size pieces, fsync it, remove it; the seconds it took."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for start in range(0, len(data), write_size):
            os.write(fd, data[start : start + write_size])
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - t0
    os.unlink(path)
    return elapsed


def write_file(client: Any, path: str, data: memoryview, write_size: int) -> Any:
    """Write one file through memstage in write_size pieces, as an application would; its CommitResult."""
    with client.open(path, "wb") as f:
        for start in range(0, len(data), write_size):
            f.write(data[start : start + write_size])
    return f.result
