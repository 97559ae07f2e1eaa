#!/usr/bin/env python3
"""A stand-in for the Ollama server (which cannot be installed in CI), speaking
its real API shapes: NDJSON streams on /api/*, OpenAI-style SSE on /v1/*,
`"stream": false` JSON, model listings, and Ollama's Host check (403 unless
Host is a loopback/private IP, localhost or *.localhost/.local/.internal).

It also sends a `Server` and CORS headers (so the proxy's header policy is
seen), and logs every request it receives as one JSON line to --log: method,
target, headers, parsed body, and how the response ended (`completed` or
`client gone` when a write failed mid-stream).

Usage: fake_ollama.py --port 0 --log FILE [--host 127.0.0.1] [--delay-ms 20] [--first-byte-ms 0]
Prints `listening PORT` on stdout once ready.
"""
import argparse
import ipaddress
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODELS = ["llama3:latest", "llama3.1:8b", "mistral:latest", "nomic-embed-text:latest", "secret-model:latest"]
WORDS = ["Hello", " from", " the", " stand", "-in", " Ollama", "."]
LOCK = threading.Lock()


def host_ok(host):
    # Ollama's allowedHost: loopback/private/unspecified IPs, localhost, the
    # hostname, and names ending in .localhost/.local/.internal.
    if not host:
        return True
    h = host
    if h.startswith("["):
        h = h[1:h.find("]")]
    elif h.count(":") == 1:
        h = h.split(":")[0]
    try:
        ip = ipaddress.ip_address(h)
        return ip.is_loopback or ip.is_private or ip.is_unspecified
    except ValueError:
        pass
    h = h.lower()
    return h == "localhost" or h.endswith((".localhost", ".local", ".internal"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ollama-standin/0.12"
    # Go's net/http sets TCP_NODELAY on every connection: without it, a kept
    # connection's response waits for the client's delayed ACK (40 ms) between
    # the head and the body.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def record(self, body, outcome):
        entry = {
            "method": self.command,
            "target": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "outcome": outcome,
            "time": time.time(),
        }
        with LOCK, open(self.server.log, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return {"raw_bytes": len(raw)}

    def send(self, status, obj, ctype="application/json; charset=utf-8"):
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def stream(self, ctype, chunks):
        """Sends chunks (bytes) with chunked encoding, each flushed at once."""
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.flush()
        try:
            for i, c in enumerate(chunks):
                if i == 0 or len(chunks) != 1001:  # "huge" streams as fast as it can
                    time.sleep((self.server.first_byte_ms if i == 0 else self.server.delay_ms) / 1000)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(c), c))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return "completed"
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return "client gone"

    def handle_any(self):
        body = self.body() if self.command in ("POST", "DELETE", "PUT") else None
        if not host_ok(self.headers.get("Host")):
            self.send(403, b"", "text/plain")
            self.record(body, "host refused")
            return
        outcome = self.route(body)
        self.record(body, outcome)

    do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = handle_any

    def words(self, body, key_limit):
        n = len(WORDS)
        limit = key_limit(body or {})
        if isinstance(limit, int) and limit > 0:
            n = min(n, limit)
        if (body or {}).get("model") == "long":
            return WORDS * 40
        if (body or {}).get("model") == "huge":
            return ["x" * 65536] * 1000  # 64 MiB: more than every buffer on the way
        return WORDS[:n]

    def route(self, body):
        p, m = self.path, self.command
        model = (body or {}).get("model") or (body or {}).get("name")
        if p == "/" and m in ("GET", "HEAD"):
            self.send(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif p == "/api/version":
            self.send(200, {"version": "0.12.0"})
        elif p == "/api/tags":
            self.send(200, {"models": [{"name": n, "model": n, "size": 1, "digest": "0" * 64,
                                        "details": {"format": "gguf"}} for n in MODELS]})
        elif p == "/api/ps":
            self.send(200, {"models": [{"name": n, "model": n, "size": 1} for n in MODELS[:3]]})
        elif p == "/v1/models":
            self.send(200, {"object": "list", "data": [{"id": n, "object": "model", "created": 0,
                                                        "owned_by": "library"} for n in MODELS]})
        elif p == "/api/show":
            self.send(200, {"modelfile": "FROM " + str(model), "details": {"format": "gguf"}})
        elif p == "/api/generate" or p == "/api/chat":
            words = self.words(body, lambda b: (b.get("options") or {}).get("num_predict"))
            chat = p == "/api/chat"

            def line(w, done):
                o = {"model": model, "created_at": "2026-01-01T00:00:00Z", "done": done}
                if chat:
                    o["message"] = {"role": "assistant", "content": w}
                else:
                    o["response"] = w
                if done:
                    o.update({"done_reason": "stop", "total_duration": 1, "eval_count": len(words)})
                return o
            if body.get("stream", True):
                chunks = [json.dumps(line(w, False)).encode() + b"\n" for w in words]
                chunks.append(json.dumps(line("", True)).encode() + b"\n")
                return self.stream("application/x-ndjson", chunks)
            self.send(200, line("".join(words), True))
        elif p in ("/api/embed", "/api/embeddings"):
            self.send(200, {"model": model, "embeddings": [[0.1, 0.2, 0.3]]})
        elif p == "/v1/chat/completions":
            words = self.words(body, lambda b: b.get("max_tokens") or b.get("max_completion_tokens"))
            if body.get("stream"):
                def ev(delta, finish):
                    o = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
                         "system_fingerprint": "fp_ollama",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                    return b"data: " + json.dumps(o).encode() + b"\n\n"
                chunks = [ev({"role": "assistant", "content": w}, None) for w in words]
                chunks += [ev({"role": "assistant", "content": ""}, "stop"), b"data: [DONE]\n\n"]
                return self.stream("text/event-stream", chunks)
            self.send(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
                            "system_fingerprint": "fp_ollama",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)},
                                         "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 1, "completion_tokens": len(words), "total_tokens": 1 + len(words)}})
        elif p in ("/api/pull", "/api/push", "/api/create", "/api/copy") or p.startswith("/api/blobs/"):
            self.send(200, {"status": "success"})
        elif p == "/api/delete":
            self.send(200, b"", "text/plain")
        else:
            self.send(404, b"404 page not found", "text/plain")
            return "not found"
        return "completed"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--log", required=True)
    ap.add_argument("--delay-ms", type=float, default=5)
    ap.add_argument("--first-byte-ms", type=float, default=0)
    a = ap.parse_args()
    # Go's listen backlog (SOMAXCONN), not socketserver's 5: a full backlog
    # would delay connects by a SYN retransmit.
    ThreadingHTTPServer.request_queue_size = 4096
    srv = ThreadingHTTPServer((a.host, a.port), Handler)
    srv.daemon_threads = True
    srv.log, srv.delay_ms, srv.first_byte_ms = a.log, a.delay_ms, a.first_byte_ms
    print("listening %d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
