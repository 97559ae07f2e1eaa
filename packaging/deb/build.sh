#!/bin/sh
# Builds the ollama-warden .deb with dpkg-deb: no packaging tool to install.
#
#   packaging/deb/build.sh WARDEN_BINARY VERSION OUT_DIR
#
# Prints the path of the package. `cargo xtask deb` runs it with the release
# binary and the workspace version; tests/tests/package.rs with the test build.
set -eu

bin=$1
version=$2
out=$3
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/ollama-warden

install -D -m 0755 "$bin" "$root/usr/bin/warden"
# Debug information is most of a build's size (the eBPF object is data, kept).
if command -v strip >/dev/null; then strip --strip-debug "$root/usr/bin/warden"; fi
for unit in ollama-warden.service ollama-warden-proxy.service; do
    install -D -m 0644 "$repo/packaging/systemd/$unit" "$root/usr/lib/systemd/system/$unit"
done

# Configuration (conffiles: an operator's edits survive upgrades).
install -D -m 0644 "$repo/policies/default.toml" "$root/etc/ollama-warden/policy.d/00-default.toml"
install -D -m 0640 "$repo/policies/proxy/example.toml" "$root/etc/ollama-warden/proxy.toml"
install -D -m 0644 "$here/default" "$root/etc/default/ollama-warden"

# Documentation and examples, including the recommended drop-in for Ollama's unit
# (not installed into /etc: it changes how Ollama listens, an operator's choice).
doc=$root/usr/share/doc/ollama-warden
install -D -m 0644 "$repo/README.md" "$doc/README.md"
for f in OPERATIONS.md PROXY.md EVENTS.md DESIGN-NOTES.md; do
    install -D -m 0644 "$repo/docs/$f" "$doc/$f"
done
install -D -m 0644 "$repo/policy/src/reference.md" "$doc/POLICY.md"
install -D -m 0644 "$here/copyright" "$doc/copyright"
mkdir -p "$doc/examples/policy.d"
install -m 0644 "$repo"/policies/examples/*.toml "$doc/examples/"
install -m 0644 "$repo"/policies/examples/policy.d/*.toml "$doc/examples/policy.d/"
install -D -m 0644 "$repo/packaging/systemd/ollama.service.d/ollama-warden.conf" \
    "$doc/examples/ollama.service.d/ollama-warden.conf"

mkdir -p "$root/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
(cd "$root" && find etc -type f | sed 's|^|/|' | sort) > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    "$here/control" > "$root/DEBIAN/control"

mkdir -p "$out"
deb=$out/ollama-warden_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
