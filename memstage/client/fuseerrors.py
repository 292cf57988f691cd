"""The errno boundary of the mount: what a file system call raises becomes an errno for the kernel."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from memstage.client.libfuse import mfusepy
from memstage.errors import MemstageError

F = TypeVar("F", bound=Callable[..., Any])


class _Logs(Protocol):
    def log_once(self, message: str, exc: bool = False) -> None: ...


def translated(method: F) -> F:
    """Errors become errno values at this boundary; an unexpected one is logged once and is EIO."""

    @functools.wraps(method)
    def wrapper(self: _Logs, *args: Any) -> Any:
        try:
            return method(self, *args)
        except mfusepy.FuseOSError:
            raise
        except MemstageError as e:
            if e.errno == errno.EIO:
                self.log_once(f"{method.__name__}: {e}")
            raise mfusepy.FuseOSError(e.errno) from None
        except Exception as e:
            self.log_once(f"{method.__name__}: unexpected {type(e).__name__}: {e}", exc=True)
            raise mfusepy.FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def fail(number: int) -> mfusepy.FuseOSError:
    return mfusepy.FuseOSError(number)
