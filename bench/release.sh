#!/usr/bin/env bash
# bench/release.sh: releases under load (wrk, 8 connections, through the
# service's load balancer), kiln against Docker Swarm.
#   1. kiln blue-green v1 → v2 (3 replicas): deploy wall time, failed requests;
#      then `kiln rollback` (warm): command time, time until a client sees v1,
#      failed requests.
#   2. kiln rolling v1 → v2 (3 replicas, surge-first): wall time, failed requests.
#   3. Docker Swarm (one-node swarm, docker.io from Debian): `docker service
#      update --image` of the same two images, 3 replicas with --network host and
#      PORT from {{.Task.Slot}}, nginx in front; with Swarm's defaults
#      (stop-first) and with --update-order start-first.
# Usage: bench/release.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup wrk nginx docker.io skopeo
bench_workdir release
kiln=$root/target/release/kiln
export KILN_HOME=$work/home
LB=$(port)

image() { demo_image_toml "$1"; }
service() {
  cat <<EOF

[service.web]
image = "web"
env = { HOST = "127.0.0.1" }
replicas = 3
listen = "127.0.0.1:$LB"
strategy = "$1"
drain_timeout = "2s"
keep_previous = "5m"
[service.web.health]
path = "/healthz"
interval = "100ms"
EOF
}
cp examples/hello/bin/demo-app "$work/"
cd "$work"
# Time (ms) until GET / through the load balancer answers with version $1.
until_version() {
  python3 - "$LB" "$1" <<'PY'
import http.client, sys, time
port, want = int(sys.argv[1]), sys.argv[2]
t0 = time.time()
c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
while True:
    c.request("GET", "/")
    if c.getresponse().read().decode().strip().endswith(want):
        print(int((time.time() - t0) * 1000)); break
    if time.time() - t0 > 30:
        print("never"); break
PY
}

start_serve() {
  "$kiln" serve -f kiln.toml 2>"$work/serve.log" & pids+=($!)
  for _ in $(seq 100); do "$kiln" status >/dev/null 2>&1 && return; sleep 0.1; done
  echo "kiln serve did not start" >&2; cat "$work/serve.log" >&2; exit 1
}
stop_all() {
  kiln_stop_all
  rm -rf "$KILN_HOME"
}

echo "case                              wall ms  failed  requests"
# ---- kiln blue-green, then rollback ----
{ image 1.0.0; service blue-green; } > kiln.toml
start_serve
"$kiln" deploy >/dev/null
{ image 2.0.0; service blue-green; } > kiln.toml
wrk -t2 -c8 -d12s "http://127.0.0.1:$LB/" > "$work/bg.wrk" 2>&1 & w=$!
sleep 1; t=$(ms); "$kiln" deploy >/dev/null; t=$(( $(ms) - t )); wait $w
read -r fail total < <(wrk_errors "$work/bg.wrk")
printf "%-32s %8s %7s %9s\n" "kiln blue-green deploy" "$t" "$fail" "$total"
wrk -t2 -c8 -d4s "http://127.0.0.1:$LB/" > "$work/rb.wrk" 2>&1 & w=$!
sleep 1; t=$(ms); "$kiln" rollback >/dev/null; t=$(( $(ms) - t )); seen=$(until_version 1.0.0); wait $w
read -r fail total < <(wrk_errors "$work/rb.wrk")
printf "%-32s %8s %7s %9s\n" "kiln rollback (warm)" "$t" "$fail" "$total"
printf "%-32s %8s\n" "  client sees v1 after (ms)" "$seen"
stop_all

# ---- kiln rolling ----
{ image 1.0.0; service rolling; } > kiln.toml
start_serve
"$kiln" deploy >/dev/null
{ image 2.0.0; service rolling; } > kiln.toml
"$kiln" bake >/dev/null
wrk -t2 -c8 -d15s "http://127.0.0.1:$LB/" > "$work/roll.wrk" 2>&1 & w=$!
sleep 1; t=$(ms); "$kiln" deploy >/dev/null; t=$(( $(ms) - t )); wait $w
read -r fail total < <(wrk_errors "$work/roll.wrk")
printf "%-32s %8s %7s %9s\n" "kiln rolling (surge-first)" "$t" "$fail" "$total"
stop_all

# ---- Docker Swarm ----
swarm_up || exit 0
for v in 1.0.0 2.0.0; do
  { image $v; } > kiln.toml
  "$kiln" bake >/dev/null
  skopeo copy --quiet "oci:$KILN_HOME/store:web:$v" "docker-daemon:bench-web:$v"
done
cat > "$work/nginx.conf" <<EOF
worker_processes 2; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 1024; }
http { access_log off;
  upstream web { server 127.0.0.1:19001; server 127.0.0.1:19002; server 127.0.0.1:19003; keepalive 32; }
  server { listen 127.0.0.1:$LB; location / { proxy_pass http://web; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
KP=$(port); KA=$(port)
# Swarm behind two fronts: nginx with its defaults, and kiln's own proxy
# (static backends, passive ejection, retries): the second shows what
# Swarm's update costs when the load balancer hides all it can.
front() {
  if [ "$1" = nginx ]; then
    nginx -c "$work/nginx.conf"; front_pid=$(cat "$work/nginx.pid"); FP=$LB
  else
    "$kiln" proxy --listen 127.0.0.1:$KP --admin 127.0.0.1:$KA \
      --release web=100@127.0.0.1:19001,127.0.0.1:19002,127.0.0.1:19003 2>/dev/null &
    front_pid=$!; FP=$KP; wait_port $KP
  fi
}
for run in stop-first:nginx stop-first:kiln-proxy start-first:kiln-proxy; do
  order=${run%%:*}; lb=${run##*:}
  docker service create --quiet --name bench-web --replicas 3 --network host \
    --env HOST=127.0.0.1 --env 'PORT=1900{{.Task.Slot}}' bench-web:1.0.0 >/dev/null 2>&1
  for p in 19001 19002 19003; do until [ "$(curl -s "127.0.0.1:$p/" | tail -c 6)" = "1.0.0" ]; do sleep 0.2; done; done
  front "$lb"; sleep 1
  wrk -t2 -c8 -d25s "http://127.0.0.1:$FP/" > "$work/swarm.wrk" 2>&1 & w=$!
  sleep 1; t=$(ms)
  docker service update --update-order "$order" --image bench-web:2.0.0 bench-web >"$work/update.out" 2>&1 || true
  t=$(( $(ms) - t )); wait $w || true
  read -r fail total < <(wrk_errors "$work/swarm.wrk")
  note=$(grep -o 'update paused.*' "$work/update.out" | head -1 | cut -c1-60 || true)
  printf "%-32s %8s %7s %9s  %s\n" "swarm $order ($lb)" "$t" "$fail" "$total" "$note"
  kill "$front_pid" 2>/dev/null || true
  docker service rm bench-web >/dev/null; sleep 3
done
docker swarm leave --force >/dev/null
