"""mfusepy, loaded with libfuse 3: every module of the mount imports it from here.

mfusepy picks libfuse 2 when both are installed; libfuse 3 negotiates 1 MiB writes (libfuse 2
sends the file system 4 KiB ones here), so ask for it unless the user chose otherwise. The choice
is read when mfusepy is first imported.
"""

import os

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy  # noqa: E402

__all__ = ["mfusepy"]
