#!/usr/bin/env bash
# A three-host kiln fleet on one machine, each host a network namespace:
#
#   $LAB-lan   a bridge at $NET.1, with Debian's docker-registry on $NET.1:5000
#   $LAB-h1..3 one veth each on that bridge ($NET.11 .12 .13), each with an
#              etcd member, a kiln agent (its own KILN_HOME) and a kiln
#              controller; the agents' instances and load balancers run there
#
# Every kiln and etcd is started with `nsenter --net=/var/run/netns/NAME`,
# which enters the network namespace alone (`ip netns exec` also makes a
# mount namespace with a fresh /sys, where runc finds no cgroup mount).
#
#   fleet-lab.sh up   [DIR]   make the namespaces, start etcd, the registry, agents, controllers
#   fleet-lab.sh demo [DIR]   bake examples/hello 1 and 2, push them, place 3 replicas
#                             behind a load balancer on every host, canary 2 in analysed steps
#   fleet-lab.sh down [DIR]   stop everything it started (by PID) and remove the namespaces
#
# Root, Debian 12: iproute2, etcd-server, docker-registry, runc. DIR defaults to
# /tmp/kiln-fleet-lab; LAB (default kiln) prefixes the namespaces and links,
# NET (default 10.88.0) is the /24 they share; KILN is the kiln binary.
set -euo pipefail
cmd=${1:-up}
dir=${2:-/tmp/kiln-fleet-lab}
LAB=${LAB:-kiln}
NET=${NET:-10.88.0}
root=$(cd "$(dirname "$0")/.." && pwd)
KILN=${KILN:-$root/target/release/kiln}
lan=$LAB-lan
ns() { nsenter --net="/var/run/netns/$1" "${@:2}"; }
cluster="http://$NET.11:2379,http://$NET.12:2379,http://$NET.13:2379"

# Starts a background process in a namespace, its PID kept for `down`
# (nsenter itself, not a subshell: it becomes the command by exec).
start() {
  local name=$1 netns=$2 log=$3
  shift 3
  nsenter --net="/var/run/netns/$netns" "$@" >"$log" 2>&1 &
  echo "$! $name" >>"$dir/pids"
}

up() {
  mkdir -p "$dir"
  : >"$dir/pids"
  ip netns add "$lan"
  ns "$lan" ip link set lo up
  ns "$lan" ip link add br0 type bridge
  ns "$lan" ip addr add "$NET.1/24" dev br0
  ns "$lan" ip link set br0 up
  for i in 1 2 3; do
    ip netns add "$LAB-h$i"
    ip link add "$LAB${i}a" type veth peer name "$LAB${i}b"
    ip link set "$LAB${i}a" netns "$lan"
    ip link set "$LAB${i}b" netns "$LAB-h$i"
    ns "$lan" ip link set "$LAB${i}a" master br0 up
    ns "$LAB-h$i" ip link set "$LAB${i}b" name eth0
    ns "$LAB-h$i" ip addr add "$NET.1$i/24" dev eth0
    ns "$LAB-h$i" ip link set eth0 up
    ns "$LAB-h$i" ip link set lo up
  done
  local initial="m1=http://$NET.11:2380,m2=http://$NET.12:2380,m3=http://$NET.13:2380"
  for i in 1 2 3; do
    start "etcd-m$i" "$LAB-h$i" "$dir/etcd-m$i.log" etcd --name "m$i" --data-dir "$dir/etcd-m$i" \
      --listen-client-urls "http://$NET.1$i:2379" --advertise-client-urls "http://$NET.1$i:2379" \
      --listen-peer-urls "http://$NET.1$i:2380" --initial-advertise-peer-urls "http://$NET.1$i:2380" \
      --initial-cluster "$initial" --initial-cluster-state new \
      --heartbeat-interval 100 --election-timeout 1000
  done
  mkdir -p "$dir/registry"
  printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s:5000\n' \
    "$dir/registry/data" "$NET.1" >"$dir/registry/config.yml"
  start registry "$lan" "$dir/registry.log" docker-registry serve "$dir/registry/config.yml"
  # The lab's registry speaks plain HTTP: kiln is told so, for it alone.
  printf '[registries."%s:5000"]\ninsecure = true\n' "$NET.1" >"$dir/kiln.toml"
  for _ in $(seq 100); do
    ns "$lan" curl -sf "http://$NET.11:2379/health" >/dev/null 2>&1 && break
    sleep 0.2
  done
  for i in 1 2 3; do
    mkdir -p "$dir/h$i"
    start "agent-h$i" "$LAB-h$i" "$dir/agent-h$i.log" env KILN_HOME="$dir/h$i" \
      "$KILN" agent --cluster "$cluster" --name "h$i" --ttl 2 --advertise "$NET.1$i" --file "$dir/kiln.toml"
    start "controller-c$i" "$LAB-h$i" "$dir/controller-c$i.log" env KILN_HOME="$dir/h$i" \
      "$KILN" controller --cluster "$cluster" --name "c$i" --ttl 2
  done
  for _ in $(seq 100); do
    [ "$(ns "$lan" "$KILN" hosts --cluster "$cluster" --json 2>/dev/null | grep -o '"name"' | wc -l)" = 3 ] && break
    sleep 0.2
  done
  ns "$lan" "$KILN" hosts --cluster "$cluster"
  echo "fleet lab up in $dir: etcd $cluster, registry $NET.1:5000; kiln commands: nsenter --net=/var/run/netns/$lan $KILN ..."
}

