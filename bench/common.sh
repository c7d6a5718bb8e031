# Sourced by the bench scripts: installs what they need from Debian and
# builds kiln and the demo app in release mode.
# Usage: . bench/common.sh PACKAGE...
bench_setup() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
  cargo build --quiet --release --locked -p kiln-cli
  ./scripts/build-demo.sh >/dev/null
}

# A scratch directory in $work and a list of pids to end at exit (only
# processes the script started; callers append to `pids`).
bench_workdir() {
  work=$(mktemp -d "/tmp/kiln-bench-$1.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
  # Secrets and signing keys are sealed by a key outside KILN_HOME.
  mkdir -p "$work/kek"
  (umask 077; openssl rand -hex -out "$work/kek/key" 32)
  export KILN_KEY_FILE="$work/kek/key"
}
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
# A free port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits until something listens on 127.0.0.1:$1 (5 s at most).
wait_port() {
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done
  echo "port $1 never opened" >&2
  exit 1
}

# Starts nginx (2 workers, no access log) on 127.0.0.1:$1 proxying HTTP/1.1
# to the upstream lines in $2 (e.g. "server 127.0.0.1:8080; keepalive 256;");
# sets nginx_pid.
start_nginx() {
  mkdir -p "$work/nginx/logs"
  cat > "$work/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream b { $2 }
  server {
    listen 127.0.0.1:$1;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
  nginx -p "$work/nginx" -c "$work/nginx.conf" & pids+=($!); nginx_pid=$!
}
# Starts HAProxy (2 threads, keep-alive HTTP mode) on 127.0.0.1:$1 with the
# backend lines in $2 (e.g. "server s1 127.0.0.1:8080"); sets haproxy_pid.
start_haproxy() {
  cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend f
  bind 127.0.0.1:$1
  default_backend b
backend b
$2
CONF
  haproxy -f "$work/haproxy.cfg" -db 2>/dev/null & pids+=($!); haproxy_pid=$!
}

# Unix milliseconds.
ms() { python3 -c "import time; print(int(time.time()*1000))"; }
# "FAILED TOTAL" from a wrk output file: non-2xx/3xx answers plus socket errors.
wrk_errors() {
  python3 - "$1" <<'PY'
import re, sys
f = open(sys.argv[1]).read()
non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", f) or [0, 0])[1])
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", f)
print(non2xx + (sum(int(x) for x in sock.groups()) if sock else 0), re.search(r"(\d+) requests in", f).group(1))
PY
}
# Ends this script's kiln serve (the last pid), the proxies it started and
# every instance of $KILN_HOME.
kiln_stop_all() {
  kill "${pids[-1]}" 2>/dev/null || true
  for p in "$KILN_HOME"/proxies/*/proxy.json; do
    [ -f "$p" ] && kill "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$p")" 2>/dev/null || true
  done
  for i in $("$kiln" ps --json | python3 -c 'import json,sys; [print(r["id"]) for r in json.load(sys.stdin)["instances"]]'); do
    "$kiln" rm --force "$i" >/dev/null || true
  done
}
# Starts dockerd if none runs (ours: ended by PID at exit) and a one-node
# swarm; returns 1 (with the reason) if the swarm cannot start.
swarm_up() {
  if ! docker info >/dev/null 2>&1; then
    dockerd >"$work/dockerd.log" 2>&1 & pids+=($!)
    for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
  fi
  if ! docker swarm init --advertise-addr 127.0.0.1 >"$work/swarm.log" 2>&1; then
    echo "swarm: docker swarm init failed: $(tail -1 "$work/swarm.log")"
    return 1
  fi
}

# The demo app alone in a scratch image, as kiln.toml's [image.web] at
# version $1 (default 1.0.0); the script copies demo-app next to it.
demo_image_toml() {
  local v=${1:-1.0.0}
  cat <<TOML
[image.web]
from = "scratch"
version = "$v"
copy = [{ src = "demo-app", dest = "/demo-app", mode = "0755" }]
entrypoint = ["/demo-app"]
env = { DEMO_VERSION = "$v" }
user = "65534:65534"
TOML
}
