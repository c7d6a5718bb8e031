#!/usr/bin/env bash
# bench/observe.sh: the figures of #11 (Observe), on one host:
#   1. `GET /v1/status` over the unix socket with $N instances (default 50)
#      of one service: median and p99 of 200 sequential calls (curl).
#   2. The dashboard in headless chromium (selenium): first contentful
#      paint and first render of the data, then the latency of each change
#      (the controller records an event -> the page shows it) while
#      `kiln chaos` kills $KILLS instances (default 20), one a second.
#   3. Memory (VmRSS) of kiln serve with the $N instances and the dashboard
#      open, and of the service's load balancer.
#   4. The CLI through kiln serve (POST /v1/commands) against the CLI alone:
#      `kiln ps --json` and `kiln images --json`, median of 20 runs.
# Goal: first paint and event latency under 200 ms on loopback.
# Usage: bench/observe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup chromium chromium-driver curl
python3 -c "import selenium" 2>/dev/null || ./scripts/install-deps.sh >/dev/null
bench_workdir observe
kiln=$root/target/release/kiln
export KILN_HOME=$work/home
N=${N:-50}
KILLS=${KILLS:-20}
LB=$(port)
API=$(port)
cp examples/hello/bin/demo-app "$work/"
cd "$work"
{ demo_image_toml 1.0.0; echo; } > kiln.toml
cat >> kiln.toml <<TOML
[service.web]
image = "web"
env = { HOST = "127.0.0.1" }
replicas = $N
listen = "127.0.0.1:$LB"
drain_timeout = "1s"
[service.web.health]
path = "/healthz"
interval = "500ms"
TOML
"$kiln" bake >/dev/null
"$kiln" serve -f kiln.toml --tcp "127.0.0.1:$API" 2>"$work/serve.log" & pids+=($!)
serve_pid=$!
for _ in $(seq 200); do "$kiln" status >/dev/null 2>&1 && break; sleep 0.05; done
t0=$(ms)
"$kiln" deploy >/dev/null
echo "deployed $N instances in $(( $(ms) - t0 )) ms"
running=$("$kiln" status --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["services"][0]["instances"]))')
echo "instances: $running"

python3 - "$KILN_HOME/serve.sock" <<'PY'
import socket, statistics, sys, time
path = sys.argv[1]
def call():
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n")
    n = 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        n += len(b)
    s.close()
    return n
for _ in range(10):
    call()
t = []
for _ in range(200):
    a = time.perf_counter()
    size = call()
    t.append((time.perf_counter() - a) * 1000)
t.sort()
print(f"status: median {statistics.median(t):.2f} ms, p99 {t[197]:.2f} ms, {size} bytes")
PY

link=$("$kiln" dashboard)
python3 "$root/bench/dashboard_latency.py" "$link" "$KILLS" > "$work/browser.out" 2>"$work/browser.err" & browser=$!
# (Not in `pids`: kiln_stop_all ends the last pid there, which is kiln serve.)
for _ in $(seq 600); do grep -q ready "$work/browser.out" 2>/dev/null && break; sleep 0.1; done
head -1 "$work/browser.out"
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
proxy_pid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$KILN_HOME"/proxies/web/proxy.json)
echo "memory with the dashboard open: kiln serve $(( $(rss "$serve_pid") / 1024 )) MiB, load balancer $(( $(rss "$proxy_pid") / 1024 )) MiB"
"$kiln" chaos web --kills "$KILLS" --kill-rate 1 --json >/dev/null
wait "$browser" || true
kill "$browser" 2>/dev/null || true
python3 - "$work/browser.out" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
first, lat = lines[0], sorted(lines[-1]["latencies_ms"])
print(f"dashboard: first contentful paint {first['fcp']:.0f} ms, data rendered {first['render']:.0f} ms")
print(f"change -> screen over {len(lat)} changes: median {statistics.median(lat):.0f} ms, max {lat[-1]:.0f} ms")
PY
echo "memory after: kiln serve $(( $(rss "$serve_pid") / 1024 )) MiB"
# 4. The CLI as a client of kiln serve (POST /v1/commands) against the CLI
#    alone, same commands, same $N instances: median wall time of 20 runs.
cli_times() {
  python3 - "$kiln" "$@" <<'PY'
import statistics, subprocess, sys, time
kiln, args = sys.argv[1], sys.argv[2:]
t = []
for _ in range(20):
    a = time.perf_counter()
    subprocess.run([kiln, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t.append((time.perf_counter() - a) * 1000)
print(f"{statistics.median(t):.1f}")
PY
}
ps_serve=$(cli_times ps --json); img_serve=$(cli_times images --json)
served=$(grep -c "command ps: 200" "$work/serve.log" || true)
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true
ps_alone=$(cli_times ps --json); img_alone=$(cli_times images --json)
echo "kiln ps --json ($N instances): through kiln serve $ps_serve ms, alone $ps_alone ms (kiln serve carried out $served)"
echo "kiln images --json: through kiln serve $img_serve ms, alone $img_alone ms"
python3 -c "import sys; print(f'ratio through/alone: ps {float(sys.argv[1])/float(sys.argv[2]):.2f}, images {float(sys.argv[3])/float(sys.argv[4]):.2f}')" "$ps_serve" "$ps_alone" "$img_serve" "$img_alone"
kiln_stop_all
