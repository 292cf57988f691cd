"""Commits: a version is recorded only from locations whose receipts prove the chunks are there
(checked outside the lock, large ones on helper processes), within the namespace's memory quota,
and in groups (one transaction and fsync per group). The rules are pure functions at the top."""

from __future__ import annotations

import errno
import hmac
import logging
from collections.abc import Sequence, Set

from memstage import commitpack, receipts
from memstage.chunks import HOLE_HASH, MAX_CHUNK_SIZE, ChunkKey, first, key_of_pair, second
from memstage.errors import Conflict, DataLost, FsError, InvalidArgument, MemstageError, QuotaExceeded
from memstage.manager import codec
from memstage.manager.catalog import Holds, NewVersion, Placed
from memstage.manager.groupcommit import GroupCommit, NotDurable
from memstage.manager.namespace import check_parents
from memstage.manager.nodes import DIR, FILE
from memstage.manager.sessions import Session
from memstage.manager.slots import FairSlots
from memstage.manager.state import State
from memstage.manager.verifier import ReceiptCheckers, default_workers
from memstage.paths import check_namespace, normalize_file_path
from memstage.proto import manager_pb2
from memstage.redundancy import Redundancy
from memstage.units import format_size

log = logging.getLogger(__name__)

# Commits worked on at once (see Commits.commit).
COMMIT_SLOTS = 2

Chunks = list[tuple[ChunkKey, Sequence[str]]]


def check_target(path: str, kind: str | None) -> None:
    """A commit writes a file: FsError if the name is something else."""
    if kind not in (None, FILE):
        raise FsError(errno.EISDIR if kind == DIR else errno.EEXIST, f"{path}: is a {kind}, not a file")


def over_quota(namespace: str, quota: int, used: int, added: int) -> QuotaExceeded | None:
    """The refusal of a commit bringing `added` bytes into memory where `used` of `quota` are (0:
    no quota); None if it fits. A soft limit: commits checked at once may pass it together."""
    if not quota or not added or used + added <= quota:
        return None
    return QuotaExceeded(f"namespace {namespace} is at its memory quota: this version brings "
                         f"{format_size(added)} more into memory, {format_size(used)} of "
                         f"{format_size(quota)} (quota_memory) is used; nothing was committed")


def unconfirmed(index: int, key: ChunkKey, bf: str) -> DataLost:
    return DataLost(f"chunk {index} ({key}) is not confirmed by benefactor {bf} "
                    "(no valid receipt: it restarted since it stored the chunk, or never stored it); "
                    "nothing was committed, write the file again")


def chunk_of_location(counts: Sequence[int], location: int) -> int:
    """The chunk whose locations (counts: each chunk's, in order) include the location-th of all."""
    i, at = 0, counts[0]
    while at <= location:
        i += 1
        at += counts[i]
    return i


def confirm(session: int, namespace: str, chunks: Sequence[tuple[ChunkKey, Sequence[tuple[str, bytes]]]],
            receipt_keys: dict[str, bytes]) -> Chunks:
    """The chunks with the benefactors their locations name, each proved by its receipt (under the
    key of the benefactor's current incarnation); DataLost names the first that is not (none is
    without a session)."""
    out: Chunks = []
    verify = receipts.Verifier(session, namespace)
    for i, (key, locations) in enumerate(chunks):
        for bf, receipt in locations:
            if not session or not verify(receipt_keys.get(bf, b""), key, receipt):
                raise unconfirmed(i, key, bf)
        out.append((key, [bf for bf, _ in locations]))
    return out


