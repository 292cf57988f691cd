"""The contract every ChunkTransport keeps, checked once for each: a class of tests that each
transport's environment subclasses (the gRPC transport against a real benefactor process, the
in-memory one in this process). A new transport adds a subclass and passes the same tests."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import MiB, free_port

from memstage.chunks import ChunkKey
from memstage.memtransport import MemoryBenefactor, MemoryTransport
from memstage.peers import Peers, no_credentials
from memstage.placement import Placement, StreamEnd
from memstage.streamtransport import StreamTransport
from memstage.transport import ChunkTransport, ChunkUnavailable, GrpcTransport

CAPACITY = 8 * MiB
NAMESPACE = "default"
SESSION = 7


@dataclass
class Env:
    transport: ChunkTransport
    placement: Placement  # a benefactor with CAPACITY bytes, empty
    nowhere: Placement  # an address where no benefactor listens


@dataclass
class Outcome:
    acks: dict[int, bytes] = field(default_factory=dict)
    end: tuple[StreamEnd, str, list[int]] | None = None
    events: list[str] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)

    def wait(self) -> tuple[StreamEnd, str, list[int]]:
        assert self.ended.wait(30), "the stream never ended"
        assert self.end is not None
        return self.end


def _open(env: Env, placement: Placement | None = None) -> tuple[Any, Outcome]:
    out = Outcome()
    lock = threading.Lock()

    def on_ack(seq: int, receipt: bytes) -> None:
        with lock:
            out.acks[seq] = receipt
            out.events.append("ack")

    def on_end(reason: StreamEnd, detail: str, leftover: list[int]) -> None:
        with lock:
            out.events.append("end")
            out.end = (reason, detail, leftover)
        out.ended.set()

    return env.transport.open_stream(placement or env.placement, on_ack, on_end), out


def _send(env: Env, stream: Any, seq: int, data: bytes, key: ChunkKey | None = None) -> bool:
    frames = env.transport.encode(NAMESPACE, SESSION, seq, key or ChunkKey.of(data), memoryview(data))
    return bool(stream.send(seq, frames))


class TransportContract:
    @pytest.fixture
    def env(self) -> Iterator[Env]:
        raise NotImplementedError

    def test_chunks_sent_are_acknowledged_then_the_stream_ends_and_they_read_back(self, env: Env) -> None:
        chunks = {1: os.urandom(MiB), 2: os.urandom(4096), 3: os.urandom(5 * MiB)}  # one of several frames
        stream, out = _open(env)
        for seq, data in chunks.items():
            assert _send(env, stream, seq, data)
        stream.close()
        reason, _, leftover = out.wait()
        assert (reason, leftover) == (StreamEnd.DONE, [])
        assert set(out.acks) == set(chunks) and all(out.acks.values()), "every chunk acknowledged with a receipt"
        assert out.events[-1] == "end" and out.events.count("end") == 1
        for data in chunks.values():
            assert bytes(env.transport.get(env.placement.address, NAMESPACE, ChunkKey.of(data))) == data

    def test_a_chunk_not_held_is_unavailable(self, env: Env) -> None:
        key = ChunkKey.of(os.urandom(100))
        with pytest.raises(ChunkUnavailable):
            env.transport.get(env.placement.address, NAMESPACE, key)
        with pytest.raises(ChunkUnavailable):
            env.transport.get(env.placement.address, "other", key)
        with pytest.raises(ChunkUnavailable):
            env.transport.get_drained(env.placement.address, f"{NAMESPACE}/nothing/here.0", key)

    def test_bytes_that_do_not_match_their_hash_end_the_stream_rejected(self, env: Env) -> None:
        good, bad = os.urandom(4096), os.urandom(4096)
        stream, out = _open(env)
        assert _send(env, stream, 1, good)
        out_of_turn = ChunkKey.of(os.urandom(4096))
        _send(env, stream, 2, bad, key=out_of_turn)
        stream.close()
        reason, _, leftover = out.wait()
        assert reason is StreamEnd.REJECTED and 2 in leftover and 2 not in out.acks
        with pytest.raises(ChunkUnavailable):
            env.transport.get(env.placement.address, NAMESPACE, out_of_turn)

    def test_a_full_benefactor_ends_the_stream_full_and_names_what_it_did_not_take(self, env: Env) -> None:
        stream, out = _open(env)
        sent = []
        for seq in range(1, CAPACITY // MiB + 5):
            if not _send(env, stream, seq, os.urandom(MiB)):
                break  # the stream already ended
            sent.append(seq)
        stream.close()
        reason, _, leftover = out.wait()
        assert reason is StreamEnd.FULL
        assert len(out.acks) <= CAPACITY // MiB and set(out.acks) | set(leftover) == set(sent)
        assert not set(out.acks) & set(leftover)

    def test_nothing_is_sent_after_close_and_an_empty_stream_ends_done(self, env: Env) -> None:
        stream, out = _open(env)
        stream.close()
        assert stream.closed and not _send(env, stream, 1, b"late")
        assert out.wait()[0] is StreamEnd.DONE and not out.acks

    def test_a_stream_to_nowhere_fails_and_names_what_was_sent(self, env: Env) -> None:
        stream, out = _open(env, env.nowhere)
        sent = _send(env, stream, 1, os.urandom(4096))
        stream.close()
        reason, _, leftover = out.wait()
        assert reason is StreamEnd.FAILED and not out.acks
        assert leftover == ([1] if sent else [])
        with pytest.raises(ChunkUnavailable):
            env.transport.get(env.nowhere.address, NAMESPACE, ChunkKey.of(b"x"))

    def test_a_member_handed_over_is_held_and_one_not_matching_its_key_is_refused(self, env: Env) -> None:
        data = os.urandom(100_000)
        key = ChunkKey.of(data)
        with pytest.raises(ChunkUnavailable):
            env.transport.hold(env.placement.address, NAMESPACE, key, 5, os.urandom(100_000))
        env.transport.hold(env.placement.address, NAMESPACE, key, 5, data)
        assert bytes(env.transport.get(env.placement.address, NAMESPACE, key)) == data
        with pytest.raises(ChunkUnavailable):
            env.transport.hold(env.nowhere.address, NAMESPACE, key, 5, data)

    def test_a_cancelled_stream_ends_once_as_failed(self, env: Env) -> None:
        stream, out = _open(env)
        _send(env, stream, 1, os.urandom(4096))
        stream.cancel()
        reason, _, _ = out.wait()
        assert reason in (StreamEnd.FAILED, StreamEnd.DONE)  # the chunk may have been taken first
        assert out.events.count("end") == 1 and stream.closed


class TestGrpcTransport(TransportContract):
    @pytest.fixture
    def env(self, local_cluster: Any) -> Iterator[Env]:
        cluster = local_cluster(benefactors=1, memory=CAPACITY)
        bf = cluster.benefactors[0]
        peers = Peers(timeout=10)
        try:
            yield Env(GrpcTransport(peers), Placement(bf.id, bf.address),
                      Placement("nobody", f"127.0.0.1:{free_port()}"))
        finally:
            peers.close()


class TestMemoryTransport(TransportContract):
    @pytest.fixture
    def env(self) -> Iterator[Env]:
        transport = MemoryTransport({"mem:1": MemoryBenefactor(CAPACITY)})
        yield Env(transport, Placement("bf-1", "mem:1"), Placement("nobody", "mem:2"))


def _stream_env(cluster: Any, secure: bool = False) -> Iterator[Env]:
    from memstage import auth
    from memstage.peers import proof_credentials
    from memstage.tls import load as load_tls

    bf = cluster.benefactors[0]
    credentials = no_credentials
    if secure:  # a holder of the cluster secret, as a benefactor copying from its peers is
        secret = auth.read_secret_file(cluster.secret_file, "--cluster-secret")
        credentials = proof_credentials(auth.RoleProof(secret, auth.benefactor_role("bf-contract")))
    tls = load_tls(**{k.removeprefix("tls_"): v for k, v in cluster.client_tls.items()}) if cluster.tls else None
    peers = Peers(timeout=10, tls=tls, credentials=credentials)
    transport = StreamTransport(peers)
    try:
        yield Env(transport, Placement(bf.id, bf.address), Placement("nobody", f"127.0.0.1:{free_port()}"))
    finally:
        transport.close()
        peers.close()


class TestStreamTransportTcp(TransportContract):
    @pytest.fixture
    def env(self, local_cluster: Any) -> Iterator[Env]:
        cluster = local_cluster(benefactors=1, memory=CAPACITY)
        yield from _stream_env(cluster)


class TestStreamTransportTls(TransportContract):
    """Over TCP with mutual TLS and the cluster secret, as a secured deployment runs."""

    @pytest.fixture
    def env(self, local_cluster: Any) -> Iterator[Env]:
        cluster = local_cluster(benefactors=0, secure=True, tls=True)
        cluster.add_benefactor(CAPACITY)
        yield from _stream_env(cluster, secure=True)


class TestStreamTransportUnix(TransportContract):
    @pytest.fixture
    def env(self, local_cluster: Any, tmp_path: Any) -> Iterator[Env]:
        cluster = local_cluster(benefactors=0)
        cluster.add_benefactor(CAPACITY, "--socket-dir", str(tmp_path / "sockets"), "--data-listen", "off")
        yield from _stream_env(cluster)
