"""A gRPC client (grpcio's asyncio API) for tests/ebpf.rs (issue 14):
drives /shop.Orders/* of tests/ebpf/grpc_server.py over ONE channel (one
HTTP/2 connection carrying many concurrent streams) and prints what it saw
as JSON: the calls, their status codes and latencies (µs).

usage: grpc_client.py PORT MODE N CONCURRENCY
  MODE get:  unary calls; call i asks for INTERNAL if i % 10 == 0,
             NOT_FOUND if i % 10 == 1, else OK, after 100 ms if
             i % 10 == 9, else 40 ms (long against the client's own
             overhead, so its timings compare with the server's).
  MODE list: server-streaming calls; every 5th ends UNAVAILABLE.
  MODE pay:  unary calls to Pay (all UNAVAILABLE).
  MODE big:  unary Get calls, outcomes as in MODE get after 5 ms; every
             other call (even i) sends a 96 KiB request and asks for a
             96 KiB reply, so large DATA frames share reads and writes with
             other streams' HEADERS and trailers.
  MODE hold: one OK Get, then prints "ready" and waits for a line on stdin
             before the N calls of MODE get (the channel, one HTTP/2
             connection, was open before).
"""
import asyncio
import json
import sys
import time

import grpc


async def main():
    port, mode, n, conc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    async with grpc.aio.insecure_channel("127.0.0.1:" + port) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        get = channel.unary_unary("/shop.Orders/Get")
        list_ = channel.unary_stream("/shop.Orders/List")
        pay = channel.unary_unary("/shop.Orders/Pay")
        results = []
        work = list(range(n))

        async def one(i):
            t = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if mode == "big":
                    outcome = 1 if i % 10 == 0 else 2 if i % 10 == 1 else 0
                    kib = 96 if i % 2 == 0 else 0
                    await get(bytes([outcome, 5, kib]) + b"x" * (kib * 1024), timeout=30)
                elif mode == "get":
                    outcome = 1 if i % 10 == 0 else 2 if i % 10 == 1 else 0
                    delay = 100 if i % 10 == 9 else 40
                    await get(bytes([outcome, delay]), timeout=30)
                elif mode == "list":
                    async for _ in list_(bytes([1 if i % 5 == 0 else 0]), timeout=30):
                        pass
                else:
                    await pay(b"\x00", timeout=30)
            except grpc.RpcError as e:
                code = e.code()
            results.append((code.value[0], int((time.perf_counter() - t) * 1e6)))

        async def worker():
            while work:
                await one(work.pop())

        if mode == "hold":
            await get(bytes([0, 1]), timeout=30)
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            mode = "get"
        await asyncio.gather(*(worker() for _ in range(conc)))
    codes = {}
    for c, _ in results:
        codes[str(c)] = codes.get(str(c), 0) + 1
    print(json.dumps({"calls": len(results), "codes": codes, "latencies_us": [u for _, u in results]}))


if __name__ == "__main__":
    asyncio.run(main())
