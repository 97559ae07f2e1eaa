#!/usr/bin/env python3
"""Hostile clients for the proxy's resilience tests. Each command prints one JSON
object. PROXY_URL (https://HOST:PORT) and CA (the server CA file) come from
the environment.

  silent N SECS            N TLS connections (ALPN h2) that never send a byte after
                           the handshake; {"closed": [seconds until the proxy closed
                           each], "open": n still open after SECS}
  partial SECS             TLS + half an HTTP/2 preface, then nothing; {"closed_after": s}
  tcpsilent N SECS         N TCP connections that never start TLS; like `silent`
  deepjson TOKEN DEPTH     POST /api/chat with arrays nested DEPTH deep; {"status": s, "seconds": t}
  zerowindow SECS          HTTP/2 with an initial window of 0: asks for /api/tags
                           unauthenticated, takes the 401's headers, never opens the
                           window for its body; {"status": 401, "closed_after": s}
  flood USER SECS CONC     CONC threads sending wrong basic passwords for USER on
                           keep-alive connections for SECS; {"statuses": {code: n}}
  bigjson TOKEN N MIB MODEL  N concurrent POST /api/chat, each a MIB MiB body of
                           small nested arrays naming MODEL; {"statuses": {code: n}}
  malformed h1|h2          a request the HTTP layer refuses: an HTTP/1.1 head with a
                           header line without a colon, or HTTP/2 DATA on stream 0;
                           {"answer": first bytes the proxy sent back}
  trickle TOKEN N SECS      N chunked POST /api/chat bodies, a byte every 0.3 s (below the
                           body timeout), for SECS; {"open": streams the proxy kept}
  tokens TOKEN N [SRC]     N requests with bearer TOKEN, each on a new connection
                           (from SRC); {"statuses": [code or error name, ...]}
  login USER PASSWORD [SRC]  one request with basic auth (from source address SRC);
                           {"status": s, "seconds": t, "retry_after": h}
"""
import base64
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
import http.client
from urllib.parse import urlparse

