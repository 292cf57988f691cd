"""What one metadata call costs the manager must not grow with the number of names in the
namespace: a rename that reads every name is fine with ten files and a stall with a checkpoint of
ten thousand. Measured in SQLite virtual-machine steps (a progress handler counts them), which are
exact and do not depend on the machine's load. No sockets: the servicer is called directly."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry

from memstage.chunks import ChunkKey
from memstage.manager.catalog import Catalog
from memstage.manager.service import ManagerService
from memstage.proto import manager_pb2
from memstage.settings import ManagerSettings
from tests.test_namespace_model import Context

NS = "scale"
STEP = 10  # the progress handler runs every STEP virtual-machine instructions


class Manager:
    def __init__(self, others: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="memstage-scale-")
        self.catalog = Catalog(self.dir)
        self.svc = ManagerService(ManagerSettings(state=self.dir), self.catalog, CollectorRegistry())
        self.ctx = Context()
        # Names the calls below never touch, in a directory of their own and next to the files.
        for i in range(others):
            self.write(f"/other/f{i:05d}")
            self.write(f"/work/o{i:05d}")
        # Each call has names of its own, so that all of them run on one namespace in any order.
        for name in ("stat", "lookup", "version", "rename", "over", "replaced", "unlink", "link", "chmod",
                     "sub/x", "sub/y", "list/x", "list/y"):
            self.write(f"/work/{name}")
        self.svc.Mkdir(_path("/work/rmdir"), self.ctx)

    def write(self, path: str, size: int = 4096) -> None:
        self.svc.Commit(manager_pb2.CommitRequest(
            namespace=NS, path=path, size=size, chunks=[manager_pb2.ChunkRef(key=ChunkKey.hole(size).to_pb())]),
            self.ctx)

    def steps(self, call: Callable[[], object]) -> int:
        count = 0

        def tick() -> int:
            nonlocal count
            count += 1
            return 0

        db = self.catalog._db
        db.set_progress_handler(tick, STEP)
        try:
            call()
        finally:
            db.set_progress_handler(None, STEP)
        return count * STEP

    def close(self) -> None:
        self.catalog.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _path(path: str) -> manager_pb2.PathRequest:
    return manager_pb2.PathRequest(namespace=NS, path=path)


def _rename(src: str, dst: str) -> manager_pb2.RenameRequest:
    return manager_pb2.RenameRequest(namespace=NS, path=src, destination=dst)


CALLS: dict[str, Callable[[Manager], object]] = {
    "stat": lambda m: m.svc.Stat(_path("/work/stat"), m.ctx),
    "lookup": lambda m: m.svc.Lookup(manager_pb2.LookupRequest(namespace=NS, path="/work/lookup"), m.ctx),
    "create": lambda m: m.write("/work/new"),
    "new version": lambda m: m.write("/work/version", 8192),
    "rename file": lambda m: m.svc.Rename(_rename("/work/rename", "/work/renamed"), m.ctx),
    "rename over a file": lambda m: m.svc.Rename(_rename("/work/over", "/work/replaced"), m.ctx),
    "rename directory": lambda m: m.svc.Rename(_rename("/work/sub", "/work/sub2"), m.ctx),
    "unlink": lambda m: m.svc.Delete(_path("/work/unlink"), m.ctx),
    "link": lambda m: m.svc.Link(_rename("/work/link", "/work/link2"), m.ctx),
    "chmod": lambda m: m.svc.SetAttr(manager_pb2.SetAttrRequest(
        namespace=NS, path="/work/chmod", attrs=manager_pb2.FileAttrs(mode=0o100600)), m.ctx),
    "symlink": lambda m: m.svc.Symlink(manager_pb2.SymlinkRequest(namespace=NS, path="/work/sym", target="a"),
                                       m.ctx),
    "mkdir": lambda m: m.svc.Mkdir(_path("/work/dir"), m.ctx),
    "rmdir": lambda m: m.svc.Rmdir(_path("/work/rmdir"), m.ctx),
    "list a small directory": lambda m: m.svc.List(_path("/work/list"), m.ctx),
}


@pytest.fixture(scope="module")
def managers() -> Iterator[tuple[Manager, Manager]]:
    small, large = Manager(100), Manager(2000)
    yield small, large
    small.close()
    large.close()


@pytest.mark.parametrize("name", list(CALLS))
def test_a_metadata_call_costs_the_same_in_a_namespace_twenty_times_larger(
        managers: tuple[Manager, Manager], name: str) -> None:
    small, large = managers
    steps_small, steps_large = small.steps(lambda: CALLS[name](small)), large.steps(lambda: CALLS[name](large))
    # An index search grows with the log of the names (a level of the B-tree more, at most);
    # reading every name grows twentyfold.
    assert steps_large < 1.5 * steps_small + 2000, (
        f"{name}: {steps_small} SQLite steps among 200 other names, {steps_large} among 4,000")
