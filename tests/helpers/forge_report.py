#!/usr/bin/env python3
"""A forger inside the proxy's cgroup: the parent process reports, as the proxy
would, the socket cookie of a connection its child makes to the protected port.
The daemon must not attribute the child's connection to the named identity.

Usage: forge_report.py DAEMON_SOCKET PORT IDENTITY
Prints the child's pid.
"""
import json
import os
import socket
import struct
import sys
import time

SO_COOKIE = 57
sock_path, port, identity = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cookie_r, cookie_w = os.pipe()
go_r, go_w = os.pipe()
child = os.fork()
if child == 0:
    s = socket.socket()
    cookie = struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]
    os.write(cookie_w, b"%d\n" % cookie)
    os.read(go_r, 1)
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        pass
    time.sleep(0.5)
    os._exit(0)
cookie = int(os.read(cookie_r, 64).decode())
d = socket.socket(socket.AF_UNIX)
d.connect(sock_path)
time.sleep(0.2)  # let the daemon accept the session
report = {"cookie": cookie, "request_id": "forged", "identity": identity, "model": None,
          "client": "10.9.9.9:1", "listener": "127.0.0.1:8443", "local": "127.0.0.1:1",
          "upstream": "127.0.0.1:%d" % port, "time_ms": int(time.time() * 1000)}
d.sendall((json.dumps(report) + "\n").encode())
time.sleep(0.2)  # the report reaches the daemon before the connect
os.write(go_w, b"x")
os.waitpid(child, 0)
print(child)
