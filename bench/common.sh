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
  cargo build --quiet --release --locked -p kiln
  ./scripts/build-demo.sh >/dev/null
}

# A scratch directory in $work and a list of pids to end at exit (only
# processes the script started; callers append to `pids`).
bench_workdir() {
  work=$(mktemp -d "/tmp/kiln-bench-$1.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
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
