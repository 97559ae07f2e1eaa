"""Holds N streaming generations open through a TLS endpoint (a benchmark load).

Usage: hold_streams.py URL CACERT TOKEN N

Opens N connections (at most 64 handshakes at a time), sends a streamed
`POST /api/generate` on each, waits for its first NDJSON line, then prints
`ready N` and keeps every stream open (reading slowly) until stdin closes.
Exits 1 if a stream fails before that.
"""
import asyncio
import json
import ssl
import sys
from urllib.parse import urlparse


async def one(host, port, ctx, token, gate, ready):
    async with gate:
        r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost")
    body = json.dumps({"model": "long", "prompt": "hi", "stream": True}).encode()
    w.write(
        b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
        + token.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace").splitlines()[0])
    await r.readuntil(b"\n")  # chunk size line
    await r.readuntil(b"\n")  # the first NDJSON line
    ready.append(1)
    while True:
        if not await r.read(4096):
            return
        await asyncio.sleep(0.5)


async def main():
    url, cacert, token, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    u = urlparse(url)
    ctx = ssl.create_default_context(cafile=cacert)
    gate = asyncio.Semaphore(64)
    ready = []
    tasks = [asyncio.create_task(one(u.hostname, u.port, ctx, token, gate, ready)) for _ in range(n)]
    while len(ready) < n:
        done = [t for t in tasks if t.done() and t.exception()]
        if done:
            print("failed: %r" % done[0].exception(), flush=True)
            sys.exit(1)
        await asyncio.sleep(0.1)
    print("ready %d" % n, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
