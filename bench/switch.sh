#!/usr/bin/env bash
# bench/switch.sh: errors and stalls under load (wrk, 32 connections)
#   1. while all traffic switches between two backends 20 times (every 100 ms):
#      kiln through its admin API, nginx by rewriting its config and
#      reloading, HAProxy through its runtime API (server states);
#   2. while one of two backends is killed with SIGKILL.
# Prints requests, errors (socket errors + non-2xx) and the maximum latency.
# Usage: bench/switch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup wrk nginx haproxy
bench_workdir switch
# Prints the backend's pid; callers record it (a $(...) subshell cannot).
backend() { HOST=127.0.0.1 PORT=$1 DEMO_VERSION=$2 examples/hello/bin/demo-app >/dev/null 2>&1 & echo $!; }
load() { wrk -t2 -c32 -d"$1"s --latency "http://127.0.0.1:$2/" > "$3" 2>&1 & load_pid=$!; }
summary() {
  python3 - "$1" "$2" "$3" <<'PY'
import re, sys
name, scenario, f = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
total = int(re.search(r"(\d+) requests in", f).group(1))
non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", f) or [0, 0])[1])
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", f)
sock = sum(int(x) for x in sock.groups()) if sock else 0
mx = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", f).group(1)
print(f"{name:<8} {scenario:<7} {total:>9} {non2xx + sock:>7} {mx:>10}")
PY
}
echo "proxy    case     requests  errors  max lat"

# ---- kiln ----
A=$(port); B=$(port); K=$(port); KA=$(port)
pids+=("$(backend $A a)"); pids+=("$(backend $B b)"); wait_port $A; wait_port $B
"$root/target/release/kiln" proxy --listen 127.0.0.1:$K --admin 127.0.0.1:$KA --release a=100@127.0.0.1:$A --release b=0@127.0.0.1:$B 2>/dev/null & pids+=($!)
wait_port $K; wait_port $KA
load 3 $K "$work/kiln-switch"; sleep 0.3
for i in $(seq 20); do
  if [ $((i % 2)) = 1 ]; then w='{"a":0,"b":100}'; else w='{"a":100,"b":0}'; fi
  curl -s -o /dev/null -X PUT "127.0.0.1:$KA/weights" -d "$w"; sleep 0.1
done; wait "$load_pid"
summary kiln switch "$work/kiln-switch"

# ---- nginx ----
NA=$(port); NB=$(port); N=$(port); mkdir -p "$work/nginx/logs"
pids+=("$(backend $NA a)"); pids+=("$(backend $NB b)"); wait_port $NA; wait_port $NB
conf() { cat > "$work/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http { access_log off; upstream b { $1 keepalive 64; }
  server { listen 127.0.0.1:$N; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
}
conf "server 127.0.0.1:$NA;"
nginx -p "$work/nginx" -c "$work/nginx.conf" & pids+=($!); wait_port $N
load 3 $N "$work/nginx-switch"; sleep 0.3
for i in $(seq 20); do
  if [ $((i % 2)) = 1 ]; then conf "server 127.0.0.1:$NB;"; else conf "server 127.0.0.1:$NA;"; fi
  nginx -p "$work/nginx" -c "$work/nginx.conf" -s reload 2>/dev/null; sleep 0.1
done; wait "$load_pid"
summary nginx switch "$work/nginx-switch"

# ---- HAProxy ----
HA=$(port); HB=$(port); H=$(port)
ha_pid=$(backend $HA a); pids+=("$ha_pid"); pids+=("$(backend $HB b)"); wait_port $HA; wait_port $HB
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn 8000
  stats socket $work/haproxy.sock mode 600 level admin
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  retries 3
  option redispatch
frontend f
  bind 127.0.0.1:$H
  default_backend b
backend b
  http-reuse always
  server a 127.0.0.1:$HA
  server b 127.0.0.1:$HB disabled
CONF
haproxy -f "$work/haproxy.cfg" -db 2>/dev/null & pids+=($!); wait_port $H
hacmd() { python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode()+b'\n'); s.recv(4096)" "$work/haproxy.sock" "$1"; }
load 3 $H "$work/haproxy-switch"; sleep 0.3
for i in $(seq 20); do
  if [ $((i % 2)) = 1 ]; then hacmd "set server b/b state ready"; hacmd "set server b/a state maint"
  else hacmd "set server b/a state ready"; hacmd "set server b/b state maint"; fi
  sleep 0.1
done; wait "$load_pid"
summary haproxy switch "$work/haproxy-switch"

# ---- a backend killed, both sides: fresh backends per proxy ----
KA2=$(port); KB2=$(port); victim=$(backend $KA2 a); pids+=("$victim"); pids+=("$(backend $KB2 b)"); wait_port $KA2; wait_port $KB2
curl -s -o /dev/null -X PUT "127.0.0.1:$KA/releases" -d "[{\"release\":\"w\",\"weight\":100,\"backends\":[\"127.0.0.1:$KA2\",\"127.0.0.1:$KB2\"]}]"
load 3 $K "$work/kiln-kill"; sleep 1; kill -9 "$victim"; wait "$load_pid"
summary kiln kill "$work/kiln-kill"

NA2=$(port); NB2=$(port); victim=$(backend $NA2 a); pids+=("$victim"); pids+=("$(backend $NB2 b)"); wait_port $NA2; wait_port $NB2
conf "server 127.0.0.1:$NA2; server 127.0.0.1:$NB2;"; nginx -p "$work/nginx" -c "$work/nginx.conf" -s reload; sleep 0.5
load 3 $N "$work/nginx-kill"; sleep 1; kill -9 "$victim"; wait "$load_pid"
summary nginx kill "$work/nginx-kill"

hacmd "set server b/a state ready"; hacmd "set server b/b state ready"; sleep 0.3
load 3 $H "$work/haproxy-kill"; sleep 1; kill -9 "$ha_pid"; wait "$load_pid"
summary haproxy kill "$work/haproxy-kill"
