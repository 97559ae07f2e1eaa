#!/usr/bin/env python3
"""Client side of the proxy tests: the real `ollama` and `openai` Python clients,
and raw TLS connections for what no well-behaved client sends.

Environment: PROXY_URL (https://127.0.0.1:PORT), CA (the server CA file).
Each subcommand prints one JSON document on stdout.

  ollama TOKEN                 chat/generate (streaming and not), list, embed
  ollama-cert CERT KEY         list and chat with a client certificate only
  openai TOKEN                 chat completions (streaming and not), models
  raw                          stdin: JSON list of {"name", "data" (UTF-8)}; each
                               is sent on a fresh TLS connection; reports the
                               status line and whether the proxy closed it
  ttfb URL TOKEN N             median time from request to first body byte
                               (connection already open), over N runs
  cancel TOKEN LINES           reads LINES lines of a long stream, then hangs up
  slow-headers SECS            sends half a request head, waits SECS, reports
                               whether the proxy closed the connection
  slow-body TOKEN SECS         sends headers and half a body, waits SECS
  idle SECS                    completes TLS, sends nothing, reports when the proxy closed
  stop-reading TOKEN SECS      starts a huge stream, reads nothing for SECS, then
                               reports whether the proxy had closed the connection
"""
import json
import os
import re
import socket
import ssl
import statistics
import sys
import time
import urllib.parse

URL = os.environ.get("PROXY_URL", "")
CA = os.environ.get("CA", "")


def out(obj):
    print(json.dumps(obj), flush=True)


def attempt(fn):
    try:
        return {"ok": fn()}
    except Exception as e:  # the test asserts on the error text
        status = getattr(e, "status_code", None) or getattr(getattr(e, "response", None), "status_code", None)
        return {"error": type(e).__name__, "status": status, "text": str(e)[:300]}


def ollama_suite(token):
    import ollama
    c = ollama.Client(host=URL, headers={"Authorization": "Bearer " + token}, verify=CA)
    msgs = [{"role": "user", "content": "hi"}]
    return {
        "chat": attempt(lambda: c.chat(model="llama3", messages=msgs).message.content),
        "chat_stream": attempt(lambda: [p.message.content for p in c.chat(model="llama3", messages=msgs, stream=True)]),
        "generate": attempt(lambda: c.generate(model="llama3.1:8b", prompt="hi").response),
        "generate_stream": attempt(lambda: [p.response for p in c.generate(model="llama3.1:8b", prompt="hi", stream=True)]),
        "generate_capped": attempt(lambda: c.generate(model="llama3", prompt="hi", options={"num_predict": 1000}).response),
        "list": attempt(lambda: sorted(m.model for m in c.list().models)),
        "embed": attempt(lambda: c.embed(model="llama3", input="hi").embeddings),
        "denied_model": attempt(lambda: c.chat(model="mistral", messages=msgs).message.content),
        "denied_pull": attempt(lambda: c.pull("mistral").status),
    }


def ollama_cert(cert, key):
    import ollama
    # httpx 0.28 takes client certificates through an SSL context (`cert=` is
    # deprecated and ignored next to a CA path).
    ctx = ssl.create_default_context(cafile=CA)
    ctx.load_cert_chain(cert, key)
    c = ollama.Client(host=URL, verify=ctx)
    return {
        "list": attempt(lambda: sorted(m.model for m in c.list().models)),
        "chat": attempt(lambda: c.chat(model="llama3", messages=[{"role": "user", "content": "hi"}]).message.content),
    }


