#!/usr/bin/env python3
"""Checks a `warden evidence` bundle as an auditor would, with nothing of
warden's: Python's tarfile, coreutils' `sha256sum -c` and the `minisign`
tool. Usage: check_evidence.py BUNDLE.tar PUBKEY_FILE OUT_DIR

Passes (exit 0, prints "ok: N parts") only if every member is a plain file
with a relative name, SHA256SUMS lists every member but itself and its
signature (and nothing else), every digest matches, and the signature over
SHA256SUMS verifies with the key. Otherwise prints why and exits 1."""
import os
import subprocess
import sys
import tarfile

bundle, pubkey, out = sys.argv[1:4]
SELF = {"SHA256SUMS", "SHA256SUMS.minisig"}


def fail(why):
    print(f"FAIL: {why}")
    sys.exit(1)


with tarfile.open(bundle) as t:
    members = t.getmembers()
    names = [m.name for m in members]
    for m in members:
        if not m.isfile():
            fail(f"{m.name}: not a plain file")
        if m.name.startswith("/") or ".." in m.name.split("/"):
            fail(f"{m.name}: not a relative name inside the bundle")
    if len(set(names)) != len(names):
        fail("a member appears twice")
    for m in members:  # plain files with safe names (checked above)
        path = os.path.join(out, m.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(t.extractfile(m).read())

if not SELF <= set(names):
    fail(f"SHA256SUMS or its signature is missing: {sorted(names)}")
with open(os.path.join(out, "SHA256SUMS")) as f:
    listed = [line.rstrip("\n").split("  ", 1)[1] for line in f if line.strip()]
unlisted = set(names) - SELF - set(listed)
if unlisted:
    fail(f"not in SHA256SUMS: {sorted(unlisted)}")
missing = set(listed) - set(names)
if missing:
    fail(f"listed but not in the bundle: {sorted(missing)}")

sums = subprocess.run(["sha256sum", "--strict", "--quiet", "-c", "SHA256SUMS"],
                      cwd=out, capture_output=True, text=True)
if sums.returncode != 0:
    fail(f"sha256sum: {sums.stdout.strip()} {sums.stderr.strip()}")
sig = subprocess.run(["minisign", "-V", "-q", "-p", pubkey, "-m", "SHA256SUMS"],
                     cwd=out, capture_output=True, text=True)
if sig.returncode != 0:
    fail(f"minisign: {sig.stdout.strip()} {sig.stderr.strip()}")
print(f"ok: {len(listed)} parts")
