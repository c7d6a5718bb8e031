#!/usr/bin/env bash
# bench/bake.sh: kiln bake vs docker build (legacy and BuildKit) vs buildah,
# in the same run, on the same small image: static busybox + a 1 MiB file +
# a config file. Three cases: cold, unchanged rebuild, one changed file.
# Prints medians, each tool's ratio to kiln, and whether two clean builds
# gave identical digests. Runs only local builds (--network none).
#
# Usage: bench/bake.sh [RUNS]   (default 10). Needs root for dockerd.
set -euo pipefail
RUNS=${1:-10}
cd "$(dirname "$0")/.."
root=$PWD
for p in docker.io buildah hyperfine busybox-static; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="${missing:-} $p"
done
if [ -n "${missing:-}" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; fi
cargo build --quiet --release --locked -p kiln-cli
KILN=$root/target/release/kiln
DOCKER=/usr/bin/docker   # Debian's client: BuildKit via DOCKER_BUILDKIT=1

work=$(mktemp -d /tmp/kiln-bench-bake.XXXXXX)
started_dockerd=""
cleanup() {
  if [ -n "$started_dockerd" ]; then kill "$started_dockerd" 2>/dev/null || true; wait "$started_dockerd" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The build context, identical for every tool.
ctx=$work/ctx
mkdir -p "$ctx"
cp /bin/busybox "$ctx/busybox"
python3 -c "import random; random.seed(1); open('$ctx/blob','wb').write(random.randbytes(1<<20))"
echo "level = 1" > "$ctx/app.conf"
cat > "$ctx/kiln.toml" <<'TOML'
[image.bench]
from = "scratch"
copy = [
  { src = "busybox", dest = "/bin/busybox" },
  { src = "blob", dest = "/data/blob" },
  { src = "app.conf", dest = "/etc/app.conf" },
]
entrypoint = ["/bin/busybox"]
TOML
cat > "$ctx/Dockerfile" <<'DF'
FROM scratch
COPY busybox /bin/busybox
COPY blob /data/blob
COPY app.conf /etc/app.conf
ENTRYPOINT ["/bin/busybox"]
DF

# dockerd, if not already running: ours, ended by PID at exit.
if ! $DOCKER info >/dev/null 2>&1; then
  dockerd >"$work/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 100); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.1; done
fi

export KILN_HOME=$work/kiln-home
kiln_cold="rm -rf $work/kiln-home"
bump="echo level = \$RANDOM\$RANDOM > $ctx/app.conf"
H="hyperfine --style none --runs $RUNS --warmup 1 --export-json"
cd "$ctx"
# Warm the page cache and docker's/buildah's first-use setup.
$KILN bake >/dev/null 2>&1; DOCKER_BUILDKIT=1 $DOCKER build -q --network none -t kb . >/dev/null; buildah bud -q --layers -t kb . >/dev/null 2>&1

echo "== cold (no cache)"
$H $work/cold.json -n kiln --prepare "$kiln_cold" "$KILN bake" \
  -n buildkit --prepare "$DOCKER builder prune -af" "DOCKER_BUILDKIT=1 $DOCKER build -q --no-cache --network none -t kb ." \
  -n docker-legacy --prepare true "DOCKER_BUILDKIT=0 $DOCKER build -q --no-cache --network none -t kl ." \
  -n buildah --prepare true "buildah bud -q --no-cache -t kbh ." >/dev/null
echo "== unchanged rebuild"
$H $work/warm.json -n kiln "$KILN bake" \
  -n buildkit "DOCKER_BUILDKIT=1 $DOCKER build -q --network none -t kb ." \
  -n docker-legacy "DOCKER_BUILDKIT=0 $DOCKER build -q --network none -t kl ." \
  -n buildah "buildah bud -q --layers -t kbh ." >/dev/null
echo "== one changed file"
$H $work/change.json -n kiln --prepare "$bump" "$KILN bake" \
  -n buildkit --prepare "$bump" "DOCKER_BUILDKIT=1 $DOCKER build -q --network none -t kb ." \
  -n docker-legacy --prepare "$bump" "DOCKER_BUILDKIT=0 $DOCKER build -q --network none -t kl ." \
  -n buildah --prepare "$bump" "buildah bud -q --layers -t kbh ." >/dev/null

echo "level = 1" > "$ctx/app.conf"
# Reproducibility: two clean builds each.
k1=$(rm -rf $work/kiln-home; $KILN bake --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["digest"])')
k2=$(rm -rf $work/kiln-home; $KILN bake --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["digest"])')
bk1=$(DOCKER_BUILDKIT=1 $DOCKER build -q --no-cache --network none . ); sleep 1.1
bk2=$(DOCKER_BUILDKIT=1 $DOCKER build -q --no-cache --network none . )
dl1=$(DOCKER_BUILDKIT=0 $DOCKER build -q --no-cache --network none . ); sleep 1.1
dl2=$(DOCKER_BUILDKIT=0 $DOCKER build -q --no-cache --network none . )
bh1=$(buildah bud -q --no-cache . 2>/dev/null | tail -1); sleep 1.1
bh2=$(buildah bud -q --no-cache . 2>/dev/null | tail -1)
same() { [ "$1" = "$2" ] && echo yes || echo no; }

python3 - "$work" "$(same "$k1" "$k2")" "$(same "$bk1" "$bk2")" "$(same "$dl1" "$dl2")" "$(same "$bh1" "$bh2")" <<'PY'
import json, statistics, sys
work, repro = sys.argv[1], dict(zip(["kiln", "buildkit", "docker-legacy", "buildah"], sys.argv[2:]))
cases = [("cold", "cold.json"), ("unchanged rebuild", "warm.json"), ("one changed file", "change.json")]
print(f"{'case':<19} {'tool':<14} {'median ms':>10} {'x kiln':>8}")
for name, f in cases:
    res = {r["command"]: statistics.median(r["times"]) * 1000 for r in json.load(open(f"{work}/{f}"))["results"]}
    k = res["kiln"]
    for tool, ms in res.items():
        print(f"{name:<19} {tool:<14} {ms:>10.1f} {ms / k:>8.2f}")
print()
print("identical digests from two clean builds: " + ", ".join(f"{t}={v}" for t, v in repro.items()))
PY