def openai_suite(token):
    import httpx
    import openai
    c = openai.OpenAI(base_url=URL + "/v1", api_key=token, http_client=httpx.Client(verify=CA), max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]

    def stream():
        parts = []
        for chunk in c.chat.completions.create(model="llama3", messages=msgs, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        return parts
    return {
        "chat": attempt(lambda: c.chat.completions.create(model="llama3", messages=msgs).choices[0].message.content),
        "chat_stream": attempt(stream),
        "models": attempt(lambda: sorted(m.id for m in c.models.list())),
        "denied_model": attempt(lambda: c.chat.completions.create(model="secret-model", messages=msgs).id),
    }


def tls_connect(url=None):
    u = urllib.parse.urlsplit(url or URL)
    raw = socket.create_connection((u.hostname, u.port), timeout=10)
    if u.scheme == "http":
        return raw
    ctx = ssl.create_default_context(cafile=CA)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(raw, server_hostname=u.hostname)


def read_response(s, timeout=3.0):
    """Reads until the proxy closes or goes quiet; returns (data, closed)."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except (socket.timeout, TimeoutError):
        return data, False
    except (ConnectionResetError, ssl.SSLError, OSError):
        return data, True


def raw(cases):
    results = []
    for case in cases:
        s = tls_connect()
        try:
            s.sendall(case["data"].encode("utf-8"))
        except (ssl.SSLError, OSError):
            pass  # the proxy may answer and close before it has read everything
        data, closed = read_response(s, case.get("wait", 2.0))
        s.close()
        # A response may follow the previous body without a line break.
        statuses = [m.decode() for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]
        results.append({"name": case["name"], "statuses": statuses, "closed": closed,
                        "head": data[:200].decode("latin-1")})
    return results


def ttfb(url, token, n):
    body = json.dumps({"model": "llama3", "prompt": "hi"})
    u = urllib.parse.urlsplit(url)
    times = []
    for _ in range(n):
        s = tls_connect(url)
        req = ("POST /api/generate HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
               "Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
               % (u.netloc, token, len(body), body))
        t0 = time.perf_counter()
        s.sendall(req.encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        rest = buf.split(b"\r\n\r\n", 1)[1]
        while not rest:  # the head may come before the first body byte
            rest = s.recv(65536)
        times.append((time.perf_counter() - t0) * 1000)
        s.close()
    return {"median_ms": statistics.median(times), "all_ms": times}


def cancel(token, lines):
    body = json.dumps({"model": "long", "prompt": "hi"})
    s = tls_connect()
    s.sendall(("POST /api/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Content-Length: %d\r\n\r\n%s" % (token, len(body), body)).encode())
    buf = b""
    while buf.count(b'"done"') < lines:
        buf += s.recv(65536)
    s.close()
    return {"read_lines": buf.count(b'"done"'), "closed_at": time.time()}


def slow_headers(secs):
    s = tls_connect()
    s.sendall(b"GET /api/version HTTP/1.1\r\nHost: x\r\n")
    t0 = time.time()
    data, closed = read_response(s, secs)
    return {"closed": closed, "after_s": time.time() - t0, "data": data[:100].decode("latin-1")}


def slow_body(token, secs):
    s = tls_connect()
    s.sendall(("POST /api/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Content-Length: 100\r\n\r\n{\"model\":" % token).encode())
    t0 = time.time()
    data, closed = read_response(s, secs)
    status = data.split(b" ")[1].decode() if data.startswith(b"HTTP/") else None
    return {"closed": closed, "status": status, "after_s": time.time() - t0}


def idle(secs):
    s = tls_connect()
    t0 = time.time()
    data, closed = read_response(s, secs)
    return {"closed": closed, "after_s": time.time() - t0}


def stop_reading(token, secs):
    u = urllib.parse.urlsplit(URL)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(10)
    raw.connect((u.hostname, u.port))
    ctx = ssl.create_default_context(cafile=CA)
    ctx.set_alpn_protocols(["http/1.1"])
    s = ctx.wrap_socket(raw, server_hostname=u.hostname)
    body = json.dumps({"model": "huge", "prompt": "hi"})
    s.sendall(("POST /api/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Content-Length: %d\r\n\r\n%s" % (token, len(body), body)).encode())
    time.sleep(secs)
    t0 = time.time()
    data, closed = read_response(s, 5)
    return {"closed": closed, "read_bytes": len(data), "drain_s": time.time() - t0}


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ollama":
        out(ollama_suite(args[0]))
    elif cmd == "ollama-cert":
        out(ollama_cert(args[0], args[1]))
    elif cmd == "openai":
        out(openai_suite(args[0]))
    elif cmd == "raw":
        out(raw(json.load(sys.stdin)))
    elif cmd == "ttfb":
        out(ttfb(args[0], args[1], int(args[2])))
    elif cmd == "cancel":
        out(cancel(args[0], int(args[1])))
    elif cmd == "slow-headers":
        out(slow_headers(float(args[0])))
    elif cmd == "slow-body":
        out(slow_body(args[0], float(args[1])))
    elif cmd == "idle":
        out(idle(float(args[0])))
    elif cmd == "stop-reading":
        out(stop_reading(args[0], float(args[1])))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
