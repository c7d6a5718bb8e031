#!/usr/bin/env bash
# bench/fleet.sh: the fleet's figures, on one machine (the hosts share its
# network namespace): three etcd members (Debian etcd-server 3.4), two
# agents, two controllers, Debian's docker-registry, busybox httpd baked by
# kiln; leases of 2 s. ROUNDS (default 5) of each:
#   1. controller failover: the leader SIGKILLed → the other holds
#      /kiln/leader (etcdctl get), and then → its first placement acts;
#   2. host loss → its slot serving on the other host: an agent and its
#      instances killed, the slot polled over HTTP;
#   3. etcd writes per release: the cluster revision before and after a
#      new image for 2 replicas, until both serve it (agents write their
#      record only when it changes; lease keepalives are not writes);
# then once, with a third agent: 4. the fleet canary's weight accuracy:
# 3 replicas and a canary at 10 % behind a load balancer on every host
# (each agent advertises its own loopback address), 10,002 requests spread
# over the three load balancers, the share that reached the canary;
# 5. blue-green on the three hosts from a kiln.toml: a deploy of v2 (the
# whole new set, smoke-checked, one switch) until every load balancer
# answers v2 only; `kiln rollback --cluster` (the warm set: no instance
# started) until every one answers v1; the same rollback of a rolling
# release (one slot at a time) for comparison. Single-host kiln's figures
# for the same (bench/release.sh) are the anchor: rollback 0.49 s.
# Prints medians next to the anchors of issue #24 (Swarm ~15 s after a
# node loss, Nomad 20–30 s, Kubernetes 50 s + a 300 s eviction; their
# controllers 10–15 s). Docker Swarm itself is measured side by side by
# bench/swarm.sh, on the network-namespace rig (one dockerd per host).
# Usage: [LB=1] [WRITES=1] bench/fleet.sh [ROUNDS]
set -euo pipefail
ROUNDS=${1:-5}
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup etcd-server etcd-client docker-registry busybox-static
bench_workdir fleet
kiln=$root/target/release/kiln
# The agents first, then what they started (load balancers, instances
# outlive an agent by design), then the work directory.
fleet_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for h in h1 h2 h3; do
    [ -d "$work/$h" ] || continue
    for rec in "$work/$h"/proxies/*/proxy.json; do
      [ -f "$rec" ] && kill "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$rec")" 2>/dev/null || true
    done
    for id in $(KILN_HOME=$work/$h "$kiln" ps --all --json 2>/dev/null | python3 -c 'import json,sys; [print(r["id"]) for r in json.load(sys.stdin)["instances"]]' 2>/dev/null); do
      KILN_HOME=$work/$h "$kiln" rm --force "$id" >/dev/null 2>&1 || true
    done
  done
  bench_cleanup
}
trap fleet_cleanup EXIT
ETCDCTL_API=3; export ETCDCTL_API

# ---- etcd ----
declare -a cp pp
for i in 0 1 2; do cp[$i]=$(port); pp[$i]=$(port); done
initial="m0=http://127.0.0.1:${pp[0]},m1=http://127.0.0.1:${pp[1]},m2=http://127.0.0.1:${pp[2]}"
for i in 0 1 2; do
  etcd --name "m$i" --data-dir "$work/etcd$i" --listen-client-urls "http://127.0.0.1:${cp[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${cp[$i]}" --listen-peer-urls "http://127.0.0.1:${pp[$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${pp[$i]}" --initial-cluster "$initial" \
    --heartbeat-interval 100 --election-timeout 1000 >"$work/etcd$i.log" 2>&1 &
  pids+=($!)
done
cluster="http://127.0.0.1:${cp[0]},http://127.0.0.1:${cp[1]},http://127.0.0.1:${cp[2]}"
eps="127.0.0.1:${cp[0]},127.0.0.1:${cp[1]},127.0.0.1:${cp[2]}"
for _ in $(seq 100); do etcdctl --endpoints "$eps" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
revision() { etcdctl --endpoints "$eps" endpoint status -w json | python3 -c 'import json,sys; print(max(e["Status"]["header"]["revision"] for e in json.load(sys.stdin)))'; }
leader() { etcdctl --endpoints "$eps" get /kiln/leader --print-value-only; }

# ---- images ----
rp=$(port)
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$work/reg" "$rp" > "$work/reg.yml"
docker-registry serve "$work/reg.yml" >/dev/null 2>&1 &
pids+=($!)
wait_port "$rp"
mkdir -p "$work/src/rootfs/bin" "$work/src/rootfs/www"
cp /bin/busybox "$work/src/rootfs/bin/busybox"
ln -s busybox "$work/src/rootfs/bin/sh"
tar -C "$work/src/rootfs" -cf "$work/src/busybox.tar" .
declare -A img
for v in 1 2; do
  echo "v$v" > "$work/src/index-$v.html"
  printf '[image.web]\nfrom = "rootfs:busybox.tar"\nversion = "%s"\ncopy = [{ src = "index-%s.html", dest = "/www/index.html" }]\nentrypoint = ["/bin/sh", "-c", "exec /bin/busybox httpd -f -p $PORT -h /www"]\n' "$v" "$v" > "$work/src/kiln.toml"
  d=$(cd "$work/src" && KILN_HOME=$work/src-home "$kiln" bake --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["digest"])')
  (cd "$work/src" && KILN_HOME=$work/src-home "$kiln" push "web:$v" "127.0.0.1:$rp/web:$v" >/dev/null)
  img[$v]="127.0.0.1:$rp/web@$d"
done

placed_json() { KILN_HOME=$work/ctl "$kiln" hosts --cluster "$cluster" --json; }
# The port of SLOT on HOST, or nothing.
port_of() { placed_json | python3 -c "import json,sys; print(next((p['port'] for h in json.load(sys.stdin) if h['name']=='$1' for p in h['placed'] if p['slot']=='$2'), ''))"; }
serves() { [ -n "$1" ] && curl -fsS --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null | grep -q "$2"; }
# hN advertises 127.0.0.1N: its load balancers listen there.
start_agent() { KILN_HOME=$work/$1 "$kiln" agent --cluster "$cluster" --name "$1" --ttl 2 --advertise "127.0.0.1${1#h}" >"$work/$1.log" 2>&1 & agent_pid[$1]=$!; pids+=($!); }
start_ctl() { KILN_HOME=$work/ctl "$kiln" controller --cluster "$cluster" --name "$1" --ttl 2 >"$work/$1.log" 2>&1 & ctl_pid[$1]=$!; pids+=($!); }
declare -A agent_pid ctl_pid
start_agent h1; start_agent h2; start_ctl c1; start_ctl c2
sleep 3

# LB=1: the release behind a load balancer on every host (each agent then
# also reports what its load balancer routes to, which its record carries).
release_lb=""
[ -n "${LB:-}" ] && release_lb="--listen $(port) --health /"
fo=(); loss=(); writes=()
for r in $(seq "$ROUNDS"); do
  # 1. failover
  lead=$(leader); other=$([ "$lead" = c1 ] && echo c2 || echo c1)
  t=$(ms); kill -9 "${ctl_pid[$lead]}"; wait "${ctl_pid[$lead]}" 2>/dev/null || true
  until [ "$(leader)" = "$other" ]; do sleep 0.02; done
  fo+=($(( $(ms) - t )))
  start_ctl "$lead"
  # 3. a release: writes until both replicas serve v2 (v1 first, settled)
  KILN_HOME=$work/ctl "$kiln" place --cluster "$cluster" --service web --replicas 2 $release_lb "${img[1]}" >/dev/null
  until serves "$(port_of h1 web-0)$(port_of h1 web-1)" v1 && serves "$(port_of h2 web-0)$(port_of h2 web-1)" v1; do sleep 0.1; done
  sleep 1
  r0=$(revision)
  KILN_HOME=$work/ctl "$kiln" place --cluster "$cluster" --service web --replicas 2 $release_lb "${img[2]}" >/dev/null
  until serves "$(port_of h1 web-0)$(port_of h1 web-1)" v2 && serves "$(port_of h2 web-0)$(port_of h2 web-1)" v2; do sleep 0.1; done
  sleep 2
  writes+=($(( $(revision) - r0 )))
  # WRITES=1: which keys each write changed, for a figure that moved.
  if [ -n "${WRITES:-}" ]; then
    timeout 2 etcdctl --endpoints "$eps" watch --prefix /kiln --rev=$((r0 + 1)) 2>/dev/null | grep '^/kiln' | sort | uniq -c || true
  fi
  # 2. host loss: h1's agent and instances killed
  slot=$(placed_json | python3 -c "import json,sys; print(next(p['slot'] for h in json.load(sys.stdin) if h['name']=='h1' for p in h['placed']))")
  t=$(ms); kill -9 "${agent_pid[h1]}"; wait "${agent_pid[h1]}" 2>/dev/null || true
  for id in $(KILN_HOME=$work/h1 "$kiln" ps --json | python3 -c 'import json,sys; [print(i["id"]) for i in json.load(sys.stdin)["instances"]]'); do
    KILN_HOME=$work/h1 "$kiln" rm --force "$id" >/dev/null
  done
  until serves "$(port_of h2 "$slot")" v2; do sleep 0.05; done
  loss+=($(( $(ms) - t )))
  start_agent h1
  KILN_HOME=$work/ctl "$kiln" place --cluster "$cluster" --service web --replicas 0 "${img[2]}" >/dev/null
  until [ "$(placed_json | python3 -c 'import json,sys; print(sum(len(h["placed"]) for h in json.load(sys.stdin)))')" = 0 ]; do sleep 0.1; done
done
# 4. the fleet canary's weight accuracy, on three hosts' load balancers
start_agent h3
lb=$(port)
KILN_HOME=$work/ctl "$kiln" place --cluster "$cluster" --service web --replicas 3 --listen "$lb" --health / \
  --canary "${img[2]}" --canary-weight 10 "${img[1]}" >/dev/null
both() { for _ in $(seq 40); do curl -fsS --max-time 1 "http://$1:$lb/" 2>/dev/null; done | sort -u | wc -l; }
until [ "$(both 127.0.0.11)" = 2 ] && [ "$(both 127.0.0.12)" = 2 ] && [ "$(both 127.0.0.13)" = 2 ]; do sleep 0.3; done
sleep 2
share=$(python3 - "$lb" <<'PY'
import http.client, sys, threading
port, counts = int(sys.argv[1]), {}
def run(host):
    c, n = http.client.HTTPConnection(host, port), {}
    for _ in range(3334):
        c.request("GET", "/"); body = c.getresponse().read().decode().strip(); n[body] = n.get(body, 0) + 1
    counts[host] = n
ts = [threading.Thread(target=run, args=(h,)) for h in ("127.0.0.11", "127.0.0.12", "127.0.0.13")]
[t.start() for t in ts]; [t.join() for t in ts]
total = sum(sum(n.values()) for n in counts.values()); canary = sum(n.get("v2", 0) for n in counts.values())
print("%d %d %s" % (canary, total, " ".join("%s:%d/%d" % (h, n.get("v2", 0), sum(n.values())) for h, n in sorted(counts.items()))))
PY
)
KILN_HOME=$work/ctl "$kiln" place --cluster "$cluster" --service web --replicas 0 "${img[1]}" >/dev/null
# 5. blue-green and rolling rollbacks on the three load balancers
mkdir -p "$work/app"
app_toml() { # SERVICE STRATEGY VERSION PORT
  printf '[service.%s]\nimage = "127.0.0.1:%s/web:%s"\nlisten = "0.0.0.0:%s"\nreplicas = 3\nstrategy = "%s"\nkeep_previous = "5m"\n[service.%s.health]\npath = "/"\n' "$1" "$rp" "$3" "$4" "$2" "$1" > "$work/app/kiln.toml"
  [ "$2" = blue-green ] && printf '[service.%s.blue_green]\nsmoke = [{ path = "/", contains = "v%s" }]\n' "$1" "$3" >> "$work/app/kiln.toml"
  true
}
fleet() { (cd "$work/app" && KILN_HOME=$work/ctl "$kiln" "$@" --cluster "$cluster" >/dev/null 2>&1); }
only() { # PORT BODY: every load balancer answers BODY alone
  for h in 127.0.0.11 127.0.0.12 127.0.0.13; do
    [ "$(for _ in $(seq 10); do curl -fsS --max-time 1 "http://$h:$1/" 2>/dev/null; done | sort -u)" = "$2" ] || return 1
  done
}
declare -A took
for s in blue-green rolling; do
  p=$(port); svc=${s%%-*}
  app_toml "$svc" "$s" 1 "$p"; fleet deploy "$svc"
  until only "$p" v1; do sleep 0.1; done
  # Each command runs in the background: the figure is what clients see
  # (every load balancer answering the new body alone), not when the
  # command, which then follows the release, returns.
  app_toml "$svc" "$s" 2 "$p"; t=$(ms); fleet deploy "$svc" & cmd=$!
  until only "$p" v2; do sleep 0.02; done
  took[$s-release]=$(( $(ms) - t )); wait "$cmd"
  sleep 1
  t=$(ms); fleet rollback "$svc" & cmd=$!
  until only "$p" v1; do sleep 0.02; done
  took[$s-rollback]=$(( $(ms) - t )); wait "$cmd"
  fleet down "$svc"
done
for h in h1 h2 h3; do
  for rec in "$work/$h"/proxies/*/proxy.json; do
    [ -f "$rec" ] && kill "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$rec")" 2>/dev/null || true
  done
