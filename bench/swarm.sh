#!/usr/bin/env bash
# bench/swarm.sh: host loss → serving elsewhere, kiln's fleet next to a
# Docker Swarm, both on the same rig: scripts/fleet-lab.sh's three network
# namespaces on a bridge. The swarm is one dockerd per namespace (Debian's
# docker.io 20.10, its own data and exec roots, no bridge or iptables, the
# lab registry as insecure), a manager and two workers; the service runs
# examples/hello with host networking, two replicas, at most one per node.
# kiln runs the same image with two replicas on its three agents. Each
# round, a node holding a replica is killed whole (SIGKILL to its daemon or
# agent, its containerd, shims, load balancer and instances), and the time
# until the replica serves on the third node is taken.
# Usage: bench/swarm.sh [ROUNDS]
set -euo pipefail
ROUNDS=${1:-3}
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup docker.io etcd-server docker-registry
bench_workdir swarm
export LAB=ksw NET=10.77.0
lab=$work/lab
kiln=$root/target/release/kiln
export KILN=$kiln
lan() { nsenter --net="/var/run/netns/$LAB-lan" "$@"; }
netns_of() { readlink "/proc/$1/ns/net" 2>/dev/null || true; }
ns_id() { nsenter --net="/var/run/netns/$LAB-h$1" readlink /proc/self/ns/net; }
# Every process in host N's namespace (the whole host, for a kill), but
# those whose command line matches $2 (the other system's, left running).
procs_in() {
  local id; id=$(ns_id "$1")
  for p in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$(netns_of "$p")" = "$id" ] || continue
    [ -n "${2:-}" ] && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qE "$2" && continue
    echo "$p"
  done
}
serving() { lan curl -fs -m 1 "http://$1:8080/" >/dev/null 2>&1; }
cleanup_all() {
  for i in 1 2 3; do
    [ -f "$work/d$i.pid" ] && kill "$(cat "$work/d$i.pid")" 2>/dev/null || true
  done
  sleep 2
  bash scripts/fleet-lab.sh down "$lab" >/dev/null 2>&1 || true
  # dockerd's own mounts (namespace files, the data root) under $work.
  for m in $(awk -v w="$work" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do umount -l "$m" || true; done
  bench_cleanup
}
trap cleanup_all EXIT
bash scripts/fleet-lab.sh up "$lab" >/dev/null

# ---- the image, in the lab's registry ----
./scripts/build-demo.sh >/dev/null
mkdir -p "$work/src/bin"
cp examples/hello/bin/demo-app "$work/src/bin/"
sed -e 's/0.1.0/1.0.0/g' -e '/^\[service/,$d' examples/hello/kiln.toml >"$work/src/image.toml"
cat "$lab/kiln.toml" "$work/src/image.toml" >"$work/src/kiln.toml"
(cd "$work/src" && KILN_HOME=$work/home "$kiln" bake >/dev/null)
(cd "$work/src" && KILN_HOME=$work/home lan "$kiln" push hello:1.0.0 "$NET.1:5000/demo/hello:1.0.0" >/dev/null 2>&1)
digest=$(KILN_HOME=$work/home "$kiln" inspect hello:1.0.0 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])')
cluster="http://$NET.11:2379,http://$NET.12:2379,http://$NET.13:2379"

# ---- Docker Swarm ----
start_dockerd() {
  local i=$1
  mkdir -p "$work/d$i"
  printf '{"data-root":"%s/d%s/data","exec-root":"%s/d%s/exec","pidfile":"%s/d%s/pid","hosts":["unix://%s/d%s/sock"],"bridge":"none","iptables":false,"ip-forward":false,"ip-masq":false,"insecure-registries":["%s.1:5000"],"storage-driver":"vfs"}\n' \
    "$work" "$i" "$work" "$i" "$work" "$i" "$work" "$i" "$NET" >"$work/d$i.json"
  nsenter --net="/var/run/netns/$LAB-h$i" dockerd --config-file "$work/d$i.json" >"$work/d$i.log" 2>&1 &
  echo $! >"$work/d$i.pid"
  for _ in $(seq 100); do docker -H "unix://$work/d$i/sock" info >/dev/null 2>&1 && return; sleep 0.1; done
  echo "dockerd $i never started" >&2; exit 1
}
dk() { local i=$1; shift; docker -H "unix://$work/d$i/sock" "$@"; }
for i in 1 2 3; do start_dockerd "$i"; done
dk 1 swarm init --advertise-addr "$NET.11" >/dev/null
token=$(dk 1 swarm join-token -q worker)
for i in 2 3; do dk "$i" swarm join --advertise-addr "$NET.1$i" --token "$token" "$NET.11:2377" >/dev/null; done

