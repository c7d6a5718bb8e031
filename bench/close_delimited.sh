#!/usr/bin/env bash
# bench/close_delimited.sh: a backend whose answers end when it closes the
# connection (busybox httpd running a CGI script: no Content-Length, no
# chunks), asked by wrk's keep-alive clients directly and through kiln,
# nginx (2 workers) and HAProxy (2 threads), side by side. A proxy that
# re-frames the body as chunked keeps each client connection; one that
# answers `Connection: close` makes every keep-alive client reconnect
# (wrk counts those as read errors). Prints requests/s, p99 and errors.
# Usage: bench/close_delimited.sh [SECONDS] [CONNECTIONS]   (defaults 5, 16).
set -euo pipefail
SECS=${1:-5}
CONNS=${2:-16}
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup wrk nginx haproxy busybox-static
bench_workdir close
B=$(port); K=$(port); N=$(port); H=$(port)

mkdir -p "$work/www/cgi-bin"
printf '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "cgi $QUERY_STRING"\n' >"$work/www/cgi-bin/echo"
chmod +x "$work/www/cgi-bin/echo"
busybox httpd -f -p 127.0.0.1:$B -h "$work/www" & pids+=($!)
"$root/target/release/kiln" proxy --listen 127.0.0.1:$K --release b=1@127.0.0.1:$B --workers 2 2>/dev/null & pids+=($!)
start_nginx $N "server 127.0.0.1:$B;"
start_haproxy $H "  server s1 127.0.0.1:$B"
for p in $B $K $N $H; do wait_port $p; done

python3 - "$SECS" "$CONNS" "$B" "$K" "$N" "$H" <<'PY'
import re, subprocess, sys
secs, conns = int(sys.argv[1]), int(sys.argv[2])
ports = dict(zip(["direct", "kiln", "nginx", "haproxy"], sys.argv[3:7]))

def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[m.group(2)]

print(f"{'target':<8} {'req/s':>8} {'p99 ms':>7} {'requests':>9} {'read err':>8} {'other err':>9}")
for name, port in ports.items():
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{secs}s", "--latency", f"http://127.0.0.1:{port}/cgi-bin/echo?x=1"], capture_output=True, text=True).stdout
    if "Requests/sec" not in out:
        sys.exit(f"wrk against {name} gave no result:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)$", out, re.M).group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    read = int(sock.group(2)) if sock else 0
    other = sum(int(sock.group(i)) for i in (1, 3, 4)) if sock else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    other += int(non2xx.group(1)) if non2xx else 0
    print(f"{name:<8} {rps:>8.0f} {p99:>7.2f} {total:>9} {read:>8} {other:>9}")
PY
