#!/usr/bin/env python3
"""A network prober the lab starts inside a network namespace and cgroup.

Reads one command per line on stdin and answers one word per line on stdout:
  connect HOST PORT [TIMEOUT [fresh]]  TCP connect (fresh: from a port bound first)
                               -> connected | refused | denied | timeout | error:ERRNO
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
  connectfrom SRC HOST PORT    TCP connect from source address SRC -> connected | ...
  autolisten                   TCP listen() without bind() (the kernel picks the port) -> PORT
  rthdr HOST PORT SEG tcp|udp  IPv6 socket with a type-4 routing header via SEG (IPV6_RTHDR),
                               then TCP connect or UDP sendto to HOST -> connected | ok | timeout | denied
  ping HOST                    ICMP echo socket (SOCK_DGRAM) sendto -> reply | timeout | denied | unavailable
  mptcp HOST PORT SECS         MPTCP connect, then send for SECS seconds -> connected | ...
  mptcplisten HOST PORT        MPTCP listen, accept and read in the background -> ok | ...
  sniff IFACE                  count the IP packets arriving on IFACE, by destination -> ok
  seen ADDR                    packets seen to ADDR since sniff -> N
  dns SERVER NAME [udp|tcp|udpsend] [AAAA]
                               a DNS question to SERVER:53 (udp: a connected socket;
                               udpsend: sendto/recvfrom, the reply's source checked)
                               -> ADDR,... | empty | refused | nxdomain | servfail | timeout | denied | wrongsource
  capture IFACE PORT           record the first TCP SYN to PORT seen on IFACE -> ok
  captured                     that SYN's SRC SPORT DST DPORT and its Community ID (computed
                               here, from the packet) -> "SRC SPORT DST DPORT 1:..." | none
  resolve NAME                 getaddrinfo (the C library's resolver, /etc/resolv.conf)
                               -> ADDR,... | error:GAI_ERROR
"""
import errno
import socket
import sys
import threading
import os

# Emulated guests (`cargo xtask vm`) are slower: every wait scales by this.
PATIENCE = float(os.environ.get("WARDEN_TEST_PATIENCE", "1"))


def wait(secs):
    return secs * PATIENCE

listeners = []
held = []
received = {}
seen = {}
IPPROTO_MPTCP = 262


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


def drain_loop(s):
    """Accepts and reads until closed (MPTCP listener)."""
    while True:
        try:
            c, _ = s.accept()
        except OSError:
            return
        threading.Thread(target=lambda c=c: [None for _ in iter(lambda: c.recv(65536), b"")], daemon=True).start()


def sniff_loop(s):
    while True:
        try:
            frame, addr = s.recvfrom(65535)
        except OSError:
            return
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        kind = frame[12:14]
        if kind == b"\x86\xdd" and len(frame) >= 54:
            dst = socket.inet_ntop(socket.AF_INET6, frame[38:54])
        elif kind == b"\x08\x00" and len(frame) >= 34:
            dst = socket.inet_ntop(socket.AF_INET, frame[30:34])
        else:
            continue
        seen[dst] = seen.get(dst, 0) + 1


captures = []


def capture_loop(s, port):
    import struct
    while True:
        try:
            frame, addr = s.recvfrom(65535)
        except OSError:
            return
        if addr[2] == socket.PACKET_OUTGOING:
            continue  # on loopback each packet is seen twice
        kind, ip = frame[12:14], frame[14:]
        if kind == b"\x08\x00" and ip[9] == 6:
            fam, src, dst, tcp = socket.AF_INET, ip[12:16], ip[16:20], ip[(ip[0] & 15) * 4:]
        elif kind == b"\x86\xdd" and ip[6] == 6:
            fam, src, dst, tcp = socket.AF_INET6, ip[8:24], ip[24:40], ip[40:]
        else:
            continue
        sport, dport = struct.unpack("!HH", tcp[:4])
        flags = tcp[13]
        if dport == port and flags & 0x02 and not flags & 0x10 and not captures:
            captures.append((fam, src, sport, dst, dport))
            return


def community_id(fam, src, sport, dst, dport, proto=6):
    """Community ID v1 (seed 0), as Corelight's spec defines it."""
    import base64
    import hashlib
    import struct
    if (src, sport) > (dst, dport):
        src, sport, dst, dport = dst, dport, src, sport
    data = struct.pack("!H", 0) + src + dst + struct.pack("!BBHH", proto, 0, sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def srh_via(segment):
    """A type-4 (segment) routing header with one hop: the kernel puts the
    destination in segment 0 and sends the packet to SEGMENT first."""
    head = bytes([0, 4, 4, 1, 1, 0, 0, 0])  # hdrlen 4 (2 segments), type 4, left 1, last 1
    return head + bytes(16) + socket.inet_pton(socket.AF_INET6, segment)


def dns_question(server, name, how, qtype):
    sys.path.insert(0, os.path.dirname(__file__))
    import dnswire
    import struct
    qid, msg = dnswire.query(name, dnswire.AAAA if qtype == "AAAA" else dnswire.A)
    kind = socket.SOCK_STREAM if how == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family(server), kind)
    s.settimeout(wait(2.0))
    try:
        if how == "tcp":
            s.connect((server, 53))
            s.sendall(struct.pack("!H", len(msg)) + msg)
            n = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
            reply = s.recv(n, socket.MSG_WAITALL)
        elif how == "udpsend":
            s.sendto(msg, (server, 53))
            reply, src = s.recvfrom(65535)
            # What a resolver library checks: the answer comes from the server asked.
            want = socket.inet_pton(family(server), server)
            if socket.inet_pton(family(server), src[0]) != want or src[1] != 53:
                return "wrongsource"
        else:
            s.connect((server, 53))
            s.send(msg)
            reply = s.recv(65535)
        rcode, records = dnswire.answers(reply)
        if rcode != "ok":
            return rcode
        addrs = [v for _, t, _, v in records if t in (dnswire.A, dnswire.AAAA)]
        return ",".join(addrs) or "empty"
    finally:
        s.close()


