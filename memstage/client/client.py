"""Client: the memstage client library, which is also the fsspec filesystem `memstage://`.

    c = Client(manager="host:port", namespace="default")
    with c.open("/run42/rank0.bin", "wb") as f:
        f.write(state)

fsspec URLs name the manager and the namespace: memstage://HOST:PORT/NAMESPACE/PATH. Directories
are implicit: a directory exists while a file below it does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fsspec.spec import AbstractFileSystem
from prometheus_client import CollectorRegistry

from memstage import tls
from memstage.chunks import ChunkKey
from memstage.client.chunkcache import ChunkCache
from memstage.client.connections import Connections
from memstage.client.files import ReadFile, UpdateFile, WriteFile, check_mode
from memstage.client.filestat import FileStat
from memstage.client.metrics import ClientMetrics
from memstage.client.reader import VersionReader
from memstage.client.spares import SpareSession
from memstage.client.writer import BackgroundCommits, ByteBudget, CommitResult, VersionWriter
from memstage.clock import SYSTEM_CLOCK, Clock
from memstage.errors import DataLost, InvalidArgument, MemstageError, NotFound, Unavailable
from memstage.paths import normalize_file_path, normalize_path
from memstage.proto import manager_pb2
from memstage.settings import ClientSettings, load
from memstage.streamtransport import transport_for
from memstage.transport import ChunkTransport

log = logging.getLogger(__name__)
LIST_PAGE = 5000  # names per List call: a directory of 100,000 comes in 20 replies, not one of 20 MB

_FIND_BATCH = 8192  # keys per FindChunks call, well under the message size limit
_URL = re.compile(r"^memstage://(?P<manager>[^/]+)/(?P<namespace>[^/]+)(?P<path>/.*)?$")


def _owned(uid: int | None, gid: int | None) -> manager_pb2.FileAttrs:
    """A new name's owner: the one given, else this process's (as a mount gives its caller's)."""
    return manager_pb2.FileAttrs(uid=os.getuid() if uid is None else uid, gid=os.getgid() if gid is None else gid)


class Client(AbstractFileSystem):  # type: ignore[misc]
    protocol = "memstage"
    root_marker = "/"

    def __init__(self, manager: str | None = None, namespace: str | None = None, *, config: str | None = None,
                 registry: CollectorRegistry | None = None, **settings: Any) -> None:
        super().__init__(manager=manager, namespace=namespace, config=config, registry=registry, **settings)
        # fsspec's own options for any filesystem: this one is synchronous (zarr v3 opens URLs with
        # asynchronous=True, then wraps a synchronous filesystem in fsspec's AsyncFileSystemWrapper).
        for option in ("asynchronous", "loop", "skip_instance_cache", "use_listings_cache", "listings_expiry_time",
                       "max_paths"):
            settings.pop(option, None)
        self.settings = load(ClientSettings, {"manager": manager, "namespace": namespace, **settings},
                             config=config, flag_style=str)
        self.namespace = self.settings.namespace
        s = self.settings
        self.connections = Connections(s.manager, s.rpc_timeout, token=s.token, namespace=s.namespace,
                                       tls=tls.load(s.tls_cert, s.tls_key, s.tls_ca, s.tls_server_name),
                                       transport=s.transport, unix_sockets=s.unix_sockets)
        self.transport: ChunkTransport = transport_for(s.transport, self.connections.peers, s.namespace,
                                                        s.unix_sockets)
        self.background = BackgroundCommits()
        # One write buffer for every open and closing file of this client.
        self.budget = ByteBudget(self.settings.buffer_size, self._flush_writers)
        self.chunk_cache = ChunkCache(self.settings.chunk_cache) if self.settings.chunk_cache else None
        # Set when the client is shutting down (a mount told to stop): writers stop waiting for space.
        self.closing = threading.Event()
        self.spares: SpareSession | None = None  # see open_sessions_ahead()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="memstage-read")
        self.metrics_registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ClientMetrics(self.metrics_registry)
        self.last_commit: CommitResult | None = None
        self._writes: weakref.WeakSet[VersionWriter] = weakref.WeakSet()
        self._keeper: threading.Thread | None = None
        self._keeper_stop = threading.Event()
        self._lease_clock: Clock = SYSTEM_CLOCK  # what renewals are timed by (tests set a manual one)
        self._keeper_lock = threading.Lock()
        self._checkpoint: int | None = None  # the step of Client.checkpoint(step), while inside it

    # -- fsspec plumbing ---------------------------------------------------------------------
    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]  # type: ignore[return-value]
        m = _URL.match(path)
        if m:
            return m.group("path") or "/"
        if path.startswith("memstage:///"):  # no host: the manager and namespace come from settings
            return "/" + path[len("memstage:///"):].lstrip("/")
        if path.startswith("memstage://"):
            raise InvalidArgument(f"{path!r}: a memstage URL is memstage://HOST:PORT/NAMESPACE/PATH, or "
                                  "memstage:///PATH with the manager and namespace from the settings")
        return "/" + path.lstrip("/")

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, str]:
        m = _URL.match(path)
        return {"manager": m.group("manager"), "namespace": m.group("namespace")} if m else {}

    def _parent(self, path: str) -> str:
        return normalize_path(path).rsplit("/", 1)[0] or "/"

    # -- files -------------------------------------------------------------------------------
    def _open(self, path: str, mode: str = "rb", block_size: Any = None, autocommit: bool = True,
              cache_options: Any = None, version: int = 0, uid: int | None = None, gid: int | None = None,
              **kwargs: Any) -> WriteFile | ReadFile | UpdateFile:
        """'wb' replaces the file (and may seek: see WriteFile); 'w+b' replaces it and reads back
        what it wrote; 'r+b' and 'ab' keep its content and merge with other writers of it at
        close (see UpdateFile); 'rb' reads one version. uid, gid: the owner the written file gets
        (default: a new file is this process's, an existing one keeps its owner)."""
        check_mode(mode)
        if mode == "rb":
            return ReadFile(self, normalize_file_path(path), self.reader(path, version))
        if mode == "wb":
            return WriteFile(self, normalize_file_path(path), mode="wb", uid=uid, gid=gid)
        return UpdateFile(self, normalize_file_path(path), mode, uid=uid, gid=gid)

    def reader(self, path: str, version: int = 0) -> VersionReader:
        """A reader of one committed version (0 = the latest)."""
        norm = normalize_file_path(path)
        vmap = self.connections.call_manager(
            "Lookup", manager_pb2.LookupRequest(namespace=self.namespace, path=norm, version=version), norm)
        return self.map_reader(vmap)

    def map_reader(self, vmap: manager_pb2.VersionMap, read_ahead: bool = True) -> VersionReader:
        """A reader of the chunks a map lists (a version, or chunks located with LocateChunks)."""
        return VersionReader(self.connections, self.transport, self.namespace, vmap, self._pool,
                             self.settings.read_ahead if read_ahead else 0,
                             on_degraded=self.metrics.degraded.labels(self.namespace).inc, cache=self.chunk_cache)

    def record(self, result: CommitResult) -> None:
        self.metrics.record(self.namespace, result.stats)
        self.last_commit = result

    def latest_map(self, path: str) -> manager_pb2.VersionMap | None:
        """The map of the latest version of `path`; None if there is no such file."""
        try:
            return self.connections.call_manager(
                "Lookup", manager_pb2.LookupRequest(namespace=self.namespace, path=path), path)
        except NotFound:
            return None

    def held_chunks(self, vmap: manager_pb2.VersionMap | None) -> set[ChunkKey]:
        """The chunks of a version (the latest, from latest_map) that the namespace still holds
        readably: the likely unchanged part of the next checkpoint, which a writer need not send."""
        if vmap is None:
            return set()
        path = vmap.path
        keys = list(dict.fromkeys(ChunkKey.from_pb(c.key) for c in vmap.chunks))
        held: set[ChunkKey] = set()
        for start in range(0, len(keys), _FIND_BATCH):
            batch = keys[start : start + _FIND_BATCH]
            reply = self.connections.call_manager(
                "FindChunks", manager_pb2.NamespacedChunks(namespace=self.namespace, keys=[k.to_pb() for k in batch]),
                f"deduplication query for {path}")
            held.update(k for k, present in zip(batch, reply.present, strict=True) if present)
        return held

    def sync(self) -> None:
        """Wait for the commits of files closed in buffered mode; raise the first that failed."""
        self.background.sync()

    def wait_protected(self, path: str, timeout: float | None = None) -> None:
        """Wait until the latest version of `path` has what its namespace's redundancy policy asks
        (its copies made, its stripes' parity encoded) or is on the PFS: from then on it survives
        the loss of as many benefactors as the policy tolerates. close() does not wait for this
        (fsync through a mount does). Raises DataLost if the version is lost meanwhile, Unavailable
        after `timeout` (default: the protect_wait setting)."""
        norm = normalize_path(self._strip_protocol(path))
        limit = self.settings.protect_wait if timeout is None else timeout
        deadline = time.monotonic() + limit
        pause = 0.01
        while True:
            # The manager answers once the version is protected or lost, or after `wait`.
            wait = max(0.0, min(deadline - time.monotonic(), self.settings.rpc_timeout / 2, 5.0))
            asked = time.monotonic()
            info = FileStat.from_pb(self.connections.call_manager("Stat", manager_pb2.PathRequest(
                namespace=self.namespace, path=norm, protection=True, wait_protected_ms=int(wait * 1000)), norm))
            if info.protected:
                return
            latest = self.versions(norm)[-1] if info.version else None
            if latest is not None and latest["lost"]:
                raise DataLost(f"{norm} version {latest['version']} is lost: {latest['lost_reason']}")
            if time.monotonic() >= deadline:
                raise Unavailable(f"{norm} version {info.version} is not protected after {limit:.0f}s (see the "
                                  "redundancy line of `memstage status`: not enough benefactors or domains?)")
            if time.monotonic() - asked < wait / 2:  # a manager that does not wait: ask again later
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(0.2, pause * 2)

    # -- metadata ----------------------------------------------------------------------------
    @staticmethod
    def _entry(info: FileStat) -> dict[str, Any]:
        # An owner never set (a directory that exists because files are below it) shows as this
        # process's, as a mount shows its own.
        meta = {"mode": info.mode, "uid": info.uid if info.uid >= 0 else os.getuid(),
                "gid": info.gid if info.gid >= 0 else os.getgid(), "nlink": info.nlink, "ino": info.ino,
                "atime_ns": info.atime_ns, "mtime_ns": info.mtime_ns, "ctime_ns": info.ctime_ns}
        if info.kind == "directory":
            return {"name": info.path, "size": 0, "type": "directory", **meta}
        if info.kind == "symlink":
            return {"name": info.path, "size": info.size, "type": "symlink", "target": info.target, **meta}
        return {"name": info.path, "size": info.size, "type": "file", "version": info.version,
                "versions": info.version_count, "mtime": info.mtime_ns / 1e9 if info.mtime_ns else info.committed_at,
                **meta}

    def stat(self, path: str, protection: bool = True) -> FileStat:
        """Everything the manager keeps about a name (hard links show their file); `protection`:
        with `protected` filled in (it costs the manager a look at every chunk)."""
        norm = normalize_path(self._strip_protocol(path))
        return FileStat.from_pb(self.connections.call_manager(
            "Stat", manager_pb2.PathRequest(namespace=self.namespace, path=norm, protection=protection), norm))

    def setattr(self, path: str, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                atime_ns: int | None = None, mtime_ns: int | None = None, access: bool = False
                ) -> FileStat:
        """Change mode (permission bits), owner or times; arguments left None stay as they are.
        access: only a read's atime update, which does not change the ctime. Returns the new stat."""
        norm = normalize_path(self._strip_protocol(path))
        attrs = manager_pb2.FileAttrs(mode=mode, uid=uid, gid=gid, atime_ns=atime_ns, mtime_ns=mtime_ns,
                                      access=access)
        return FileStat.from_pb(self.connections.call_manager(
            "SetAttr", manager_pb2.SetAttrRequest(namespace=self.namespace, path=norm, attrs=attrs), norm))

    def symlink(self, target: str, path: str, uid: int | None = None, gid: int | None = None) -> None:
        """A symbolic link at `path` pointing to `target` (any string, resolved by whoever follows it),
        owned by uid and gid (default: this process's)."""
        norm = normalize_file_path(self._strip_protocol(path))
        self.connections.call_manager("Symlink", manager_pb2.SymlinkRequest(
            namespace=self.namespace, path=norm, target=target, attrs=_owned(uid, gid)), norm)

    def mknod(self, path: str, mode: int, rdev: int = 0, uid: int | None = None, gid: int | None = None) -> None:
        """A FIFO, socket or device node (mode carries the type): a name with metadata, no data,
        owned by uid and gid (default: this process's)."""
        norm = normalize_file_path(self._strip_protocol(path))
        self.connections.call_manager("MakeNode", manager_pb2.NodeRequest(
            namespace=self.namespace, path=norm, mode=mode, rdev=rdev, attrs=_owned(uid, gid)), norm)

    def link(self, existing: str, path: str) -> None:
        """A hard link: `path` becomes another name of the file `existing` (both see the same versions)."""
        src = normalize_file_path(self._strip_protocol(existing))
        dst = normalize_file_path(self._strip_protocol(path))
        self.connections.call_manager(
            "Link", manager_pb2.RenameRequest(namespace=self.namespace, path=src, destination=dst), dst)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._entry(self.stat(path, protection=False))

    def listing(self, path: str) -> list[FileStat]:
        """Every name in the directory `path`, with what the manager keeps about each (a call per
        LIST_PAGE names)."""
        norm = normalize_path(self._strip_protocol(path))
        out: list[FileStat] = []
        after = ""
        while True:
            reply = self.connections.call_manager(
                "List", manager_pb2.PathRequest(namespace=self.namespace, path=norm, after=after, limit=LIST_PAGE),
                norm)
            out.extend(FileStat.from_pb(e) for e in reply.entries)
            if not reply.more or not reply.entries:
                return out
            after = out[-1].path.rsplit("/", 1)[1]

    def ls(self, path: str = "/", detail: bool = True, **kwargs: Any) -> list[Any]:
        norm = normalize_path(self._strip_protocol(path))
        try:
            listed = self.listing(norm)
        except NotFound:  # not a directory: ls of a file lists the file itself, as in fsspec
            listed = []
        if not listed:
            info = self.info(norm)  # NotFound if there is no such name at all
            entries = [info] if info["type"] == "file" else []
        else:
            entries = [self._entry(e) for e in listed]
        return entries if detail else [e["name"] for e in entries]

    def policy(self, persist_every: int | None = None, keep_versions: int | None = None,
               redundancy: str | None = None, pfs_keep: int | None = None, quota_memory: int | None = None,
               quota_sessions: int | None = None, keep_deleted: bool | None = None) -> dict[str, Any]:
        """The namespace's persistence and redundancy policy; arguments that are given change it.
        redundancy: "none", "replicate:R" or "rs:K+M"; pfs_keep: persisted checkpoints kept on the
        PFS (0: all)."""
        given: dict[str, Any] = {"persist_every": persist_every, "keep_versions": keep_versions,
                                 "redundancy": redundancy, "pfs_keep": pfs_keep, "quota_memory": quota_memory,
                                 "quota_sessions": quota_sessions, "keep_deleted": keep_deleted}
        request = manager_pb2.PolicyRequest(namespace=self.namespace,
                                            **{k: v for k, v in given.items() if v is not None})
        reply = self.connections.call_manager("Policy", request, f"policy of namespace {self.namespace}")
        return {f.name: getattr(reply, f.name) for f in reply.DESCRIPTOR.fields if f.name != "namespace"}

    def gc(self, dry_run: bool = False) -> dict[str, Any]:
        """Remove the namespace's chunk files on the PFS that no version references (dry_run: only
        list them). Returns orphans (path, bytes, why), removed_files and removed_bytes."""
        reply = self.connections.call_manager(
            "CollectGarbage", manager_pb2.GcRequest(namespace=self.namespace, dry_run=dry_run),
            f"gc of namespace {self.namespace}")
        return {"orphans": [{"path": o.path, "bytes": o.bytes, "why": o.why} for o in reply.orphans],
                "removed_files": reply.removed_files, "removed_bytes": reply.removed_bytes}

    def versions(self, path: str) -> list[dict[str, Any]]:
        norm = normalize_file_path(self._strip_protocol(path))
        reply = self.connections.call_manager(
            "Versions", manager_pb2.PathRequest(namespace=self.namespace, path=norm), norm)
        return [{"version": v.version, "size": v.size, "committed_at": v.committed_at, "chunks": v.chunk_count,
                 "persist": v.persist, "persisted": v.persisted, "in_memory": v.in_memory, "lost": v.lost,
                 "lost_reason": v.lost_reason, "drain_error": v.drain_error, "unavailable": v.unavailable}
                for v in reply.versions]

    @contextlib.contextmanager
    def checkpoint(self, step: int) -> Iterator[None]:
        """Files this client commits inside the block belong to checkpoint `step`, whatever their
        names: persist_every and keep count it as one checkpoint (for layouts memstage does not
        recognise by itself; per-step directories and step-numbered files need nothing)."""
        if not isinstance(step, int) or step < 0:
            raise InvalidArgument(f"checkpoint step {step!r}: a number, 0 or more")
        previous, self._checkpoint = self._checkpoint, step
        try:
            yield
        finally:
            self._checkpoint = previous

    def begin_checkpoint(self, step: int) -> int | None:
        """Files any writer commits in this namespace from now on (other clients and mounts too)
        belong to checkpoint `step`, until end_checkpoint() or the next begin: for a job script
        around tools that know nothing of memstage. A path that names a step itself keeps it.
        Returns the step this ends, if one was open."""
        if not isinstance(step, int) or step < 0:
            raise InvalidArgument(f"checkpoint step {step!r}: a number, 0 or more")
        reply = self._mark(manager_pb2.CheckpointMark(namespace=self.namespace, begin=step))
        return reply.ended if reply.was_open else None

    def end_checkpoint(self) -> int | None:
        """The namespace's open checkpoint is complete; returns its step (None if none was open)."""
        reply = self._mark(manager_pb2.CheckpointMark(namespace=self.namespace, end=True))
        return reply.ended if reply.was_open else None

    def _mark(self, request: manager_pb2.CheckpointMark) -> manager_pb2.CheckpointMarkReply:
        return self.connections.call_manager("MarkCheckpoint", request, f"checkpoint of namespace {self.namespace}")

    def checkpoints(self) -> list[dict[str, Any]]:
        """The namespace's checkpoints (per-step directories or step-numbered files), oldest first:
        series, step, seq, started_at, files, bytes, persist (selected by persist_every) and state
        (in_memory, draining, persisted, lost, dropped)."""
        reply = self.connections.call_manager(
            "Checkpoints", manager_pb2.PathRequest(namespace=self.namespace, path="/"), "checkpoints")
        return [{"series": c.series, "step": c.step, "seq": c.seq, "started_at": c.started_at, "files": c.files,
                 "bytes": c.bytes, "persist": c.persist, "state": c.state} for c in reply.checkpoints]

    def prefetch(self, path: str = "/", progress: Callable[[int, int], object] | None = None,
                 timeout: float | None = None, latest: bool = False) -> dict[str, Any]:
        """Load the latest version of every file at or below `path` back into memory from the PFS
        (a checkpoint drained by an earlier job, or one that left memory), so that the restart
        reads at memory speed; with `latest`, only the newest persisted checkpoint of each step
        series below `path`. Benefactors read the chunk files themselves, in parallel.
        progress(loaded bytes, total bytes) is called as it goes. Returns files, bytes,
        loaded_bytes, failed_chunks and error (why a chunk could not be loaded: it is read from
        the PFS instead). TimeoutError if it is not done within `timeout` seconds."""
        norm = normalize_path(self._strip_protocol(path))
        deadline = None if timeout is None else time.monotonic() + timeout
        pause, start = 0.02, True
        while True:
            reply = self.connections.call_manager(
                "Prefetch", manager_pb2.PathRequest(namespace=self.namespace, path=norm, start=start, latest=latest),
                norm)
            start = False
            if progress is not None:
                progress(reply.loaded_bytes, reply.bytes)
            if not reply.pending_chunks:
                return {"files": reply.files, "bytes": reply.bytes, "loaded_bytes": reply.loaded_bytes,
                        "failed_chunks": reply.failed_chunks, "error": reply.error}
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"prefetch of {norm}: {reply.loaded_bytes} of {reply.bytes} bytes loaded "
                                   f"after {timeout}s")
            time.sleep(pause)  # the loads run on the benefactors; asked again for progress
            pause = min(pause * 2, 0.25)

    def rm_file(self, path: str) -> None:
        norm = normalize_file_path(self._strip_protocol(path))
        self.connections.call_manager("Delete", manager_pb2.PathRequest(namespace=self.namespace, path=norm), norm)

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path: str | list[str], recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete files; a directory (implicit: it vanishes with its last file) needs recursive=True."""
        for p in [path] if isinstance(path, str) else path:
            if self.info(p)["type"] == "directory":
                if not recursive:
                    raise InvalidArgument(f"{p}: is a directory (use recursive=True)")
                for f in self.find(p, maxdepth=maxdepth):
                    self.rm_file(f)
            else:
                self.rm_file(p)

    def mkdir(self, path: str, create_parents: bool = True, mode: int | None = None, uid: int | None = None,
              gid: int | None = None, **kwargs: Any) -> None:
        """An explicit (possibly empty) directory, owned by uid and gid (default: this process's);
        directories also exist while files are below them (those show uid and gid -1: no owner)."""
        norm = normalize_file_path(self._strip_protocol(path))
        attrs = _owned(uid, gid)
        if mode is not None:
            attrs.mode = mode
        self.connections.call_manager(
            "Mkdir", manager_pb2.PathRequest(namespace=self.namespace, path=norm, attrs=attrs), norm)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        if normalize_path(self._strip_protocol(path)) != "/":
            self.mkdir(path)

    def rmdir(self, path: str) -> None:
        norm = normalize_file_path(self._strip_protocol(path))
        self.connections.call_manager("Rmdir", manager_pb2.PathRequest(namespace=self.namespace, path=norm), norm)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any) -> None:
        """Rename a file (replacing the destination atomically) or a directory."""
        self.rename_path(path1, path2)

    def rename_path(self, path1: str, path2: str, want_info: bool = False) -> FileStat | None:
        """mv, and with `want_info` the destination's attributes after the rename (a mount caches
        them: the next lookup of the new name costs no call)."""
        src = normalize_file_path(self._strip_protocol(path1))
        dst = normalize_file_path(self._strip_protocol(path2))
        reply = self.connections.call_manager("Rename", manager_pb2.RenameRequest(
            namespace=self.namespace, path=src, destination=dst, want_info=want_info), src)
        return FileStat.from_pb(reply.info) if want_info and reply.HasField("info") else None

    rename = mv

    def new_writer(self, path: str, opened_at: float, known: set[ChunkKey] | None = None) -> VersionWriter:
        """A writer of a new version of `path`: a write session at the manager, renewed by this
        client while it is open, sharing this client's write buffer."""
        writer = VersionWriter(self.connections, self.settings, path, opened_at, known=known, budget=self.budget,
                               transport=self.transport, closing=self.closing,
                               session=self.spares.take() if self.spares is not None else None,
                               cache=self.chunk_cache)
        writer.checkpoint = lambda: self._checkpoint
        with self._keeper_lock:
            self._writes.add(writer)
            if self._keeper is None:
                self._keeper_stop.clear()
                self._keeper = threading.Thread(target=self._renew, args=(writer.lease / 3,),
                                                name="memstage-sessions", daemon=True)
                self._keeper.start()
        return writer

    def _open_writers(self) -> list[VersionWriter]:
        with self._keeper_lock:
            return [w for w in self._writes if not w.done]

    def _flush_writers(self) -> None:
        for writer in self._open_writers():
            writer.flush()

    def _renew(self, period: float) -> None:
        """Renew the leases of open writes; a write whose session ended anyway fails with DataLost."""
        while not self._lease_clock.wait(self._keeper_stop, period):
            writes = self._open_writers()
            if not writes:
                continue
            try:
                reply = self.connections.call_manager(
                    "RenewSessions", manager_pb2.RenewSessionsRequest(sessions=[w.session for w in writes]),
                    "renewing write sessions")
            except MemstageError as e:  # a manager outage: try again next period
                log.warning("renewing %d write sessions failed: %s", len(writes), e)
                continue
            for writer, still in zip(writes, reply.open, strict=True):
                if not still and not writer.done:
                    writer.expired()

    def open_sessions_ahead(self) -> None:
        """Keep a write session opened ahead, so that a new file's write starts without waiting for
        the manager (a mount writing many small files)."""
        if self.spares is not None:
            return
        settings = self.settings

        def open_session() -> manager_pb2.SessionReply:
            return self.connections.call_manager("OpenSession", manager_pb2.OpenSessionRequest(
                namespace=self.namespace, striping=manager_pb2.StripingRequest(
                    width=settings.stripe_width, chunk_size=settings.chunk_size)), "a write session opened ahead")

        def abort(session: int) -> None:
            self.connections.call_manager("AbortSession", manager_pb2.SessionRequest(session=session),
                                          "a write session opened ahead")

        self.spares = SpareSession(open_session, abort)

    def close(self) -> None:
        """Drop connections (new ones open on next use) after waiting for background commits."""
        if self.spares is not None:
            self.spares.close()
            self.spares = None
        try:
            self.sync()
        finally:
            with self._keeper_lock:
                keeper, self._keeper = self._keeper, None
                self._keeper_stop.set()
            if keeper is not None:
                keeper.join(timeout=10)
            self.connections.close()
            self.transport.close()
