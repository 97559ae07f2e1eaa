#!/usr/bin/env python3
"""Per-packet cost of warden's XDP program vs an empty XDP program, measured in
the same run with BPF_PROG_TEST_RUN (the kernel runs each program `repeat` times
on the frame and reports the mean duration).

usage: xdp_cost.py PROG_ID [REPEAT] [ROUNDS]
PROG_ID is the id of a loaded xdp_ingress (e.g. from `bpftool link show pinned
/sys/fs/bpf/ollama-warden/links/xdp-...`), whose policy protects port 11434 and
allows 10.88.1.0/24 and fd00:88:1::/64.
"""
import ctypes
import json
import statistics
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF = 321
BPF_PROG_LOAD, BPF_PROG_TEST_RUN, BPF_PROG_GET_FD_BY_ID = 5, 10, 13
BPF_PROG_TYPE_XDP = 6


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 256)
    fd = libc.syscall(SYS_BPF, cmd, buf, 256)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "bpf cmd %d" % cmd)
    return fd, buf.raw


def empty_xdp():
    insns = struct.pack("<BBhi", 0xB7, 0, 0, 2) + struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 = XDP_PASS; exit
    ibuf = ctypes.create_string_buffer(insns)
    lic = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("<IIQQIIQ", BPF_PROG_TYPE_XDP, 2, ctypes.addressof(ibuf), ctypes.addressof(lic), 0, 0, 0)
    return bpf(BPF_PROG_LOAD, attr)[0]


def fd_by_id(prog_id):
    return bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<III", prog_id, 0, 0))[0]


def run(fd, frame, repeat):
    data = ctypes.create_string_buffer(frame)
    out = ctypes.create_string_buffer(len(frame) + 512)
    attr = struct.pack("<IIIIQQII", fd, 0, len(frame), len(out), ctypes.addressof(data), ctypes.addressof(out), repeat, 0)
    _, raw = bpf(BPF_PROG_TEST_RUN, attr)
    retval, duration = struct.unpack_from("<I", raw, 4)[0], struct.unpack_from("<I", raw, 36)[0]
    return retval, duration


def eth(t):
    return bytes([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]) + struct.pack(">H", t)


def tcp(dport):
    return struct.pack(">HHIIBBHHH", 40000, dport, 1, 0, 0x50, 0x02, 65535, 0, 0)


def ipv4(src, l4):
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, 6, 0, bytes(src), bytes([10, 88, 1, 1])) + l4


def ipv6(subnet, l4):
    src = bytes([0xFD, 0, 0, 0x88, 0, subnet] + [0] * 9 + [2])
    dst = bytes([0xFD, 0, 0, 0x88, 0, 1] + [0] * 9 + [1])
    return struct.pack(">IHBB", 0x60000000, len(l4), 6, 64) + src + dst + l4


FRAMES = {
    "ipv4 allowed (protected port)": eth(0x0800) + ipv4([10, 88, 1, 2], tcp(11434)),
    "ipv4 denied (protected port)": eth(0x0800) + ipv4([10, 88, 2, 2], tcp(11434)),
    "ipv4 unprotected port": eth(0x0800) + ipv4([10, 88, 2, 2], tcp(80)),
    "ipv6 allowed (protected port)": eth(0x86DD) + ipv6(1, tcp(11434)),
    "ipv6 denied (protected port)": eth(0x86DD) + ipv6(2, tcp(11434)),
}


def main():
    prog_id = int(sys.argv[1])
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    warden, empty = fd_by_id(prog_id), empty_xdp()
    rows = []
    for name, frame in FRAMES.items():
        w, e, verdict = [], [], None
        for _ in range(rounds):
            verdict, d = run(warden, frame, repeat)
            w.append(d)
            e.append(run(empty, frame, repeat)[1])
        rows.append({
            "frame": name, "verdict": {1: "drop", 2: "pass"}.get(verdict, verdict),
            "warden_ns": statistics.median(w), "empty_ns": statistics.median(e),
            "ratio": round(statistics.median(w) / max(statistics.median(e), 1), 2),
            "warden_spread_ns": [min(w), max(w)], "empty_spread_ns": [min(e), max(e)],
        })
    print(json.dumps({"repeat": repeat, "rounds": rounds, "rows": rows}, indent=1))


main()
