"""The DNS wire format, as much as the lab's DNS helpers need (RFC 1035):
questions for A and AAAA, answers with A, AAAA and CNAME records."""
import random
import socket
import struct

A, CNAME, AAAA = 1, 5, 28
RCODES = {0: "ok", 2: "servfail", 3: "nxdomain", 5: "refused"}


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def decode_name(msg, off):
    """The name at `off` (compression followed) and the offset after it."""
    labels, end = [], None
    while True:
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = off + 2
            off = struct.unpack("!H", msg[off:off + 2])[0] & 0x3FFF
            continue
        off += 1
        if n == 0:
            break
        labels.append(msg[off:off + n].decode())
        off += n
    return ".".join(labels).lower(), (end if end is not None else off)


def query(name, qtype=A, qid=None):
    qid = random.randrange(65536) if qid is None else qid
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    return qid, header + encode_name(name) + struct.pack("!HH", qtype, 1)


def parse_question(msg):
    """(id, flags, name, qtype, end of the question)."""
    qid, flags, qd = struct.unpack("!HHH", msg[:6])
    if qd != 1:
        raise ValueError("one question expected")
    name, off = decode_name(msg, 12)
    qtype = struct.unpack("!H", msg[off:off + 2])[0]
    return qid, flags, name, qtype, off + 4


def response(msg, records, rcode=0):
    """The answer to question `msg`: `records` are (name, type, ttl, value)."""
    qid, flags, _, _, qend = parse_question(msg)
    header = struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100) | rcode, 1, len(records), 0, 0)
    body = msg[12:qend]
    for name, rtype, ttl, value in records:
        if rtype == A:
            data = socket.inet_pton(socket.AF_INET, value)
        elif rtype == AAAA:
            data = socket.inet_pton(socket.AF_INET6, value)
        else:
            data = encode_name(value)
        body += encode_name(name) + struct.pack("!HHIH", rtype, 1, ttl, len(data)) + data
    return header + body


def answers(msg):
    """(rcode word, [(name, type, ttl, value)]) of a response."""
    _, flags, _, an, _, _ = struct.unpack("!HHHHHH", msg[:12])
    _, off = decode_name(msg, 12)
    off += 4
    out = []
    for _ in range(an):
        name, off = decode_name(msg, off)
        rtype, _, ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        data = msg[off:off + rdlen]
        if rtype == A:
            value = socket.inet_ntop(socket.AF_INET, data)
        elif rtype == AAAA:
            value = socket.inet_ntop(socket.AF_INET6, data)
        elif rtype == CNAME:
            value = decode_name(msg, off)[0]
        else:
            value = data.hex()
        out.append((name, rtype, ttl, value))
        off += rdlen
    return RCODES.get(flags & 0xF, "rcode%d" % (flags & 0xF)), out
