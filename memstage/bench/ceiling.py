"""The transport ceiling: a bare grpcio client-streaming transfer, no memstage code on the path.

One server process counts the bytes of a client stream of raw 1 MiB messages (no protobuf, the
cheapest grpcio can do); each client process streams its bytes as slices of one buffer, as any
real client of a buffer must. Same channel options and malloc tuning as memstage's data path.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent import futures

import grpc

from memstage.frames import identity
from memstage.rpc import CHANNEL_OPTIONS, SERVER_OPTIONS
from memstage.tuning import keep_large_buffers

_METHOD = "/memstage.bench.Ceiling/Push"


def _push(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    total = 0
    for message in requests:
        total += len(message)
    return str(total).encode()


def serve() -> None:
    """Run the sink until stdin closes; prints its address first."""
    keep_large_buffers()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=SERVER_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        "memstage.bench.Ceiling",
        {"Push": grpc.stream_unary_rpc_method_handler(_push, request_deserializer=identity,
                                                       response_serializer=identity)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"127.0.0.1:{port}", flush=True)
    sys.stdin.read()
    server.stop(0)


def push(address: str, data: bytes, message_size: int) -> float:
    """Stream `data` to the sink; returns the seconds from the first message to the server's reply."""
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        call = ch.stream_unary(_METHOD, request_serializer=identity, response_deserializer=identity)
        view = memoryview(data)

        def messages() -> Iterator[bytes]:
            for start in range(0, len(view), message_size):
                yield bytes(view[start : start + message_size])

        t0 = time.perf_counter()
        received = int(call(messages()))
        elapsed = time.perf_counter() - t0
    if received != len(data):
        raise RuntimeError(f"ceiling sink received {received} of {len(data)} bytes")
    return elapsed


if __name__ == "__main__":
    serve()
