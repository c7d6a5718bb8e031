#!/usr/bin/env bash
# Builds, once, a Debian 12 minbase rootfs tarball with curl, openssl and
# ca-certificates from Debian's own packages (debootstrap): a workload kiln
# did not write, for the secret-scan and SBOM tests. Prints its path.
# Concurrent callers wait for the first one (flock), so a test run pays once.
set -euo pipefail
out=${1:?usage: debian-rootfs.sh OUT.tar}
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9
if [ ! -s "$out" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if ! debootstrap --variant=minbase --include=curl,openssl,ca-certificates bookworm "$work/rootfs" \
      "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$out.log" 2>&1; then
    tail -20 "$out.log" >&2
    exit 1
  fi
  # As Docker's debian:12 ships: no package lists, no downloaded .debs.
  rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*
  tar -C "$work/rootfs" -cf "$out.tmp" .
  mv "$out.tmp" "$out"
fi
echo "$out"
