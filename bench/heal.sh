#!/usr/bin/env bash
# bench/heal.sh: time from a SIGKILLed instance to its replacement serving,
# and requests failed meanwhile, kiln against Docker Swarm.
#   1. kiln: 3 replicas of the demo app behind the service's kiln proxy,
#      wrk (8 connections) throughout; `kiln chaos` kills one instance a
#      second, $KILLS times (default 100): kill-to-serving median and p99
#      (from the history's `replaced` events), failed requests by wrk.
#   2. kiln, $MANY kills (default 1000) at 2 a second (at most one of the
#      three down at once; refused kills are made up for): failed requests
#      by wrk and by the load balancer.
#   3. Upgrades under wrk: `kiln serve --upgrade` $UPGRADES times (default
#      5; the controller and the service's load balancer are replaced, the
#      listeners handed over), next to HAProxy's seamless reload (-x with
#      expose-fd listeners, -sf) in front of the same instances, and next
#      to a plain restart of the load balancer process (what a proxy
#      without a handoff, kamal-proxy's restart, costs).
#   4. Docker Swarm (one-node swarm, docker.io from Debian), 3 replicas with
#      --network host: `docker kill` one task's container, $SWARM_KILLS times
#      (default 20; each waits out Swarm's restart delay), time until that
#      slot's port answers again.
# Usage: bench/heal.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup wrk docker.io skopeo haproxy
bench_workdir heal
kiln=$root/target/release/kiln
export KILN_HOME=$work/home
LB=$(port)
KILLS=${KILLS:-100}
MANY=${MANY:-1000}
SWARM_KILLS=${SWARM_KILLS:-20}
UPGRADES=${UPGRADES:-5}
cp examples/hello/bin/demo-app "$work/"
cd "$work"
{ demo_image_toml 1.0.0; echo; } > kiln.toml
cat >> kiln.toml <<TOML
[service.web]
image = "web"
env = { HOST = "127.0.0.1" }
replicas = 3
listen = "127.0.0.1:$LB"
drain_timeout = "2s"
[service.web.health]
path = "/healthz"
interval = "200ms"
timeout = "250ms"
unhealthy_threshold = 2
TOML
"$kiln" bake >/dev/null
"$kiln" serve -f kiln.toml 2>"$work/serve.log" & pids+=($!)
for _ in $(seq 200); do "$kiln" status >/dev/null 2>&1 && break; sleep 0.05; done
"$kiln" deploy >/dev/null
sleep 2
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$@"; }
printf "%-30s %6s %9s %7s %7s %10s\n" "run" "kills" "median_ms" "p99_ms" "failed" "requests"
chaos() { # kills rate
  local secs
  # Time for half again as many kills: some are refused (one down at a
  # time); chaos stops at $1 kills.
  secs=$(python3 -c "print(int($1/$2*1.5)+1)")
  wrk -t2 -c8 -d$((secs + 40))s "http://127.0.0.1:$LB/" > "$work/chaos.wrk" 2>&1 & local w=$!
  sleep 1
  "$kiln" chaos web --kill-rate "$2" --duration "${secs}s" --kills "$1" \
    --max-share 0.34 --json > "$work/chaos.json"
  # wrk runs a fixed time: end it once the replacements are in (its
  # report comes on SIGINT).
  kill -INT $w 2>/dev/null || true
  wait $w || true
  read -r fail total < <(wrk_errors "$work/chaos.wrk")
  printf "%-30s %6s %9s %7s %7s %10s  (lb: %s failed, %s retried; %s kills refused)\n" "kiln chaos $2/s" \
    "$(field chaos.json kills)" "$(field chaos.json replace_median_ms)" "$(field chaos.json replace_p99_ms)" \
    "$fail" "$total" "$(field chaos.json failed_requests)" "$(field chaos.json retries)" "$(field chaos.json refused)"
}
[ "$KILLS" -gt 0 ] && chaos "$KILLS" 1
[ "$MANY" -gt 0 ] && chaos "$MANY" 2