swarm=()
for r in $(seq "$ROUNDS"); do
  dk 1 service create --detach=false --quiet --name web --replicas 2 --replicas-max-per-node 1 --network host \
    --env HOST=0.0.0.0 --env PORT=8080 --stop-grace-period 1s "$NET.1:5000/demo/hello:1.0.0" >/dev/null
  # A worker holding a replica dies; its replica goes to the node that has none.
  victim=""; spare=""
  for i in 1 2 3; do
    if [ "$(dk "$i" ps -q | wc -l)" -gt 0 ]; then [ "$i" != 1 ] && victim=$i; else spare=$i; fi
  done
  [ -n "$victim" ] && [ -n "$spare" ] || { echo "swarm placed no replica on a worker" >&2; exit 1; }
  # shellcheck disable=SC2046
  t=$(ms); kill -9 $(procs_in "$victim" '^[^ ]*/kiln |^etcd ') 2>/dev/null || true
  until serving "$NET.1$spare"; do sleep 0.05; done
  swarm+=($(( $(ms) - t )))
  dk 1 service rm web >/dev/null
  until ! serving "$NET.1$spare" && ! serving "$NET.11"; do sleep 0.2; done
  start_dockerd "$victim"
  until [ "$(dk 1 node ls --format '{{.Status}}' | grep -c Ready)" = 3 ]; do sleep 0.2; done
  # The dead node's old registration stays Down: removed.
  for n in $(dk 1 node ls --format '{{.ID}} {{.Status}}' | awk '$2=="Down"{print $1}'); do dk 1 node rm "$n" >/dev/null; done
done
for i in 1 2 3; do kill "$(cat "$work/d$i.pid")" 2>/dev/null || true; rm -f "$work/d$i.pid"; done
sleep 3

# ---- kiln ----
kilnr=()
port_on() { KILN_HOME=$work/home lan "$kiln" hosts --cluster "$cluster" --json | python3 -c "import json,sys; print(next((p['port'] for h in json.load(sys.stdin) if h['name']=='h$1' for p in h['placed']), ''))"; }
for r in $(seq "$ROUNDS"); do
  KILN_HOME=$work/home lan "$kiln" place --cluster "$cluster" --service web --replicas 2 -e HOST=0.0.0.0 \
    --health /healthz "$NET.1:5000/demo/hello@$digest" >/dev/null
  until [ -n "$(port_on 1)$(port_on 2)" ] && [ "$( (port_on 1; port_on 2; port_on 3) | grep -c .)" = 2 ]; do sleep 0.2; done
  victim=""; spare=""
  for i in 1 2 3; do if [ -n "$(port_on "$i")" ]; then victim=$i; else spare=$i; fi; done
  # shellcheck disable=SC2046
  t=$(ms); kill -9 $(procs_in "$victim") 2>/dev/null || true
  until p=$(port_on "$spare") && [ -n "$p" ] && lan curl -fs -m 1 "http://$NET.1$spare:$p/healthz" >/dev/null 2>&1; do sleep 0.05; done
  kilnr+=($(( $(ms) - t )))
  KILN_HOME=$work/home lan "$kiln" place --cluster "$cluster" --service web --replicas 0 "$NET.1:5000/demo/hello@$digest" >/dev/null
  until [ "$( (port_on 1; port_on 2; port_on 3) | grep -c .)" = 0 ]; do sleep 0.2; done
  # The killed host comes back: its etcd member, agent and controller.
  KILN_HOME=$lab/h$victim
  nsenter --net="/var/run/netns/$LAB-h$victim" etcd --name "m$victim" --data-dir "$lab/etcd-m$victim" \
    --listen-client-urls "http://$NET.1$victim:2379" --advertise-client-urls "http://$NET.1$victim:2379" \
    --listen-peer-urls "http://$NET.1$victim:2380" --initial-advertise-peer-urls "http://$NET.1$victim:2380" \
    --initial-cluster "m1=http://$NET.11:2380,m2=http://$NET.12:2380,m3=http://$NET.13:2380" \
    --initial-cluster-state existing --heartbeat-interval 100 --election-timeout 1000 >"$work/etcd-back.log" 2>&1 &
  echo "$! etcd-m$victim" >>"$lab/pids"
  for w in agent controller; do
    args=(agent --name "h$victim" --advertise "$NET.1$victim" --file "$lab/kiln.toml")
    [ $w = controller ] && args=(controller --name "c$victim")
    KILN_HOME=$lab/h$victim nsenter --net="/var/run/netns/$LAB-h$victim" "$kiln" "${args[@]}" --cluster "$cluster" --ttl 2 \
      >"$work/$w-back.log" 2>&1 &
    echo "$! $w-h$victim" >>"$lab/pids"
  done
  until [ "$(KILN_HOME=$work/home lan "$kiln" hosts --cluster "$cluster" --json | grep -c '"name"')" = 3 ]; do sleep 0.2; done
done

python3 - "${swarm[*]}" "${kilnr[*]}" <<'PY'
import statistics, sys
swarm, kiln = ([int(x) for x in a.split()] for a in sys.argv[1:3])
print("host loss → serving on the third node, three network namespaces, 2 replicas:")
print("  Docker Swarm 20.10 (defaults): median %6d ms, runs %s" % (statistics.median(swarm), swarm))
print("  kiln (2 s leases):             median %6d ms, runs %s" % (statistics.median(kiln), kiln))
print("  kiln / Swarm: %.2f" % (statistics.median(kiln) / statistics.median(swarm)))
PY
