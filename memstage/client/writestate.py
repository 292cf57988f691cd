"""WriteState: the writer's state machine. Pure: no threads, no sockets, no clock.

One write of one version: chunks handed over in file order, deduplicated against what the
namespace holds, placed round-robin over a striping map, acknowledged with receipts, re-placed
when a benefactor is full or fails before acknowledging, released when no longer needed, laid out
and committed. Events come in as method calls (a chunk handed over, a deduplication answer, a map,
an ack, a stream's end); each returns the instructions for the I/O layer (VersionWriter), which
carries them out and reports back. Blocking work (asking the manager) is only ever an instruction,
so the thread that posts an event never waits inside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from memstage.chunks import ChunkKey
from memstage.errors import ChunkRejected, DataLost, MemstageError, QuotaExceeded
from memstage.placement import Placement, StreamEnd

# A whole write this small is sent without asking whether the namespace holds it (a 4 KiB
# file's bytes cost less than a deduplication round trip to the manager).
SMALL_WRITE = 64 * 1024


# -- instructions ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    placement: Placement
    seq: int
    close_after: bool = False  # finishing: the stream ends after this chunk


@dataclass(frozen=True, slots=True)
class Ask:
    """Which of these chunks does the namespace hold already? Answer with found()."""

    seqs: tuple[int, ...]
    keys: tuple[ChunkKey, ...]


@dataclass(frozen=True, slots=True)
class NeedMap:
    """A striping map without these benefactors; answer with map_received() or map_failed()."""

    exclude: tuple[str, ...]
    full: tuple[str, ...]  # those of them that refused for lack of space: asked again after a wait


@dataclass(frozen=True, slots=True)
class Resolved:
    """These chunks need their bytes no more (acknowledged, found held, or the write failed):
    give back their share of the write buffer and drop their frames."""

    seqs: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True, slots=True)
class Release:
    """Tell the manager the write no longer needs these stored chunks."""

    chunks: tuple[tuple[ChunkKey, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class CloseStreams:
    pass


@dataclass(frozen=True, slots=True)
class Failed:
    """The write failed: cancel every stream; nothing may be committed."""

    error: MemstageError


Instruction = Send | Ask | NeedMap | Resolved | Release | CloseStreams | Failed


@dataclass(slots=True)
class _Chunk:
    key: ChunkKey
    where: str = "unasked"  # unasked | asking | unplaced | <benefactor id> (in flight there)


@dataclass
class WriteState:
    path: str
    query_batch: int = 32  # chunks per deduplication query
    query_bytes: int = 128 * 1024 * 1024  # ... or once this many bytes wait for one
    small_write: int = SMALL_WRITE  # a write of at most this many bytes is sent without asking
    release_batch: int = 16
    known: set[ChunkKey] = field(default_factory=set)  # held by the namespace (e.g. the previous version)
    error: MemstageError | None = None
    finishing: bool = False
    # Results, for the commit and the statistics.
    layout: list[ChunkKey] = field(default_factory=list)
    size: int = 0
    bytes_sent: int = 0
    bytes_deduplicated: int = 0
    locations: dict[ChunkKey, dict[str, bytes]] = field(default_factory=dict)  # key -> benefactor -> receipt
    acked_by: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._next_seq = 0
        self._chunks: dict[int, _Chunk] = {}  # unresolved chunks by seq
        self._unasked: list[int] = []
        self._unasked_bytes = 0
        self._unplaced: list[int] = []
        self._map: list[Placement] = []
        self._rr = 0
        self._asking_map = False
        self._excluded: set[str] = set()
        self._full: set[str] = set()
        self._full_asked: set[str] = set()  # those of them the pending map request asked about again
        self._needed: dict[ChunkKey, int] = {}  # chunks this write sent -> handovers not released
        self._release_on_ack: set[ChunkKey] = set()
        self._releases: dict[ChunkKey, dict[str, bytes]] = {}  # not yet sent: benefactor -> receipt

    # -- queries -------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Chunks handed over and not yet acknowledged or found held."""
        return len(self._chunks)

    def where(self, seq: int) -> str | None:
        chunk = self._chunks.get(seq)
        return chunk.where if chunk else None

    def unresolved(self) -> dict[int, ChunkKey]:
        return {seq: c.key for seq, c in self._chunks.items()}

    def commit_refs(self) -> list[tuple[ChunkKey, list[tuple[str, bytes]]]]:
        """The layout with, per chunk, where this write stored it and the receipts."""
        return [(k, sorted(self.locations.get(k, {}).items())) for k in self.layout]

    # -- events from the file object (writing thread) -------------------------------------------
    def put(self, key: ChunkKey) -> int | None:
        """A chunk handed over: the seq to send it under (the caller then reserves its buffer and
        calls submit), or None when nothing is to be sent (the namespace or this write has it)."""
        self._check()
        if key in self._needed:
            self._needed[key] += 1
            self._release_on_ack.discard(key)
            self.bytes_deduplicated += key.length
            return None
        if key in self._releases:
            # Handed over again before its release went out: keep the stored copy instead.
            self.locations[key] = self._releases.pop(key)
            self.known.add(key)
            self._needed[key] = 1
            self.bytes_deduplicated += key.length
            return None
        if key in self.known:
            self.bytes_deduplicated += key.length
            return None
        self.known.add(key)
        self._needed[key] = 1
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def submit(self, seq: int, key: ChunkKey, ask: bool = True) -> list[Instruction]:
        """The chunk put() numbered has its buffer share and its frames: queue it for a query
        (`ask`), or send it without one."""
        if self.error is not None:
            return [Resolved((seq,), key.length)]
        self._chunks[seq] = _Chunk(key)
        if not ask:
            return self._place([seq])
        self._unasked.append(seq)
        self._unasked_bytes += key.length
        if len(self._unasked) >= self.query_batch or self._unasked_bytes >= self.query_bytes:
            return self.ask()
        return []

    def place_in_layout(self, key: ChunkKey) -> None:
        self._check()
        self.layout.append(key)
        self.size += key.length

    def relayout(self) -> None:
        """The version is laid out anew (a merge over a newer version): what was placed is not,
        and chunks handed over after this are sent on open streams again."""
        self._check()
        self.layout.clear()
        self.size = 0
        self.finishing = False

    def add_held(self, key: ChunkKey) -> None:
        """Reference a chunk the namespace holds, without its bytes."""
        self.place_in_layout(key)
        self.bytes_deduplicated += key.length

    def release(self, key: ChunkKey) -> list[Instruction]:
        """The caller needs one put() of this chunk less."""
        count = self._needed.get(key, 0)
        if count <= 0:
            return []
        if count > 1:
            self._needed[key] = count - 1
            return []
        del self._needed[key]
        if any(c.key == key for c in self._chunks.values()):
            self._release_on_ack.add(key)
            return []
        self._release_stored(key)
        return self.flush_releases() if len(self._releases) >= self.release_batch else []

    def flush_releases(self) -> list[Instruction]:
        if not self._releases or self.error is not None:
            return []
        chunks = tuple((k, tuple(bfs)) for k, bfs in self._releases.items())
        self._releases = {}
        return [Release(chunks)]

    def ask(self, send_unasked: bool = False) -> list[Instruction]:
        """Query what waits for deduplication now (a full batch, settle, finish, memory pressure);
        send_unasked: send it without asking."""
        if not self._unasked or self.error is not None:
            return []
        seqs = tuple(self._unasked)
        self._unasked, self._unasked_bytes = [], 0
        if send_unasked:
            return self._place(list(seqs))
        for seq in seqs:
            self._chunks[seq].where = "asking"
        return [Ask(seqs, tuple(self._chunks[s].key for s in seqs))]

    def finish(self) -> list[Instruction]:
        """No more chunks: query the rest and end the streams once they have acknowledged all."""
        self._check()
        # A small write is sent rather than asked about: its bytes cost less than the round trip.
        out = self.ask(send_unasked=self.size <= self.small_write)
        self.finishing = True
        return [*out, CloseStreams()]

    # -- answers and transport events (any thread, under the I/O layer's lock) -------------------
    def found(self, seqs: Sequence[int], present: Sequence[bool]) -> list[Instruction]:
        held = [s for s, p in zip(seqs, present, strict=True) if p and s in self._chunks]
        out: list[Instruction] = []
        if held:
            nbytes = 0
            for seq in held:
                key = self._chunks.pop(seq).key
                nbytes += key.length
                self.bytes_deduplicated += key.length
                # The namespace's, not this write's: nothing of it to release.
                self._needed.pop(key, None)
                self._release_on_ack.discard(key)
            out.append(Resolved(tuple(held), nbytes))
        return out + self._place([s for s, p in zip(seqs, present, strict=True) if not p and s in self._chunks])

    def map_received(self, placements: Iterable[Placement], full_retried: bool = False) -> list[Instruction]:
        """A new map; full_retried: it was asked for after waiting for space, with the benefactors
        that had refused for fullness allowed again."""
        self._asking_map = False
        if full_retried:  # those that were full when the map was asked for: they may have room now
            self._excluded -= self._full_asked
            self._full -= self._full_asked
        self._map = [p for p in placements if p.id not in self._excluded]
        waiting, self._unplaced = self._unplaced, []
        return self._place(waiting)

    def map_failed(self, error: MemstageError) -> list[Instruction]:
        self._asking_map = False
        return self.fail(error)

    def acked(self, bf: str, seq: int, receipt: bytes) -> list[Instruction]:
        chunk = self._chunks.get(seq)
        if chunk is None or chunk.where != bf:
            return []  # after a failure, or a duplicate
        del self._chunks[seq]
        key = chunk.key
        self.acked_by[bf] = self.acked_by.get(bf, 0) + 1
        self.locations.setdefault(key, {})[bf] = receipt
        self.bytes_sent += key.length
        out: list[Instruction] = [Resolved((seq,), key.length)]
        if key in self._release_on_ack and not any(c.key == key for c in self._chunks.values()):
            self._release_on_ack.discard(key)
            self._release_stored(key)
            if len(self._releases) >= self.release_batch:
                out += self.flush_releases()
        return out

    def stream_ended(self, bf: str, reason: StreamEnd, detail: str, leftover: Iterable[int]) -> list[Instruction]:
        """A benefactor's stream ended; `leftover` are the chunks it had not acknowledged."""
        if self.error is not None:
            return []
        left = [s for s in leftover if (c := self._chunks.get(s)) is not None and c.where == bf]
        if reason is StreamEnd.DONE and not left:
            return []
        if reason is StreamEnd.REJECTED:
            return self.fail(ChunkRejected(f"write of {self.path}: benefactor {bf} rejected a chunk: {detail}"))
        if reason is StreamEnd.FULL and "[EDQUOT] " in detail:  # the namespace's quota, not the benefactor
            return self.fail(QuotaExceeded(f"write of {self.path}: {detail.split('[EDQUOT] ', 1)[1]}"))
        acked = self.acked_by.get(bf, 0)
        if reason is not StreamEnd.FULL and acked:
            return self.fail(DataLost(f"write of {self.path}: benefactor {bf} failed after acknowledging "
                                      f"{acked} chunks ({detail or 'stream ended early'}); nothing was committed, "
                                      "write the file again"))
        self._excluded.add(bf)
        if reason is StreamEnd.FULL:
            self._full.add(bf)
        self._map = [p for p in self._map if p.id not in self._excluded]
        return self._place(left)

    def fail(self, error: MemstageError) -> list[Instruction]:
        if self.error is not None:
            return []
        self.error = error
        seqs = tuple(self._chunks)
        nbytes = sum(c.key.length for c in self._chunks.values())
        self._chunks.clear()
        self._unasked, self._unplaced, self._unasked_bytes = [], [], 0
        self._releases.clear()
        return [Failed(error), Resolved(seqs, nbytes)]

    # -- internals -----------------------------------------------------------------------------
    def _check(self) -> None:
        if self.error is not None:
            raise self.error.with_traceback(None)

    def _release_stored(self, key: ChunkKey) -> None:
        holders = self.locations.pop(key, {})
        self.known.discard(key)  # put again later: sent again (unless the release has not gone out yet)
        if holders:
            self._releases.setdefault(key, {}).update(holders)

    def _place(self, seqs: list[int]) -> list[Instruction]:
        out: list[Instruction] = []
        for seq in seqs:
            if not self._map:
                self._chunks[seq].where = "unplaced"
                self._unplaced.append(seq)
                continue
            placement = self._map[self._rr % len(self._map)]
            self._rr += 1
            self._chunks[seq].where = placement.id
            out.append(Send(placement, seq, self.finishing))
        if self._unplaced and not self._asking_map and self.error is None:
            self._asking_map = True
            self._full_asked = set(self._full)
            out.append(NeedMap(tuple(sorted(self._excluded)), tuple(sorted(self._full))))
        return out
