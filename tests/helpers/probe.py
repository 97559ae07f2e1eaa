#!/usr/bin/env python3
"""A network prober the lab starts inside a network namespace and cgroup.

Reads one command per line on stdin and answers one word per line on stdout:
  connect HOST PORT [TIMEOUT]  TCP connect  -> connected | refused | denied | timeout | error:ERRNO
  hold HOST PORT               TCP connect, kept open -> connected | ...
  connectn HOST PORT N         N TCP connects -> JSON {"verdicts": {word: count}, "p50_us", "p99_us"}
  udpsend HOST PORT            unconnected UDP sendto -> ok | denied | error:ERRNO
  udpconnect HOST PORT         UDP connect() -> ok | denied | error:ERRNO
  bind HOST PORT               TCP bind, then close -> ok | denied | inuse | error:ERRNO
  listen HOST PORT             TCP listen, accept in the background -> ok | denied | inuse | error:ERRNO
  udplisten HOST PORT          UDP bind, count datagrams -> ok | ...
  received PORT                datagrams received on a udplisten port -> N
  close                        close every listener -> ok
  pid                          -> the prober's pid
"""
import errno
import socket
import sys
import threading

listeners = []
held = []
received = {}


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def classify(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    code = e.errno
    if code in (errno.EPERM, errno.EACCES):
        return "denied"
    if code == errno.ECONNREFUSED:
        return "refused"
    if code == errno.EADDRINUSE:
        return "inuse"
    if code in (errno.ETIMEDOUT, errno.EHOSTUNREACH):
        return "timeout"
    return "error:%s" % errno.errorcode.get(code, code)


def accept_loop(s):
    while True:
        try:
            c, _ = s.accept()
            c.close()
        except OSError:
            return


def udp_loop(s, port):
    while True:
        try:
            s.recvfrom(2048)
            received[port] = received.get(port, 0) + 1
        except OSError:
            return


def handle(words):
    cmd = words[0]
    if cmd == "pid":
        import os
        return str(os.getpid())
    if cmd == "close":
        for s in listeners:
            # shutdown() wakes the thread blocked in accept(); close() alone would
            # leave the socket listening until that call returns.
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        listeners.clear()
        return "ok"
    if cmd == "received":
        return str(received.get(int(words[1]), 0))
    host, port = words[1], int(words[2])
    if cmd == "connectn":
        import json
        import time
        verdicts, lat = {}, []
        for _ in range(int(words[3])):
            s = socket.socket(family(host), socket.SOCK_STREAM)
            s.settimeout(1.0)
            t = time.perf_counter()
            try:
                s.connect((host, port))
                v = "connected"
            except (OSError, socket.timeout) as e:
                v = classify(e)
            lat.append(time.perf_counter() - t)
            s.close()
            verdicts[v] = verdicts.get(v, 0) + 1
        lat.sort()
        pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6, 1)
        return json.dumps({"verdicts": verdicts, "p50_us": pct(0.5), "p99_us": pct(0.99)})
    if cmd == "hold":
        # Connects and keeps the connection open (for socket-table readers).
        s = socket.socket(family(host), socket.SOCK_STREAM)
        s.settimeout(1.0)
        s.connect((host, port))
        held.append(s)
        return "connected"
    if cmd == "connect":
        s = socket.socket(family(host), socket.SOCK_STREAM)
        s.settimeout(float(words[3]) if len(words) > 3 else 1.0)
        try:
            s.connect((host, port))
            return "connected"
        finally:
            s.close()
    if cmd in ("udpsend", "udpconnect"):
        s = socket.socket(family(host), socket.SOCK_DGRAM)
        try:
            if cmd == "udpconnect":
                s.connect((host, port))
                s.send(b"probe")
            else:
                s.sendto(b"probe", (host, port))
            return "ok"
        finally:
            s.close()
    if cmd in ("bind", "listen", "udplisten"):
        kind = socket.SOCK_DGRAM if cmd == "udplisten" else socket.SOCK_STREAM
        s = socket.socket(family(host), kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            s.close()
            raise
        if cmd == "bind":
            s.close()
            return "ok"
        listeners.append(s)
        if cmd == "listen":
            s.listen(128)
            threading.Thread(target=accept_loop, args=(s,), daemon=True).start()
        else:
            threading.Thread(target=udp_loop, args=(s, port), daemon=True).start()
        return "ok"
    return "error:unknown-command"


for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    try:
        answer = handle(words)
    except (OSError, socket.timeout) as e:
        answer = classify(e)
    sys.stdout.write(answer + "\n")
    sys.stdout.flush()