done
python3 - "${fo[*]}" "${loss[*]}" "${writes[*]}" "$share" "${took[blue-green-release]}" "${took[blue-green-rollback]}" "${took[rolling-release]}" "${took[rolling-rollback]}" <<'PY'
import statistics, sys
fo, loss, writes = ([int(x) for x in a.split()] for a in sys.argv[1:4])
canary, total, per = sys.argv[4].split(" ", 2)
bg_release, bg_back, roll_release, roll_back = (int(x) for x in sys.argv[5:9])
print("fleet canary at 10 %%, three load balancers:          %d of %d = %.2f %% (%s)  (goal ±0.5 points; Argo Rollouts without a router and Nomad count instances: 1 of 4 = 25 %%)" % (int(canary), int(total), int(canary) * 100.0 / int(total), per))
print("controller failover (leader SIGKILLed → other leads): median %d ms, runs %s  (Kubernetes ~15 s, Swarm ~10 s)" % (statistics.median(fo), fo))
print("host loss → its slot serving elsewhere:             median %d ms, runs %s  (Swarm ~15 s, Nomad 20-30 s, Kubernetes 50 s + 300 s)" % (statistics.median(loss), loss))
print("etcd writes per release (2 replicas, new image):     median %d, runs %s" % (statistics.median(writes), writes))
print("blue-green v1 → v2, 3 replicas, 3 load balancers:    %d ms (deploy until every load balancer answers v2 only)" % bg_release)
print("rollback to the warm set (blue-green):               %d ms  (rolling release's rollback: %d ms, %.1fx; single-host kiln: 490 ms for its command)" % (bg_back, roll_back, roll_back / max(bg_back, 1)))
print("rolling v1 → v2, the same:                           %d ms" % roll_release)
PY
