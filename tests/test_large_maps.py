"""Files with many chunks: their version maps and commits exceed gRPC's default message limit."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.timeout(120)

CHUNK = 32 * 1024
CHUNKS = 100_000  # ~100 bytes per chunk in a version map: ~10 MB, over the 4 MiB of a data frame


def test_a_file_of_100k_chunks_commits_and_reads(local_cluster):
    cluster = local_cluster(benefactors=1)
    client = cluster.client(chunk_size=CHUNK)
    block = bytes(CHUNK)  # identical chunks: stored once, listed CHUNKS times
    t0 = time.monotonic()
    with client.open("/many.bin", "wb") as f:
        for _ in range(CHUNKS // 32):
            f.write(block * 32)
    assert client.info("/many.bin")["size"] == CHUNK * CHUNKS
    reader = client.reader("/many.bin")
    assert len(reader.keys) == CHUNKS
    assert reader.read_range(CHUNK * CHUNKS - 10, CHUNK * CHUNKS + 10) == bytes(10)
    assert time.monotonic() - t0 < 100


def test_an_oversized_message_is_named_as_such_not_as_a_full_deployment(local_cluster):
    import grpc

    from memstage.errors import InvalidArgument, from_rpc_error
    from memstage.proto import benefactor_pb2, benefactor_pb2_grpc, common_pb2
    from memstage.rpc import channel

    cluster = local_cluster(benefactors=1)
    keys = [common_pb2.ChunkKey(hash=bytes(16), length=i) for i in range(300_000)]  # ~6 MB
    with channel(cluster.benefactors[0].address) as ch, pytest.raises(grpc.RpcError) as info:
        benefactor_pb2_grpc.BenefactorStub(ch).Has(benefactor_pb2.ChunkList(namespace="default", keys=keys))
    error = from_rpc_error(info.value, "Has")
    assert isinstance(error, InvalidArgument) and "size limit" in str(error)