# ---- upgrades: kiln serve --upgrade, HAProxy reload, a plain restart ----
printf "\n%-34s %8s %8s %10s %12s\n" "upgrade run" "reloads" "failed" "requests" "median_ms"
under_wrk() { # url seconds out
  wrk -t2 -c8 -d"$2"s "$1" > "$3" 2>&1 & wpid=$!
  sleep 1
}
report() { # name n wrkfile times...
  local name=$1 n=$2 f=$3; shift 3
  wait "$wpid" || true
  read -r fail total < <(wrk_errors "$f")
  local med
  med=$(python3 -c "import sys; v=sorted(int(x) for x in sys.argv[1:]); print(v[(len(v)-1)//2] if v else '-')" "$@")
  printf "%-34s %8s %8s %10s %12s\n" "$name" "$n" "$fail" "$total" "$med"
}
under_wrk "http://127.0.0.1:$LB/" $((UPGRADES * 3 + 3)) "$work/upgrade.wrk"
times=()
for _ in $(seq "$UPGRADES"); do
  old=${pids[-1]}
  t=$(ms)
  "$kiln" serve --upgrade -f kiln.toml 2>>"$work/serve.log" & pids+=($!)
  while kill -0 "$old" 2>/dev/null; do sleep 0.01; done
  times+=($(( $(ms) - t )))
  sleep 2
done
report "kiln serve --upgrade" "$UPGRADES" "$work/upgrade.wrk" "${times[@]}"

# The same instances behind HAProxy, reloaded seamlessly.
HA=$(port)
{
  printf 'global\n  stats socket %s/ha.sock mode 600 level admin expose-fd listeners\n' "$work"
  printf 'defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n'
  printf 'frontend fe\n  bind 127.0.0.1:%s\n  default_backend be\nbackend be\n' "$HA"
  "$kiln" ps --json | python3 -c '
import json, sys
for i, r in enumerate(json.load(sys.stdin)["instances"]):
    s = r["state"]["state"] if isinstance(r["state"], dict) else r["state"]
    if s == "running":
        print("  server s%d 127.0.0.1:%d" % (i, r["port"]))'
} > "$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -p "$work/ha.pid" -D
wait_port "$HA"
under_wrk "http://127.0.0.1:$HA/" $((UPGRADES * 3 + 3)) "$work/haproxy.wrk"
times=()
for _ in $(seq "$UPGRADES"); do
  t=$(ms)
  haproxy -f "$work/haproxy.cfg" -p "$work/ha.pid" -D -x "$work/ha.sock" -sf "$(cat "$work/ha.pid")"
  times+=($(( $(ms) - t )))
  sleep 2
done
report "haproxy reload (-x, -sf)" "$UPGRADES" "$work/haproxy.wrk" "${times[@]}"
kill "$(cat "$work/ha.pid")" 2>/dev/null || true

# A load balancer restart without a handoff: SIGTERM the proxy; the
# controller starts another on the same address at its next tick.
under_wrk "http://127.0.0.1:$LB/" $((UPGRADES * 3 + 3)) "$work/restart.wrk"
times=()
for _ in $(seq "$UPGRADES"); do
  old=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$KILN_HOME/proxies/web/proxy.json")
  t=$(ms)
  kill "$old"
  until [ "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$KILN_HOME/proxies/web/proxy.json")" != "$old" ] \
    && curl -s -m 1 "127.0.0.1:$LB/" >/dev/null; do sleep 0.01; done
  times+=($(( $(ms) - t )))
  sleep 2
done
report "proxy restart (no handoff)" "$UPGRADES" "$work/restart.wrk" "${times[@]}"
kiln_stop_all

# ---- Docker Swarm ----
[ "$SWARM_KILLS" -gt 0 ] || exit 0
swarm_up || exit 0
skopeo copy --quiet "oci:$KILN_HOME/store:web:1.0.0" "docker-daemon:bench-web:1.0.0"
docker service create --quiet --name bench-web --replicas 3 --network host \
  --env HOST=127.0.0.1 --env 'PORT=1900{{.Task.Slot}}' bench-web:1.0.0 >/dev/null 2>&1
for p in 19001 19002 19003; do until curl -s "127.0.0.1:$p/" >/dev/null; do sleep 0.2; done; done
times=()
for n in $(seq "$SWARM_KILLS"); do
  slot=$(( (n % 3) + 1 ))
  c=$(docker ps -q --filter "name=bench-web.$slot." | head -1)
  t=$(ms); docker kill "$c" >/dev/null
  until curl -s -m 1 "127.0.0.1:1900$slot/" >/dev/null; do sleep 0.05; done
  times+=($(( $(ms) - t )))
done
read -r med p99 < <(python3 -c "
import math, sys
v = sorted(int(x) for x in sys.argv[1:])
q = lambda p: v[min(len(v), max(1, math.ceil(p * len(v)))) - 1]
print(q(0.5), q(0.99))" "${times[@]}")
printf "%-30s %6s %9s %7s\n" "swarm (docker kill, restart)" "$SWARM_KILLS" "$med" "$p99"
docker service rm bench-web >/dev/null
docker swarm leave --force >/dev/null