demo() {
  local src=$dir/src home=$dir/src-home
  mkdir -p "$src/bin" "$home"
  "$root/scripts/build-demo.sh" >/dev/null
  cp "$root/examples/hello/bin/demo-app" "$src/bin/demo-app"
  cp "$dir/kiln.toml" "$src/kiln.toml"
  for v in 1.0.0 2.0.0; do
    # The demo app listens on HOST: every address of its host, here.
    sed -e "s/0.1.0/$v/g" -e '/^\[service/,$d' "$root/examples/hello/kiln.toml" >"$src/image.toml"
    cat "$dir/kiln.toml" "$src/image.toml" >"$src/kiln.toml"
    KILN_HOME=$home "$KILN" bake -f "$src/kiln.toml" >/dev/null
    KILN_HOME=$home ns "$lan" "$KILN" push "hello:$v" "$NET.1:5000/demo/hello:$v" -f "$src/kiln.toml" >/dev/null
  done
  local d1 d2
  d1=$(KILN_HOME=$home "$KILN" inspect hello:1.0.0 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])')
  d2=$(KILN_HOME=$home "$KILN" inspect hello:2.0.0 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])')
  local place=(place --cluster "$cluster" --service hello --replicas 3 --listen 8080 --health /healthz -e HOST=0.0.0.0)
  ns "$lan" "$KILN" "${place[@]}" "$NET.1:5000/demo/hello@$d1"
  for _ in $(seq 150); do
    ok=0
    for i in 1 2 3; do ns "$lan" curl -sf "http://$NET.1$i:8080/" >/dev/null 2>&1 && ok=$((ok + 1)); done
    [ $ok = 3 ] && break
    sleep 0.2
  done
  for i in 1 2 3; do echo "h$i: $(ns "$lan" curl -sf "http://$NET.1$i:8080/")"; done
  echo "== canary 2.0.0: 10 % then 50 %, each step 10 s, judged on every host's counts"
  ns "$lan" "$KILN" "${place[@]}" --canary "$NET.1:5000/demo/hello@$d2" --canary-steps 10,50 --step-interval 10s \
    "$NET.1:5000/demo/hello@$d1"
  # Traffic through all three load balancers while the steps are judged
  # (bounded: a minute at most), counted by version.
  ns "$lan" bash -c "end=\$((SECONDS + 60)); while [ \$SECONDS -lt \$end ] && [ ! -f '$dir/load.stop' ]; do
      for i in 1 2 3; do curl -s http://$NET.1\$i:8080/; echo; done; done" >"$dir/load.out" 2>/dev/null &
  local load=$!
  for _ in $(seq 60); do
    state=$(ns "$lan" "$KILN" services --cluster "$cluster" --json)
    case $state in *'"canary"'*) ;; *) break ;; esac
    sleep 1
  done
  touch "$dir/load.stop"
  wait "$load" || true
  rm -f "$dir/load.stop"
  ns "$lan" "$KILN" services --cluster "$cluster"
  echo "== answers during the canary, by version"
  grep -o 'demo-app [0-9.]*' "$dir/load.out" | sort | uniq -c
  ns "$lan" "$KILN" hosts --cluster "$cluster"
}

down() {
  # The agents' load balancers and instances first (they outlive an agent
  # by design), then what `up` started, by PID.
  for i in 1 2 3; do
    [ -d "$dir/h$i" ] || continue
    for rec in "$dir/h$i"/proxies/*/proxy.json; do
      [ -f "$rec" ] && kill "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$rec")" 2>/dev/null || true
    done
  done
  if [ -f "$dir/pids" ]; then
    while read -r pid name; do
      case $name in agent-*) kill "$pid" 2>/dev/null || true ;; esac
    done <"$dir/pids"
    while read -r pid name; do
      case $name in agent-*) while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done ;; esac
    done <"$dir/pids"
    for i in 1 2 3; do
      [ -d "$dir/h$i" ] || continue
      for id in $(KILN_HOME=$dir/h$i "$KILN" ps --all --json 2>/dev/null | python3 -c 'import json,sys; [print(r["id"]) for r in json.load(sys.stdin)["instances"]]' 2>/dev/null); do
        KILN_HOME=$dir/h$i "$KILN" rm --force "$id" >/dev/null 2>&1 || true
      done
    done
    while read -r pid _; do kill "$pid" 2>/dev/null || true; done <"$dir/pids"
    # Given five seconds to stop, then killed.
    for _ in $(seq 50); do
      alive=0
      while read -r pid _; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$dir/pids"
      [ $alive = 0 ] && break
      sleep 0.1
    done
    while read -r pid _; do kill -9 "$pid" 2>/dev/null || true; done <"$dir/pids"
    rm -f "$dir/pids"
  fi
  for n in "$lan" "$LAB-h1" "$LAB-h2" "$LAB-h3"; do ip netns del "$n" 2>/dev/null || true; done
  echo "fleet lab down"
}

case $cmd in
  up) up ;;
  demo) demo ;;
  down) down ;;
  *) echo "usage: $0 up|demo|down [DIR]" >&2; exit 2 ;;
esac
