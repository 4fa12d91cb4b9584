#!/usr/bin/env bash
# Builds the Debian package of callgate from this repository:
#
#   bash packaging/deb/build.sh                 # release build → target/debian/callgate_VERSION_ARCH.deb
#   bash packaging/deb/build.sh --binary PATH   # package an already built binary (tests/package.rs)
#            [--out DIR]                        # where the .deb goes (default target/debian)
#            [--uncompressed]                   # skip xz: seconds instead of minutes for a debug binary
#
# The package holds the binary, the hardened systemd unit (ExecReload runs
# `callgate check` first), the sysusers entry, a commented
# /etc/callgate/callgate.toml with an empty rules directory, an example rule
# file and the WeChat Pay IP set, /var/lib/callgate for the journal, shell
# completions and a man page generated from the binary's own command-line
# definitions, and the documentation. Only dpkg-deb is needed (no
# debhelper, no cargo-deb).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
here="$repo/packaging/deb"
binary=""
out="$repo/target/debian"
compress=(-Zxz)
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --uncompressed) compress=(-Znone); shift ;;
    *) echo "usage: $0 [--binary PATH] [--out DIR] [--uncompressed]" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ]; then
  (cd "$repo" && cargo build --release --locked)
  binary="$repo/target/release/callgate"
fi

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n1)"
arch="$(dpkg --print-architecture)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/callgate_${version}_${arch}"

install -D -m 0755 "$binary" "$root/usr/bin/callgate"
# The repository's unit installs by hand to /usr/local/bin; the package's binary is /usr/bin.
install -d "$root/lib/systemd/system"
sed 's|/usr/local/bin/callgate|/usr/bin/callgate|g' "$repo/deploy/systemd/callgate.service" \
  > "$root/lib/systemd/system/callgate.service"
chmod 0644 "$root/lib/systemd/system/callgate.service"
install -D -m 0644 "$repo/deploy/systemd/callgate.sysusers" "$root/usr/lib/sysusers.d/callgate.conf"

install -D -m 0640 "$here/callgate.toml" "$root/etc/callgate/callgate.toml"
install -D -m 0640 "$here/example.toml.disabled" "$root/etc/callgate/rules/example.toml.disabled"
install -D -m 0640 "$repo/rules/ipsets/wechatpay.toml" "$root/etc/callgate/rules/ipsets/wechatpay.toml"
install -d -m 0755 "$root/var/lib/callgate"

"$binary" completions bash > "$stage/callgate.bash"
"$binary" completions zsh > "$stage/_callgate"
"$binary" completions fish > "$stage/callgate.fish"
install -D -m 0644 "$stage/callgate.bash" "$root/usr/share/bash-completion/completions/callgate"
install -D -m 0644 "$stage/_callgate" "$root/usr/share/zsh/vendor-completions/_callgate"
install -D -m 0644 "$stage/callgate.fish" "$root/usr/share/fish/vendor_completions.d/callgate.fish"
install -d "$root/usr/share/man/man1"
"$binary" manpage "$root/usr/share/man/man1"
gzip -9n "$root"/usr/share/man/man1/*.1
chmod 0644 "$root"/usr/share/man/man1/*.1.gz

doc="$root/usr/share/doc/callgate"
install -D -m 0644 "$repo/README.md" "$doc/README.md"
for f in "$repo"/docs/*.md; do install -m 0644 "$f" "$doc/"; done
install -d "$doc/grafana" "$doc/prometheus"
install -m 0644 "$repo/deploy/grafana/callgate.json" "$doc/grafana/"
install -m 0644 "$repo/deploy/prometheus/alerts.yml" "$repo/deploy/prometheus/alerts_test.yml" "$doc/prometheus/"

install -d "$root/DEBIAN"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat > "$root/DEBIAN/control" <<CONTROL
Package: callgate
Version: $version
Architecture: $arch
Maintainer: callgate maintainers <callgate@localhost>
Installed-Size: $size
Depends: libc6, libgcc-s1
Recommends: systemd
Section: net
Priority: optional
Description: payment-callback security gateway
 Stands in front of a shop's payment notify handlers: lets through only
 Alipay, WeChat Pay, UnionPay and JD Pay notifications that come from an
 allowed address, verify as the platform's SDK verifies them, are fresh
 and new, forwards each event once and answers the platform's ack.
CONTROL
printf '%s\n' /etc/callgate/callgate.toml /etc/callgate/rules/example.toml.disabled \
  /etc/callgate/rules/ipsets/wechatpay.toml > "$root/DEBIAN/conffiles"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$root/DEBIAN/"

mkdir -p "$out"
dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$out/callgate_${version}_${arch}.deb" >/dev/null
echo "$out/callgate_${version}_${arch}.deb"
