"""ISA-L's Reed-Solomon arithmetic called directly (ctypes), with no copy of the members.

pyeclib wraps the same library but wants the K data members joined in one bytes object and hands
back K+M new fragments with headers: about 8 ms of allocation and copying per 4 MiB stripe, four
times the arithmetic. Here the members are passed where they lie and the results are written into
buffers made once. The matrix is ISA-L's Cauchy matrix, as pyeclib's `isa_l_rs_cauchy` builds it,
so both give the same parity (tests compare them).

The library is the copy of libisal that pyeclib's wheel carries, else the system's (Debian's
libisal2), loaded at first use; `lib()` is None when neither loads, and memstage.erasure then
uses pyeclib.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

Buffer = bytes | bytearray | memoryview
_u8p = ctypes.POINTER(ctypes.c_ubyte)


def _candidates() -> Iterator[str]:
    try:
        import pyeclib

        libs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(pyeclib.__file__))), "pyeclib.libs")
        yield from sorted(glob.glob(os.path.join(libs, "libisal*.so*")))
    except ImportError:
        pass
    import ctypes.util  # costs a few ms: only when pyeclib's copy is not there

    found = ctypes.util.find_library("isal")
    if found:
        yield found
    yield "libisal.so.2"


@functools.cache
def lib() -> ctypes.CDLL | None:
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            lib.ec_encode_data  # noqa: B018 - the symbols this module calls, checked at load
            lib.gf_invert_matrix  # noqa: B018
        except (OSError, AttributeError):
            continue
        lib.gf_gen_cauchy1_matrix.argtypes = (_u8p, ctypes.c_int, ctypes.c_int)
        lib.gf_gen_cauchy1_matrix.restype = None
        lib.ec_init_tables.argtypes = (ctypes.c_int, ctypes.c_int, _u8p, _u8p)
        lib.ec_init_tables.restype = None
        lib.ec_encode_data.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, _u8p,
                                       ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p))
        lib.ec_encode_data.restype = None
        lib.gf_invert_matrix.argtypes = (_u8p, _u8p, ctypes.c_int)
        lib.gf_invert_matrix.restype = ctypes.c_int
        lib.gf_mul.argtypes = (ctypes.c_ubyte, ctypes.c_ubyte)
        lib.gf_mul.restype = ctypes.c_ubyte
        return lib
    return None


class _PyBuffer(ctypes.Structure):
    # Python's Py_buffer: the address of any contiguous buffer, read-only ones (bytes) included,
    # which ctypes' from_buffer refuses.
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release = ctypes.pythonapi.PyBuffer_Release
_release.argtypes = (ctypes.POINTER(_PyBuffer),)
_release.restype = None


@contextmanager
def _addresses(buffers: Sequence[Buffer]) -> Iterator[ctypes.Array[ctypes.c_void_p]]:
    """The buffers' addresses, as an array of pointers, held for the duration."""
    views = [_PyBuffer() for _ in buffers]
    held: list[_PyBuffer] = []
    try:
        for b, v in zip(buffers, views, strict=True):
            if _get_buffer(b, ctypes.byref(v), 0) != 0:  # PyBUF_SIMPLE: contiguous bytes
                raise ValueError("a stripe member is not a contiguous buffer")
            held.append(v)
        yield (ctypes.c_void_p * len(buffers))(*[v.buf for v in views])
    finally:
        for v in held:
            _release(ctypes.byref(v))


@functools.lru_cache(maxsize=64)
def _matrix(k: int, m: int) -> bytes:
    """The (K+M) x K Cauchy encoding matrix: identity over K rows, then the parity rows."""
    isal = lib()
    assert isal is not None
    a = (ctypes.c_ubyte * ((k + m) * k))()
    isal.gf_gen_cauchy1_matrix(a, k + m, k)
    return bytes(a)


def _tables(k: int, rows: bytes) -> ctypes.Array[ctypes.c_ubyte]:
    isal = lib()
    assert isal is not None
    n = len(rows) // k
    out = (ctypes.c_ubyte * (32 * k * n))()
    isal.ec_init_tables(k, n, (ctypes.c_ubyte * len(rows)).from_buffer_copy(rows), out)
    return out


@functools.lru_cache(maxsize=64)
def _encode_tables(k: int, m: int) -> ctypes.Array[ctypes.c_ubyte]:
    return _tables(k, _matrix(k, m)[k * k:])


@functools.lru_cache(maxsize=512)
def _decode_tables(k: int, m: int, used: tuple[int, ...], want: int) -> ctypes.Array[ctypes.c_ubyte]:
    """Tables giving member `want` from the members `used` (K of them, in that order)."""
    isal = lib()
    assert isal is not None
    a = _matrix(k, m)
    sub = (ctypes.c_ubyte * (k * k))(*[a[i * k + j] for i in used for j in range(k)])
    inv = (ctypes.c_ubyte * (k * k))()
    if isal.gf_invert_matrix(sub, inv, k) != 0:
        raise ValueError(f"members {used} of rs:{k}+{m} do not determine the others")
    # Member `want` is row `want` of the encoding matrix applied to the data members, which are
    # the inverse applied to the members used.
    row = bytes(_dot(a[want * k:(want + 1) * k], inv, k, j) for j in range(k))
    return _tables(k, row)


def _dot(row: bytes, inv: ctypes.Array[ctypes.c_ubyte], k: int, j: int) -> int:
    isal = lib()
    assert isal is not None
    acc = 0
    for i in range(k):
        acc ^= isal.gf_mul(row[i], inv[i * k + j])
    return acc


def _run(k: int, rows: int, tables: ctypes.Array[ctypes.c_ubyte], members: Sequence[Buffer],
         outputs: Sequence[bytearray], size: int) -> None:
    isal = lib()
    assert isal is not None
    with _addresses(members) as src, _addresses(outputs) as dst:
        isal.ec_encode_data(size, k, rows, tables, src, dst)


def encode(k: int, m: int, data: Sequence[Buffer], size: int) -> list[bytearray]:
    """The M parity members of K data members of exactly `size` bytes each."""
    parity = [bytearray(size) for _ in range(m)]
    _run(k, m, _encode_tables(k, m), data, parity, size)
    return parity


def rebuild(k: int, m: int, available: Sequence[tuple[int, Buffer]], want: int, size: int) -> bytearray:
    """Member `want` from K members (index, bytes of exactly `size`)."""
    used = tuple(i for i, _ in available)
    out = bytearray(size)
    _run(k, 1, _decode_tables(k, m, used, want), [b for _, b in available], [out], size)
    return out