URL = urlparse(os.environ["PROXY_URL"])
CA = os.environ["CA"]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def tls(alpn):
    ctx = ssl.create_default_context(cafile=CA)
    ctx.set_alpn_protocols(alpn)
    raw = socket.create_connection((URL.hostname, URL.port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=URL.hostname)


def closed_within(s, secs):
    """Seconds until the peer closed `s` (reads and discards), or None."""
    start = time.monotonic()
    s.settimeout(0.2)
    while time.monotonic() - start < secs:
        try:
            if not s.recv(65536):
                return round(time.monotonic() - start, 2)
        except socket.timeout:
            continue
        except (ssl.SSLError, OSError):
            return round(time.monotonic() - start, 2)
    return None


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def read_frame(s):
    head = b""
    while len(head) < 9:
        chunk = s.recv(9 - len(head))
        if not chunk:
            raise EOFError
        head += chunk
    length = int.from_bytes(head[:3], "big")
    payload = b""
    while len(payload) < length:
        chunk = s.recv(length - len(payload))
        if not chunk:
            raise EOFError
        payload += chunk
    return head[3], head[4], payload


def literal(index, value):
    """HPACK literal without indexing, name from the static table, no Huffman."""
    v = value.encode()
    assert index < 15 and len(v) < 127
    return bytes([index]) + bytes([len(v)]) + v


def huffman_digits(data):
    """Decodes an HPACK Huffman string of digits (RFC 7541 appendix B: 0-2 are
    the 5-bit codes 00000-00010, 3-9 the 6-bit codes 011001-011111)."""
    bits = "".join(f"{b:08b}" for b in data)
    out, i = "", 0
    while i + 5 <= len(bits):
        if bits[i : i + 5] in ("00000", "00001", "00010"):
            out += str(int(bits[i : i + 5], 2))
            i += 5
        elif i + 6 <= len(bits) and bits[i : i + 3] == "011" and bits[i : i + 6] >= "011001":
            out += str(int(bits[i : i + 6], 2) - 0b011001 + 3)
            i += 6
        else:
            break  # the padding (a prefix of EOS: all ones)
    return out


def zerowindow(secs):
    s = tls(["h2"])
    # SETTINGS: INITIAL_WINDOW_SIZE (4) = 0.
    s.sendall(PREFACE + frame(4, 0, 0, struct.pack(">HI", 4, 0)))
    # :method GET (2), :scheme https (7), :path, :authority; END_STREAM|END_HEADERS.
    block = b"\x82\x87" + literal(4, "/api/tags") + literal(1, URL.hostname)
    s.sendall(frame(1, 0x5, 1, block))
    status = None
    start = time.monotonic()
    s.settimeout(secs)
    try:
        while status is None:
            kind, flags, payload = read_frame(s)
            if kind == 4 and not flags & 1:
                s.sendall(frame(4, 1, 0))  # ACK the server's SETTINGS
            if kind == 1:
                # The first header of a response is :status, usually indexed
                # (0x88 = 200, 0x8d = 404 ...) or a literal with name index 8.
                b0 = payload[0]
                static = {0x88: 200, 0x89: 204, 0x8a: 206, 0x8b: 304, 0x8c: 400, 0x8d: 404, 0x8e: 500}
                if b0 in static:
                    status = static[b0]
                elif b0 & 0x0F == 8:
                    n = payload[1] & 0x7F
                    raw = payload[2 : 2 + n]
                    status = int(huffman_digits(raw) if payload[1] & 0x80 else raw)
                else:
                    status = -1
    except (EOFError, socket.timeout, OSError):
        pass
    left = secs - (time.monotonic() - start)
    return {"status": status, "closed_after": closed_within(s, max(left, 0.1))}


def flood(user, secs, conc):
    statuses = {}
    lock = threading.Lock()
    cred = base64.b64encode(f"{user}:wrong-password".encode()).decode()
    ctx = ssl.create_default_context(cafile=CA)
    end = time.monotonic() + secs

    def worker():
        conn = None
        while time.monotonic() < end:
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection(URL.hostname, URL.port, context=ctx, timeout=10)
                conn.request("GET", "/api/tags", headers={"Authorization": "Basic " + cred})
                r = conn.getresponse()
                r.read()
                code = r.status
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # counted, the flood goes on
                code = type(e).__name__
                conn = None
            with lock:
                statuses[str(code)] = statuses.get(str(code), 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"statuses": statuses}


def bigjson(token, n, mib, model):
    head = json.dumps({"model": model, "messages": []})[:-1] + ', "x": ['
    unit = "[[],[0]],"
    count = (mib * 1024 * 1024 - len(head)) // len(unit)
    body = (head + unit * count + "[]]}").encode()
    ctx = ssl.create_default_context(cafile=CA)
    statuses = {}
    lock = threading.Lock()

    def one():
        try:
            conn = http.client.HTTPSConnection(URL.hostname, URL.port, context=ctx, timeout=60)
            conn.request("POST", "/api/chat", body=body, headers={
                "Authorization": "Bearer " + token, "Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            code = str(r.status)
        except Exception as e:
            code = type(e).__name__
        with lock:
            statuses[code] = statuses.get(code, 0) + 1

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"statuses": statuses, "body_bytes": len(body)}


def malformed(kind):
    if kind == "h1":
        s = tls(["http/1.1"])
        s.sendall(b"GET /api/tags HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n")
    else:
        s = tls(["h2"])
        s.sendall(PREFACE + frame(4, 0, 0) + frame(0, 0, 0, b"oops"))
    s.settimeout(3)
    answer = b""
    try:
        while len(answer) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    except (socket.timeout, OSError):
        pass
    return {"answer": answer[:64].decode("latin-1")}


def trickle(token, n, secs):
    socks = []
    for _ in range(n):
        s = tls(["http/1.1"])
        s.sendall(("POST /api/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
                   "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n").encode())
        socks.append(s)
    end = time.monotonic() + secs
    open_ = list(socks)
    while time.monotonic() < end and open_:
        for s in list(open_):
            try:
                s.sendall(b"1\r\n \r\n")
            except OSError:
                open_.remove(s)
        time.sleep(0.3)
    for s in socks:
        s.close()
    return {"open": len(open_)}


def tokens(token, n, source=None):
    ctx = ssl.create_default_context(cafile=CA)
    out = []
    for _ in range(n):
        try:
            conn = http.client.HTTPSConnection(URL.hostname, URL.port, context=ctx, timeout=3,
                                               source_address=(source, 0) if source else None)
            conn.request("GET", "/api/tags", headers={"Authorization": "Bearer " + token})
            r = conn.getresponse()
            r.read()
            out.append(r.status)
            conn.close()
        except Exception as e:
            out.append(type(e).__name__)
    return {"statuses": out}


def login(user, password, source=None):
    ctx = ssl.create_default_context(cafile=CA)
    conn = http.client.HTTPSConnection(URL.hostname, URL.port, context=ctx, timeout=30,
                                       source_address=(source, 0) if source else None)
    conn.connect()
    cred = base64.b64encode(f"{user}:{password}".encode()).decode()
    t = time.monotonic()
    conn.request("GET", "/api/tags", headers={"Authorization": "Basic " + cred})
    r = conn.getresponse()
    r.read()
    return {"status": r.status, "seconds": round(time.monotonic() - t, 3), "retry_after": r.getheader("retry-after")}


def main(argv):
    cmd = argv[0]
    if cmd == "silent":
        n, secs = int(argv[1]), float(argv[2])
        socks = [tls(["h2"]) for _ in range(n)]
        results = [None] * n

        def watch(i):
            results[i] = closed_within(socks[i], secs)

        threads = [threading.Thread(target=watch, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"closed": sorted(r for r in results if r is not None), "open": results.count(None)}
    if cmd == "tcpsilent":
        n, secs = int(argv[1]), float(argv[2])
        socks = [socket.create_connection((URL.hostname, URL.port), timeout=5) for _ in range(n)]
        results = [closed_within(x, secs) for x in socks[:1]]
        results += [closed_within(x, 0.5) for x in socks[1:]]
        return {"closed": sorted(r for r in results if r is not None), "open": results.count(None)}
    if cmd == "deepjson":
        depth = int(argv[2])
        body = ('{"model":"llama3","messages":' + "[" * depth + "]" * depth + "}").encode()
        ctx = ssl.create_default_context(cafile=CA)
        conn = http.client.HTTPSConnection(URL.hostname, URL.port, context=ctx, timeout=30)
        t = time.monotonic()
        conn.request("POST", "/api/chat", body=body, headers={
            "Authorization": "Bearer " + argv[1], "Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        return {"status": r.status, "seconds": round(time.monotonic() - t, 3)}
    if cmd == "partial":
        s = tls(["h2"])
        s.sendall(PREFACE[:10])
        return {"closed_after": closed_within(s, float(argv[1]))}
    if cmd == "zerowindow":
        return zerowindow(float(argv[1]))
    if cmd == "flood":
        return flood(argv[1], float(argv[2]), int(argv[3]))
    if cmd == "bigjson":
        return bigjson(argv[1], int(argv[2]), int(argv[3]), argv[4])
    if cmd == "malformed":
        return malformed(argv[1])
    if cmd == "trickle":
        return trickle(argv[1], int(argv[2]), float(argv[3]))
    if cmd == "tokens":
        return tokens(argv[1], int(argv[2]), argv[3] if len(argv) > 3 else None)
    if cmd == "login":
        return login(argv[1], argv[2], argv[3] if len(argv) > 3 else None)
    raise SystemExit("unknown command " + cmd)


print(json.dumps(main(sys.argv[1:])), flush=True)
