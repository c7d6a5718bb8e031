#!/usr/bin/env bash
# bench/start.sh: time from `kiln run` to the instance answering HTTP,
# beside `docker run --network host` of the same image (copied into
# Docker with skopeo), interleaved in the same run. Prints medians and the
# ratio. Usage: bench/start.sh [RUNS] (default 20). Needs root.
set -euo pipefail
RUNS=${1:-20}
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup docker.io skopeo runc
work=$(mktemp -d /tmp/kiln-bench-start.XXXXXX)
export KILN_HOME=$work/home
started_dockerd=""
cleanup() {
  for id in $("$root/target/release/kiln" ps --all --json 2>/dev/null | python3 -c 'import json,sys; [print(r["id"]) for r in json.load(sys.stdin)["instances"]]' 2>/dev/null); do
    "$root/target/release/kiln" rm --force "$id" >/dev/null 2>&1 || true
  done
  if [ -n "$started_dockerd" ]; then kill "$started_dockerd" 2>/dev/null || true; wait "$started_dockerd" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
if ! /usr/bin/docker info >/dev/null 2>&1; then
  dockerd >"$work/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 100); do /usr/bin/docker info >/dev/null 2>&1 && break; sleep 0.1; done
fi
"$root/target/release/kiln" bake -f examples/hello/kiln.toml >/dev/null 2>&1
skopeo copy -q "oci:$KILN_HOME/store:hello:0.1.0" docker-daemon:kiln-bench-hello:0.1.0

python3 - "$RUNS" "$root/target/release/kiln" "$root/bench" <<'PY'
import json, statistics, subprocess, sys, time
sys.path.insert(0, sys.argv[-1])
from http_ready import answered, free_port

runs, kiln = int(sys.argv[1]), sys.argv[2]

def kiln_start():
    t = time.monotonic()
    out = subprocess.run([kiln, "run", "hello:0.1.0", "-e", "HOST=127.0.0.1", "--json"], check=True, capture_output=True)
    r = json.loads(out.stdout)
    assert answered(r["port"], t + 10), "kiln instance did not answer"
    took = time.monotonic() - t
    subprocess.run([kiln, "rm", "--force", r["id"]], check=True, capture_output=True)
    return took

def docker_start():
    port = free_port()
    t = time.monotonic()
    cid = subprocess.run(["/usr/bin/docker", "run", "-d", "--network", "host", "-e", f"PORT={port}", "-e", "HOST=127.0.0.1",
                          "kiln-bench-hello:0.1.0"], check=True, capture_output=True, text=True).stdout.strip()
    assert answered(port, t + 10), "docker container did not answer"
    took = time.monotonic() - t
    subprocess.run(["/usr/bin/docker", "rm", "-f", cid], check=True, capture_output=True)
    return took

kiln_start(); docker_start()  # warm caches (image unpack, docker layer store)
k, d = [], []
for _ in range(runs):
    k.append(kiln_start())
    d.append(docker_start())
km, dm = statistics.median(k) * 1000, statistics.median(d) * 1000
print(f"{'tool':<8} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
print(f"{'kiln':<8} {km:>10.1f} {min(k)*1000:>8.1f} {max(k)*1000:>8.1f}")
print(f"{'docker':<8} {dm:>10.1f} {min(d)*1000:>8.1f} {max(d)*1000:>8.1f}")
print(f"kiln / docker = {km/dm:.2f} (goal: at most 0.33)")
PY