def handle(words):
    cmd = words[0]
    if cmd == "sniff":
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        s.bind((words[1], 0))
        listeners.append(s)
        threading.Thread(target=sniff_loop, args=(s,), daemon=True).start()
        return "ok"
    if cmd == "seen":
        return str(seen.get(socket.inet_ntop(family(words[1]), socket.inet_pton(family(words[1]), words[1])), 0))
    if cmd == "autolisten":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.listen(16)
        listeners.append(s)
        threading.Thread(target=accept_loop, args=(s,), daemon=True).start()
        return str(s.getsockname()[1])
    if cmd == "ping":
        v6 = ":" in words[1]
        try:
            s = socket.socket(family(words[1]), socket.SOCK_DGRAM,
                              socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
        except OSError:
            return "unavailable"
        s.settimeout(wait(0.5))
        try:
            s.sendto(bytes([128 if v6 else 8, 0, 0, 0, 0, 0, 0, 1]) + b"exfiltrated", (words[1], 0))
            s.recv(2048)
            return "reply"
        finally:
            s.close()
    if cmd == "capture":
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        s.bind((words[1], 0))
        listeners.append(s)
        threading.Thread(target=capture_loop, args=(s, int(words[2])), daemon=True).start()
        return "ok"
    if cmd == "captured":
        if not captures:
            return "none"
        fam, src, sport, dst, dport = captures[0]
        return "%s %d %s %d %s" % (socket.inet_ntop(fam, src), sport, socket.inet_ntop(fam, dst),
                                   dport, community_id(fam, src, sport, dst, dport))
    if cmd == "dns":
        return dns_question(words[1], words[2], words[3] if len(words) > 3 else "udp",
                            words[4] if len(words) > 4 else "A")
    if cmd == "resolve":
        try:
            infos = socket.getaddrinfo(words[1], None, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            return "error:%s" % (errno.errorcode.get(e.errno, str(e.errno)) if e.errno > 0 else e.args[1].replace(" ", "-"))
        return ",".join(sorted({i[4][0] for i in infos}))
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
    if cmd == "connectfrom":
        src, host, port = words[1], words[2], int(words[3])
        s = socket.socket(family(host), socket.SOCK_STREAM)
        s.settimeout(wait(0.5))
        try:
            s.bind((src, 0))
            s.connect((host, port))
            return "connected"
        finally:
            s.close()
    host, port = words[1], int(words[2])
    if cmd == "connectn":
        import json
        import time
        verdicts, lat = {}, []
        for _ in range(int(words[3])):
            s = socket.socket(family(host), socket.SOCK_STREAM)
            s.settimeout(wait(1.0))
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
        s.settimeout(wait(1.0))
        s.connect((host, port))
        held.append(s)
        return "connected"
    if cmd == "rthdr":
        kind = socket.SOCK_STREAM if words[4] == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET6, kind)
        s.settimeout(wait(0.5))
        try:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh_via(words[3]))
            if kind == socket.SOCK_STREAM:
                s.connect((host, port))
                return "connected"
            s.sendto(b"exfiltrated", (host, port))
            return "ok"
        finally:
            s.close()
    if cmd == "mptcp":
        import time
        s = socket.socket(family(host), socket.SOCK_STREAM, IPPROTO_MPTCP)
        s.settimeout(wait(1.0))
        try:
            s.connect((host, port))
            end = time.time() + float(words[3])
            while time.time() < end:
                s.send(b"x" * 1000)
                time.sleep(0.05)
            return "connected"
        finally:
            s.close()
    if cmd == "mptcplisten":
        s = socket.socket(family(host), socket.SOCK_STREAM, IPPROTO_MPTCP)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(16)
        listeners.append(s)
        threading.Thread(target=drain_loop, args=(s,), daemon=True).start()
        return "ok"
    if cmd == "connect":
        s = socket.socket(family(host), socket.SOCK_STREAM)
        s.settimeout(wait(float(words[3]) if len(words) > 3 else 1.0))
        if len(words) > 4 and words[4] == "fresh":
            # A port of its own before connecting: connect()'s own choice may
            # reuse a 4-tuple whose server side is still in TIME_WAIT, which
            # can cost that attempt a second SYN (and a packet filter a
            # second record).
            s.bind(("::" if family(host) == socket.AF_INET6 else "0.0.0.0", 0))
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
