#!/usr/bin/env bash
# bench/base.sh: a bake FROM a registry image, kiln next to BuildKit
# (`DOCKER_BUILDKIT=1 docker build`, Debian's docker.io), both pulling the
# same base from the same registry: Debian's docker-registry on loopback
# holding a Debian 12 minbase image (debootstrap, about 140 MB, pushed by
# kiln), as a team's mirror of debian:12 would.
#   cold: no base and no cache (kiln: an empty KILN_HOME and no kiln.lock;
#         docker: `docker builder prune -af` and the base image removed);
#   warm: the same build again (the base pinned / cached, the step cached).
# The build: one RUN step (`apt`-free: writes a file) on the base.
# Prints medians of RUNS (default 5) and kiln's time over BuildKit's.
# Usage: bench/base.sh [RUNS]. Needs root (dockerd, runc).
set -euo pipefail
RUNS=${1:-5}
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup docker.io docker-registry debootstrap
bench_workdir base
kiln=$root/target/release/kiln
DOCKER=/usr/bin/docker

# ---- the base, in a registry ----
rootfs=$(scripts/debian-rootfs.sh "$root/target/tmp/debian-12-minbase.tar")
p=$(port)
cat > "$work/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/data
http:
  addr: 127.0.0.1:$p
YML
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
pids+=($!)
wait_port "$p"
mkdir -p "$work/basesrc"
cp "$rootfs" "$work/basesrc/rootfs.tar"
printf '[image.debian]\nfrom = "rootfs:rootfs.tar"\nversion = "12"\ncmd = ["/bin/bash"]\n' > "$work/basesrc/kiln.toml"
(cd "$work/basesrc" && KILN_HOME=$work/basehome "$kiln" bake >/dev/null 2>&1 \
  && KILN_HOME=$work/basehome "$kiln" push debian:12 "127.0.0.1:$p/library/debian:12" >/dev/null)
base=127.0.0.1:$p/library/debian:12

# ---- the two builds ----
mkdir -p "$work/ctx"
cd "$work/ctx"
printf '[image.app]\nfrom = "%s"\nrun = ["echo built > /etc/app-built"]\ncmd = ["/bin/cat", "/etc/app-built"]\n' "$base" > kiln.toml
printf 'FROM %s\nRUN echo built > /etc/app-built\nCMD ["/bin/cat", "/etc/app-built"]\n' "$base" > Dockerfile
if ! $DOCKER info >/dev/null 2>&1; then
  dockerd >"$work/dockerd.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.2; done
fi
docker_cold() { $DOCKER image rm -f kbase "$base" >/dev/null 2>&1 || true; $DOCKER builder prune -af >/dev/null 2>&1; }
# The old home is moved aside, not removed: ext4 skips recently freed
# inodes when it allocates (recently_deleted), so files created just after
# an rm -rf of 10,000 others cost several times more (perf showed it).
n=0
kiln_cold() { n=$((n + 1)); mkdir -p "$work/trash"; [ ! -d "$work/home" ] || mv "$work/home" "$work/trash/$n"; rm -f kiln.lock; }
bk() { DOCKER_BUILDKIT=1 $DOCKER build -q --network host -t kbase . >/dev/null; }
kb() { KILN_HOME=$work/home "$kiln" bake >/dev/null 2>&1; }
# One of each first: page cache, docker's first-use setup.
kiln_cold; kb; docker_cold; bk
kc=(); kw=(); dc=(); dw=()
for r in $(seq "$RUNS"); do
  # sync first: neither side pays for the other's dirty pages (an fsync
  # on ext4 can wait for another file's writeback).
  kiln_cold; sync; t=$(ms); kb; kc+=($(( $(ms) - t )))
  sync; t=$(ms); kb; kw+=($(( $(ms) - t )))
  docker_cold; sync; t=$(ms); bk; dc+=($(( $(ms) - t )))
  sync; t=$(ms); bk; dw+=($(( $(ms) - t )))
done
python3 - "${kc[*]}" "${kw[*]}" "${dc[*]}" "${dw[*]}" <<'PY'
import statistics, sys
kc, kw, dc, dw = ([int(x) for x in a.split()] for a in sys.argv[1:5])
for what, k, d in (("cold", kc, dc), ("warm", kw, dw)):
    mk, md = statistics.median(k), statistics.median(d)
    print("%-5s kiln %6d ms   BuildKit %6d ms   kiln/BuildKit %.2f   runs kiln %s buildkit %s" % (what, mk, md, mk / md, k, d))
PY
