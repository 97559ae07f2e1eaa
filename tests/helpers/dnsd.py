#!/usr/bin/env python3
"""An authoritative DNS server for the lab, on UDP and TCP port 53 of ADDR.

Usage: dnsd.py ADDR. Reads commands on stdin, one answer line each:
  set NAME TYPE TTL VALUE[,VALUE...]   the records of NAME (TYPE: A, AAAA, CNAME) -> ok
  clear NAME                           NAME has no records (NXDOMAIN) -> ok
  asked                                questions received so far, as NAME/TYPE,... -> list | none
Names without records get NXDOMAIN; a question for a CNAME'd name gets the
CNAME and the target's records.
"""
import socket
import struct
import sys
import threading

sys.path.insert(0, __import__("os").path.dirname(__file__))
import dnswire  # noqa: E402

TYPES = {"A": dnswire.A, "AAAA": dnswire.AAAA, "CNAME": dnswire.CNAME}
zone = {}  # name -> [(type, ttl, value)]
asked = []
lock = threading.Lock()


def answer(msg):
    _, _, name, qtype, _ = dnswire.parse_question(msg)
    with lock:
        asked.append("%s/%d" % (name, qtype))
        records, owner = [], name
        for _ in range(8):
            rrs = zone.get(owner, [])
            cname = [r for r in rrs if r[0] == dnswire.CNAME]
            if cname:
                records.append((owner, dnswire.CNAME, cname[0][1], cname[0][2]))
                owner = cname[0][2]
                continue
            records += [(owner, t, ttl, v) for t, ttl, v in rrs if t == qtype]
            break
        known = name in zone
    return dnswire.response(msg, records, rcode=0 if known else 3)


def serve_udp(sock):
    while True:
        msg, peer = sock.recvfrom(4096)
        try:
            sock.sendto(answer(msg), peer)
        except (ValueError, IndexError, struct.error):
            pass


def serve_tcp(listener):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()


def serve_conn(conn):
    with conn:
        while True:
            head = conn.recv(2, socket.MSG_WAITALL)
            if len(head) < 2:
                return
            msg = conn.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
            reply = answer(msg)
            conn.sendall(struct.pack("!H", len(reply)) + reply)


def main():
    addr = sys.argv[1]
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    udp = socket.socket(fam, socket.SOCK_DGRAM)
    udp.bind((addr, 53))
    tcp = socket.socket(fam, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((addr, 53))
    tcp.listen(16)
    threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
    threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        with lock:
            if words[0] == "set":
                name, rtype, ttl, values = words[1].lower(), TYPES[words[2]], int(words[3]), words[4]
                zone[name] = [(rtype, ttl, v) for v in values.split(",")]
                out = "ok"
            elif words[0] == "clear":
                zone.pop(words[1].lower(), None)
                out = "ok"
            elif words[0] == "asked":
                out = ",".join(asked) or "none"
            else:
                out = "error:unknown-command"
        print(out, flush=True)


if __name__ == "__main__":
    main()
