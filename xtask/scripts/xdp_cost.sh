#!/usr/bin/env bash
# Measures warden's XDP per-packet cost against an empty XDP program, in one run.
# Needs root and a release build (`cargo xtask build --release`). Everything it
# creates (a namespace, a cgroup, a pin directory) is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
warden=target/release/warden
ns=wcost$$; pins=/sys/fs/bpf/wcost$$; run=$(mktemp -d)
cg=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)/wcost$$
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  "$warden" --pin-dir "$pins" --run-dir "$run" --nft-table wcost down >/dev/null 2>&1 || true
  ip netns del "$ns" 2>/dev/null || true
  rmdir "$cg" 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT
ip netns add "$ns"
ip link add v0 netns "$ns" type veth peer name v1 netns "$ns"
ip -n "$ns" link set v0 up && ip -n "$ns" link set v1 up
mkdir -p "$cg"
cat > "$run/p.toml" <<TOML
version = 1
[service]
ports = [11434]
server_cgroups = ["wcost$$"]
[ingress]
allow = ["10.88.1.0/24", "fd00:88:1::/64"]
TOML
nsenter --net="/var/run/netns/$ns" "$warden" --pin-dir "$pins" --run-dir "$run" daemon \
  --policy "$run/p.toml" --attach-cgroup "$cg" --events /dev/null 2>"$run/err" &
pid=$!
for _ in $(seq 100); do [ -f "$run/state.json" ] && break; sleep 0.1; done
link=$(ls "$pins/links" | grep '^xdp-' | head -1)
id=$(bpftool -j link show pinned "$pins/links/$link" | python3 -c 'import json,sys; print(json.load(sys.stdin)["prog_id"])')
python3 xtask/scripts/xdp_cost.py "$id" "${1:-1000000}" "${2:-5}"
