"""A gRPC server (grpcio, cleartext HTTP/2) for tests/ebpf.rs (issue 14).

Methods take and return raw bytes (no generated stubs). The first byte of
a request picks the outcome:
  /shop.Orders/Get   (unary):  0 OK, 1 INTERNAL, 2 NOT_FOUND; byte 2 of
                               the request is the delay in ms; byte 3, if
                               any, the size of the reply in KiB (0: a
                               short one).
  /shop.Orders/List  (server streaming): 5 messages, then OK, or (1)
                               UNAVAILABLE after them.
  /shop.Orders/Pay   (unary): always UNAVAILABLE after 5 ms.
Writes the bound port to argv[1].
"""
import os
import sys
import time
from concurrent import futures

import grpc


def get(req, ctx):
    time.sleep(req[1] / 1000.0 if len(req) > 1 else 0.01)
    if req[:1] == b"\x01":
        ctx.abort(grpc.StatusCode.INTERNAL, "boom")
    if req[:1] == b"\x02":
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such order")
    if len(req) > 2 and req[2]:
        return b"r" * (req[2] * 1024)
    return b"order " * 8


def list_(req, ctx):
    for i in range(5):
        time.sleep(0.002)
        yield b"item %d" % i
    if req[:1] == b"\x01":
        ctx.abort(grpc.StatusCode.UNAVAILABLE, "gone")


def pay(req, ctx):
    time.sleep(0.005)
    ctx.abort(grpc.StatusCode.UNAVAILABLE, "payments are down")


def main():
    handler = grpc.method_handlers_generic_handler(
        "shop.Orders",
        {
            "Get": grpc.unary_unary_rpc_method_handler(get),
            "List": grpc.unary_stream_rpc_method_handler(list_),
            "Pay": grpc.unary_unary_rpc_method_handler(pay),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=64),
        options=[("grpc.max_concurrent_streams", 256)],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, sys.argv[1])
    server.wait_for_termination()


if __name__ == "__main__":
    main()
