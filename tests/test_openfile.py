"""OpenFile, the data path behind the FUSE mount, against a real cluster and a plain bytearray model:
bounded memory while writing, chunks read back after they were handed over, truncate and growth."""

from __future__ import annotations

import random

import pytest
from conftest import random_bytes

from memstage.client.fusefile import OpenFile

pytestmark = pytest.mark.timeout(120)

CHUNK = 64 * 1024


def _read_all(f: OpenFile) -> bytes:
    return f.read(f.size + 1, 0)


def test_sequential_writes_hand_chunks_over_as_they_fill(local_cluster):
    cluster = local_cluster(benefactors=2)
    client = cluster.client(chunk_size=CHUNK, buffer_size=4 * CHUNK)
    data = random_bytes(40 * CHUNK + 123)
    f = OpenFile(client, "/seq.bin", None, truncate=True)
    most = 0
    for pos in range(0, len(data), 24 * 1024):  # writes that straddle chunk boundaries
        f.write(data[pos : pos + 24 * 1024], pos)
        most = max(most, len(f._slots))
    assert most <= 2, "a sequential writer keeps at most the chunk it is in and the one before"
    assert len(f._handed) >= 38
    assert _read_all(f) == data  # through the handle: chunks read back from benefactors
    result = f.commit()
    assert result is not None and result.size == len(data)
    assert client.cat_file("/seq.bin") == data


def test_whole_chunks_skip_the_slots(local_cluster):
    cluster = local_cluster(benefactors=2)
    client = cluster.client(chunk_size=CHUNK)
    data = random_bytes(8 * CHUNK)
    f = OpenFile(client, "/whole.bin", None, truncate=True)
    for pos in range(0, len(data), CHUNK):
        f.write(memoryview(data)[pos : pos + CHUNK], pos)
        assert not f._slots
    f.commit()
    assert client.cat_file("/whole.bin") == data


def test_random_writes_truncate_and_growth_match_a_model(local_cluster):
    cluster = local_cluster(benefactors=2)
    client = cluster.client(chunk_size=CHUNK, buffer_size=4 * CHUNK)  # max_slots is 4: most slots get handed over
    rng = random.Random(7)
    model = bytearray(random_bytes(30 * CHUNK + 999))
    with client.open("/rand.bin", "wb") as w:
        w.write(bytes(model))
    f = OpenFile(client, "/rand.bin", client.reader("/rand.bin"), truncate=False)
    for step in range(300):
        action = rng.random()
        if action < 0.8:
            offset = rng.randrange(0, len(model) + 3 * CHUNK)
            piece = random_bytes(rng.choice([1, 100, 4096, CHUNK - 7, CHUNK, 2 * CHUNK + 5]))
            f.write(piece, offset)
            if offset > len(model):
                model.extend(bytes(offset - len(model)))
            model[offset : offset + len(piece)] = piece
        elif action < 0.9:
            length = rng.randrange(0, len(model) + 2 * CHUNK)
            f.truncate(length)
            del model[length:]
            model.extend(bytes(length - len(model)))
        else:
            offset = rng.randrange(0, len(model) + 1)
            assert f.read(3 * CHUNK, offset) == bytes(model[offset : offset + 3 * CHUNK]), f"step {step}"
        assert len(f._slots) <= f.max_slots
        assert f.size == len(model)
    assert _read_all(f) == bytes(model)
    f.commit()
    assert client.cat_file("/rand.bin") == bytes(model)
    # The handle goes on from the version it committed.
    f.write(b"tail", len(model))
    f.commit()
    assert client.cat_file("/rand.bin") == bytes(model) + b"tail"


def test_an_unchanged_handle_commits_nothing_and_rewrites_are_deduplicated(local_cluster):
    cluster = local_cluster(benefactors=2)
    client = cluster.client(chunk_size=CHUNK)
    data = random_bytes(6 * CHUNK)
    with client.open("/same.bin", "wb") as w:
        w.write(data)
    f = OpenFile(client, "/same.bin", client.reader("/same.bin"), truncate=False)
    assert f.commit() is None
    f.write(data[CHUNK : 2 * CHUNK], CHUNK)  # the same bytes again
    result = f.commit()
    assert result is not None and result.stats.bytes_sent == 0
    assert [v["version"] for v in client.versions("/same.bin")] == [1, 2]


def test_a_benefactor_lost_under_a_handle_fails_it_and_keeps_the_previous_version(local_cluster):
    from memstage.errors import DataLost

    cluster = local_cluster(benefactors=2)
    client = cluster.client(chunk_size=CHUNK)
    old = random_bytes(4 * CHUNK)
    with client.open("/lost.bin", "wb") as w:
        w.write(old)
    f = OpenFile(client, "/lost.bin", client.reader("/lost.bin"), truncate=True)
    new = random_bytes(20 * CHUNK)
    f.write(new, 0)  # handed over at once: whole chunks, spread over both benefactors
    f._writer.settle()  # every chunk acknowledged, so the kill below loses some of them
    cluster.benefactors[0].kill()
    with pytest.raises(DataLost):
        f.write(b"more", len(new))
        f.commit()
    with pytest.raises(DataLost):  # the handle stays failed: nothing half-written can be committed
        f.commit()
    assert [v["version"] for v in client.versions("/lost.bin")] == [1]
