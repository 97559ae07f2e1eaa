#!/usr/bin/env python3
"""A TCP event receiver that can stall: it accepts connections but reads
nothing until told to, like a SIEM collector that stopped keeping up.

argv: PORT OUTFILE. Commands on stdin, one answer line each:
  read     start reading every connection, now and later -> ok
  report   wait until every connection is closed, write the complete lines
           received (a cut last line per connection is left out) to OUTFILE
           -> the number of lines
"""
import socket
import sys
import threading

port, outfile = int(sys.argv[1]), sys.argv[2]
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
# A small receive window, so a stalled reader blocks the sender soon.
srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
srv.bind(("127.0.0.1", port))
srv.listen(16)
conns, readers, lines = [], [], []
reading = threading.Event()
lock = threading.Lock()


def read_all(c):
    data = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    c.close()
    complete = data[: data.rfind(b"\n") + 1] if b"\n" in data else b""
    with lock:
        lines.extend(complete.decode().splitlines())


def start(c):
    t = threading.Thread(target=read_all, args=(c,), daemon=True)
    t.start()
    readers.append(t)


def accept_loop():
    while True:
        c, _ = srv.accept()
        with lock:
            conns.append(c)
            if reading.is_set():
                start(c)


threading.Thread(target=accept_loop, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "read":
        with lock:
            reading.set()
            for c in conns:
                start(c)
        print("ok", flush=True)
    elif cmd == "report":
        for t in list(readers):
            t.join()
        with open(outfile, "w") as f:
            f.write("".join(l + "\n" for l in lines))
        print(len(lines), flush=True)
