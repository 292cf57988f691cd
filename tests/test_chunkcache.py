"""The client's cache of chunks it sent, by content key: bounded, least recently used out first,
immutable bytes only."""

from __future__ import annotations

from memstage.chunks import ChunkKey
from memstage.client.chunkcache import ChunkCache


def chunk(n: int, size: int = 100) -> tuple[ChunkKey, bytes]:
    data = bytes([n]) * size
    return ChunkKey.of(data), data


def test_it_keeps_at_most_its_capacity_dropping_the_least_recently_used():
    cache = ChunkCache(300)
    (k1, d1), (k2, d2), (k3, d3), (k4, d4) = (chunk(i) for i in range(4))
    for k, d in ((k1, d1), (k2, d2), (k3, d3)):
        cache.put(k, d)
    assert cache.get(k1) == d1  # used: k2 is now the oldest
    cache.put(k4, d4)
    assert cache.get(k2) is None
    assert (cache.get(k1), cache.get(k3), cache.get(k4)) == (d1, d3, d4)


def test_it_keeps_only_immutable_bytes_of_the_keys_length():
    cache = ChunkCache(1000)
    key, data = chunk(7)
    cache.put(key, bytearray(data))  # type: ignore[arg-type]  # a buffer someone may change
    cache.put(key, data[:50])  # not the chunk the key names
    assert cache.get(key) is None
    big, big_data = chunk(8, 2000)
    cache.put(big, big_data)  # larger than the whole cache
    assert cache.get(big) is None
    cache.put(key, data)
    assert cache.get(key) == data