class Commits:
    def __init__(self, state: State) -> None:
        self.s = state
        self._commit_slots = FairSlots(COMMIT_SLOTS)  # in order of arrival: no commit waits much longer than others
        # Commits checked meanwhile are recorded together: one transaction and one fsync per group.
        self.group_commit: GroupCommit[NewVersion, tuple[int, Holds]] = GroupCommit(state.catalog.commit_group,
                                                                                    state.catalog.sync)
        self.receipt_checkers = ReceiptCheckers(default_workers())  # large commits' receipts, checked on other cores

    def commit(self, request: manager_pb2.CommitRequest) -> int:
        """Record a version from a commit's request; returns its number."""
        # A few commits are checked at once, the others wait (blocked, not runnable): a storm of
        # CPU-bound commits in hundreds of threads would queue every heartbeat behind them for the
        # GIL. Checked, they are recorded in groups, one transaction and fsync for each group.
        if request.session:
            with self.s.lock:
                waiting = self.s.sessions.get(request.session)
                if waiting is not None:
                    waiting.queued = True  # no expiry while it waits for its turn
        try:
            with self._commit_slots:
                checked = self._check_commit(request)
            return self._record_commit(request, *checked)  # with the commits that wait with it
        finally:
            if request.session:
                with self.s.lock:
                    left = self.s.sessions.get(request.session)
                    if left is not None:
                        left.queued = False  # refused before it was taken up: it may expire again

    def _check_commit(self, request: manager_pb2.CommitRequest
                      ) -> tuple[str, str, Session | None, Chunks, Placed | None]:
        """A commit's name, session and chunks, with every location's receipt checked."""
        namespace = check_namespace(request.namespace)
        path = normalize_file_path(request.path)
        with self.s.namespace_lock:
            path = self.s.catalog.canonical(namespace, path)  # a hard link's commit is its file's
            check_parents(lambda p: self.s.catalog.kind(namespace, p), path)
            check_target(path, self.s.catalog.kind(namespace, path))
        session: Session | None = None
        packed = request.HasField("packed")
        named = set(request.packed.benefactors) if packed else {
            loc.benefactor_id for c in request.chunks for loc in c.locations}
        with self.s.lock:
            if request.session:
                # Committing: no expiry, no new maps, and still open to heartbeats (its chunks stay)
                # until the orders below say what became of them.
                session = self.s.session(request.session, namespace)
                session.committing = True
            receipt_keys = self._receipt_keys(named)
        try:
            chunks, placed = self._confirmed(namespace, request, receipt_keys)
            self._check_quota(namespace, [k for k, _ in chunks] if placed is None else placed.keys)
        except MemstageError:
            self.s.metrics.commits_refused.labels(namespace).inc()
            if session is not None:
                with self.s.lock:
                    self.s.sessions.end(session.id)
                    self.s.end_orders(session, {})
            raise
        return namespace, path, session, chunks, placed

    def _check_quota(self, namespace: str, keys: Sequence[ChunkKey]) -> None:
        """QuotaExceeded if the chunks a commit brings into memory take the namespace past its memory
        quota (a soft limit: commits checked at once may pass it together by what they bring)."""
        quota = self.s.catalog.policy(namespace).quota_memory
        if not quota:
            return
        used, added = self.s.catalog.memory_added(namespace, keys)
        refusal = over_quota(namespace, quota, used, added)
        if refusal is not None:
            self.s.metrics.quota_refused.labels(namespace, "memory").inc()
            raise refusal

    def _record_commit(self, request: manager_pb2.CommitRequest, namespace: str, path: str, session: Session | None,
                       chunks: Chunks, placed: Placed | None
                       ) -> int:
        alive = self.s.alive_ids()
        not_durable: BaseException | None = None
        try:
            try:
                version, holds = self.group_commit.submit(NewVersion(
                    namespace, path, request.size, chunks, alive,
                    attrs=codec.attrs(request.attrs) if request.HasField("attrs") else None, placed=placed,
                    base=request.base_version if request.merge else None,
                    checkpoint=request.checkpoint if request.HasField("checkpoint") else None))
            except NotDurable as e:  # recorded: its holds are ordered below, but the writer is told it failed
                (version, holds), not_durable = e.result, e.cause  # type: ignore[misc]
        except Conflict:
            # Another writer committed first: this one merges over that version and commits again
            # in the same session, whose chunks stay its own meanwhile.
            self.s.metrics.commit_conflicts.labels(namespace).inc()
            if session is not None:
                with self.s.lock:
                    session.committing = False
                    self.s.sessions.renew(session.id, self.s.clock())
            raise
        except BaseException:
            if session is not None:
                with self.s.lock:
                    self.s.sessions.end(session.id)
                    self.s.end_orders(session, {})
            raise
        with self.s.lock:
            if session is not None:
                self.s.sessions.end(session.id)
                self.s.end_orders(session, holds)
            for bf, held in holds.items():
                self.s.registry.note_used(bf, sum(map(second, map(first, held))))
        self.s.free(self.s.catalog.apply_retention(namespace, path))
        if Redundancy.parse(self.s.catalog.policy(namespace).redundancy).tolerates:
            self.s.wake.set()  # its copies are ordered now, not at the next housekeeping round
        if not_durable is not None:
            raise not_durable
        self.s.metrics.committed(namespace, request.size, request.stats)
        log.debug("committed %s:%s version %d (%d bytes, %d chunks)", namespace, path, version, request.size,
                 len(chunks))
        return version

    def _receipt_keys(self, names: Set[str]) -> dict[str, bytes]:
        """(under self.s.lock) The receipt keys of the current incarnations of the benefactors a
        commit names (the receipts themselves are checked outside the lock)."""
        keys: dict[str, bytes] = {}
        for bf in names:
            rec = self.s.registry.get(bf)
            keys[bf] = rec.receipt_key if rec is not None else b""
        return keys

    def _confirmed(self, namespace: str, request: manager_pb2.CommitRequest, receipt_keys: dict[str, bytes]
                   ) -> tuple[Chunks, Placed | None]:
        """The commit's chunks with the locations their receipts prove (and the same as Placed when
        each is a plain chunk with one copy); a location without a valid receipt from the
        benefactor's incarnation current at the commit refuses the commit."""
        if request.HasField("packed"):
            if request.chunks:
                raise InvalidArgument("commit: chunks are given either packed or not, not both")
            return self._confirmed_packed(namespace, request, receipt_keys)
        given = [(codec.key(c.key), [(loc.benefactor_id, loc.receipt) for loc in c.locations]) for c in request.chunks]
        return confirm(request.session, namespace, given, receipt_keys), None

    def _confirmed_packed(self, namespace: str, request: manager_pb2.CommitRequest, receipt_keys: dict[str, bytes]
                          ) -> tuple[Chunks, Placed | None]:
        """_confirmed, for chunks given packed (one loop over byte strings, no message per chunk)."""
        refs = commitpack.unpack(request.packed)
        lengths = list(map(second, refs.keys))
        plain = bool(lengths) and min(lengths) > 0 and max(lengths) <= MAX_CHUNK_SIZE and \
            HOLE_HASH not in map(first, refs.keys)
        if plain:
            keys = list(map(key_of_pair, refs.keys))  # no call in Python per chunk: all are plain chunk keys
        else:
            keys = [ChunkKey(h, n) if 0 < n <= MAX_CHUNK_SIZE and h != HOLE_HASH else codec.key_of(h, n)
                    for h, n in refs.keys]
        names = refs.benefactors
        chunks: Chunks
        placed = None
        if len(names) == len(keys) and refs.counts.count(1) == len(keys):  # one copy each: the usual case
            located = keys
            chunks = list(zip(keys, zip(names), strict=True))
            if plain:
                placed = Placed(keys, names, request.packed.keys)  # the keys as a version's map packs them
        else:
            located, chunks, at = [], [], 0
            for key, count in zip(keys, refs.counts, strict=True):
                located += [key] * count
                chunks.append((key, names[at:at + count]))
                at += count
        if not names:
            return chunks, placed
        # The first location without a valid receipt: none at all without a session, else the first
        # at a benefactor not registered or whose receipt differs (the order the per-chunk check has).
        if not request.session:
            unknown: int | None = 0
        elif all(receipt_keys.values()):  # every benefactor named is registered
            unknown = None
        else:
            unknown = next((j for j, bf in enumerate(names) if not receipt_keys[bf]), None)
        if unknown is None and located is keys:  # one copy each: a helper process may check them all
            valid = self.receipt_checkers.check(request.session, namespace, request.packed.keys,
                                                request.packed.locations,
                                                list(map(receipt_keys.__getitem__, request.packed.benefactors)),
                                                refs.receipts)
            if valid:
                return chunks, placed
            # Not valid (or no helper): checked here, which also names the first receipt that fails.
        if unknown != 0:
            want = receipts.expected(request.session, namespace, located,
                                     list(map({bf: k or codec.NO_KEY for bf, k in receipt_keys.items()}.__getitem__,
                                              names)))
            if unknown is None and hmac.compare_digest(want, refs.receipts):
                return chunks, placed
            given, earliest = refs.receipts, unknown
            unknown = next(j for j in range(len(names))
                           if j == earliest or want[16 * j:16 * j + 16] != given[16 * j:16 * j + 16])
        i = chunk_of_location([len(locs) for _, locs in chunks], unknown)
        raise unconfirmed(i, chunks[i][0], names[unknown])
