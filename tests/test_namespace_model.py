"""The manager's namespace (files, directories, symbolic and hard links, rename, unlink) against a
simple reference model of a POSIX file system, over random sequences of calls. No sockets: the
servicer's methods are called directly on a real catalog in a temporary directory."""

from __future__ import annotations

import errno
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from prometheus_client import CollectorRegistry

from memstage.chunks import ChunkKey
from memstage.errors import MemstageError, from_rpc_error
from memstage.manager.catalog import Catalog
from memstage.manager.service import ManagerService
from memstage.proto import manager_pb2
from memstage.settings import ManagerSettings

NS = "model"
PATHS = ["/a", "/b", "/a/a", "/a/b", "/b/a", "/b/b"]


class Aborted(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class Context:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def peer(self) -> str:
        return "model"


def outcome(call: Any) -> str:
    """'ok' or the errno name the FUSE layer would return."""
    try:
        call()
    except Aborted as e:
        err: MemstageError = from_rpc_error(e, "call")
        return errno.errorcode[err.errno]
    except MemstageError as e:  # raised by the servicer called without its boundary
        return errno.errorcode[e.errno]
    return "ok"


@dataclass
class Model:
    names: dict[str, tuple[str, int]] = field(default_factory=dict)  # path -> (kind, inode; 0 for a directory)
    sizes: dict[int, int] = field(default_factory=dict)  # a file's inode -> size (its content, here)
    targets: dict[int, str] = field(default_factory=dict)  # a symbolic link's inode -> target
    next_inode: int = 1

    def kind(self, path: str) -> str | None:
        if path == "/":
            return "dir"
        node = self.names.get(path)
        return node[0] if node else None

    def parent_ok(self, path: str) -> bool:
        return self.kind(path.rsplit("/", 1)[0] or "/") == "dir"

    def children(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted(p for p in self.names if p.startswith(prefix) and "/" not in p[len(prefix):])

    def nlink(self, inode: int) -> int:
        return sum(1 for k, v in self.names.values() if k != "dir" and v == inode)


class NamespaceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="memstage-model-")
        self.catalog = Catalog(self.dir)
        self.svc = ManagerService(ManagerSettings(state=self.dir), self.catalog, CollectorRegistry())
        self.ctx = Context()
        self.model = Model()

    def teardown(self) -> None:
        self.catalog.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def check(self, got: str, expected: str, what: str) -> None:
        assert got == expected, f"{what}: memstage says {got}, POSIX says {expected}"

    # -- calls ---------------------------------------------------------------------------------
    @rule(path=st.sampled_from(PATHS), size=st.integers(1, 1 << 40))
    def write(self, path: str, size: int) -> None:
        m = self.model
        if not m.parent_ok(path):
            return  # the kernel looks the parent up first; not the manager's case
        request = manager_pb2.CommitRequest(namespace=NS, path=path, size=size,
                                            chunks=[manager_pb2.ChunkRef(key=ChunkKey.hole(size).to_pb())])
        got = outcome(lambda: self.svc.Commit(request, self.ctx))
        kind = m.kind(path)
        expected = {"dir": "EISDIR", "symlink": "EEXIST"}.get(kind or "", "ok")
        self.check(got, expected, f"write {path}")
        if expected == "ok":
            if kind == "file":
                inode = m.names[path][1]
            else:
                inode = m.next_inode
                m.next_inode += 1
                m.names[path] = ("file", inode)
            m.sizes[inode] = size

    @rule(path=st.sampled_from(PATHS))
    def mkdir(self, path: str) -> None:
        m = self.model
        if not m.parent_ok(path):
            return
        got = outcome(lambda: self.svc.Mkdir(manager_pb2.PathRequest(namespace=NS, path=path), self.ctx))
        kind = m.kind(path)
        self.check(got, "ok" if kind in (None, "dir") else "EEXIST", f"mkdir {path}")
        if kind is None:
            m.names[path] = ("dir", 0)

    @rule(path=st.sampled_from(PATHS))
    def rmdir(self, path: str) -> None:
        m = self.model
        got = outcome(lambda: self.svc.Rmdir(manager_pb2.PathRequest(namespace=NS, path=path), self.ctx))
        kind = m.kind(path)
        expected = ("ENOENT" if kind is None else "ENOTDIR" if kind != "dir"
                    else "ENOTEMPTY" if m.children(path) else "ok")
        self.check(got, expected, f"rmdir {path}")
        if expected == "ok":
            del m.names[path]

    @rule(path=st.sampled_from(PATHS))
    def unlink(self, path: str) -> None:
        m = self.model
        got = outcome(lambda: self.svc.Delete(manager_pb2.PathRequest(namespace=NS, path=path), self.ctx))
        kind = m.kind(path)
        expected = "ENOENT" if kind is None else "EISDIR" if kind == "dir" else "ok"
        self.check(got, expected, f"unlink {path}")
        if expected == "ok":
            del m.names[path]

    @rule(src=st.sampled_from(PATHS), dst=st.sampled_from(PATHS))
    def rename(self, src: str, dst: str) -> None:
        m = self.model
        if not m.parent_ok(dst):
            return
        got = outcome(lambda: self.svc.Rename(manager_pb2.RenameRequest(namespace=NS, path=src, destination=dst),
                                              self.ctx))
        ks, kd = m.kind(src), m.kind(dst)
        if ks is None:
            expected = "ENOENT"
        elif src == dst:
            expected = "ok"
        elif ks == "dir":
            expected = ("EINVAL" if dst.startswith(src + "/") else "ENOTDIR" if kd not in (None, "dir")
                        else "ENOTEMPTY" if kd == "dir" and m.children(dst) else "ok")
        else:
            expected = "EISDIR" if kd == "dir" else "ok"
        self.check(got, expected, f"rename {src} {dst} ({ks} onto {kd})")
        if expected != "ok" or src == dst or (ks != "dir" and kd is not None and m.names[src] == m.names[dst]):
            return
        moved = {p: v for p, v in m.names.items() if p == src or p.startswith(src + "/")}
        for p in moved:
            del m.names[p]
        for p in [p for p in m.names if p == dst or p.startswith(dst + "/")]:
            del m.names[p]
        for p, v in moved.items():
            m.names[dst + p[len(src):]] = v

    @rule(src=st.sampled_from(PATHS), dst=st.sampled_from(PATHS))
    def link(self, src: str, dst: str) -> None:
        m = self.model
        if not m.parent_ok(dst):
            return
        got = outcome(lambda: self.svc.Link(manager_pb2.RenameRequest(namespace=NS, path=src, destination=dst),
                                            self.ctx))
        ks, kd = m.kind(src), m.kind(dst)
        expected = "ENOENT" if ks is None else "EPERM" if ks == "dir" else "EEXIST" if kd is not None else "ok"
        self.check(got, expected, f"link {src} {dst}")
        if expected == "ok":
            m.names[dst] = m.names[src]

    @rule(path=st.sampled_from(PATHS), link_to=st.sampled_from(["x", "../y", "/abs"]))
    def symlink(self, path: str, link_to: str) -> None:
        m = self.model
        if not m.parent_ok(path):
            return
        got = outcome(lambda: self.svc.Symlink(manager_pb2.SymlinkRequest(namespace=NS, path=path, target=link_to),
                                               self.ctx))
        self.check(got, "ok" if m.kind(path) is None else "EEXIST", f"symlink {path}")
        if m.kind(path) is None:
            m.names[path] = ("symlink", m.next_inode)
            m.targets[m.next_inode] = link_to
            m.next_inode += 1

    # -- what every name shows ------------------------------------------------------------------
    @invariant()
    def names_match(self) -> None:
        m = self.model
        for path in PATHS:
            try:
                info = self.svc.reads.file_info(NS, path)
            except MemstageError:
                info = None
            kind = m.kind(path)
            if kind is None:
                assert info is None, f"{path} exists in memstage, not in the model"
                continue
            assert info is not None, f"{path} ({kind}) is missing"
            if kind == "dir":
                assert info.is_dir, path
                assert info.nlink == 2 + sum(1 for c in m.children(path) if m.kind(c) == "dir"), path
            else:
                inode = m.names[path][1]
                if kind == "symlink":
                    assert info.target == m.targets[inode] and not info.is_dir, path
                else:
                    assert not info.is_dir and info.size == m.sizes[inode], f"{path}: size {info.size}"
                assert info.nlink == m.nlink(inode), f"{path}: nlink {info.nlink}, model {m.nlink(inode)}"
        for directory in ["/", *[p for p in PATHS if m.kind(p) == "dir"]]:
            entries = self.svc.List(manager_pb2.PathRequest(namespace=NS, path=directory), self.ctx).entries
            listed = [e.path for e in entries]
            assert listed == m.children(directory), f"ls {directory}: {listed} vs {m.children(directory)}"
            for e in entries:  # a listing shows what stat shows (a mount hands it to the kernel as it is)
                assert e == self.svc.reads.file_info(NS, e.path), f"ls {directory}: {e.path}"
            paged, after = [], ""  # page by page, one name at a time: the same names
            while True:
                page = self.svc.List(manager_pb2.PathRequest(namespace=NS, path=directory, after=after, limit=1),
                                     self.ctx)
                paged.extend(e.path for e in page.entries)
                if not page.more:
                    break
                after = paged[-1].rsplit("/", 1)[1]
            assert paged == listed, f"ls {directory} in pages: {paged}"


NamespaceMachine.TestCase.settings = settings(max_examples=250, stateful_step_count=40, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
test_namespace_against_a_posix_model = NamespaceMachine.TestCase
