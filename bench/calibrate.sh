#!/usr/bin/env bash
# bench/calibrate.sh: how often the canary analysis is wrong. Records
# request latencies from three real servers on loopback (kiln's demo app,
# Debian's busybox httpd serving a file, and busybox httpd running a CGI
# script), then replays them through the load balancer's window statistics
# and the real `analysis::judge` for WINDOWS windows per cell of a grid of
# traffic rates (2 to 500 req/s) and canary shares (5 to 50%), with the
# default analysis settings and a 30 s step. Prints per cell and in total:
# false fails on identical versions (goal <= 0.5%), detection of +2 points
# of errors and of a doubled p99 (goal >= 95% once a window holds
# min_requests), and the share judged inconclusive. No anchor (Kayenta,
# Flagger) publishes such figures.
# Usage: bench/calibrate.sh [WINDOWS] [REQUESTS]   (defaults 200 and 20000).
set -euo pipefail
WINDOWS=${1:-200}
REQUESTS=${2:-20000}
cd "$(dirname "$0")/.."
. bench/common.sh
bench_setup busybox-static
cargo build --quiet --release --locked -p kiln --example calibrate
bench_workdir calibrate
cal=$PWD/target/release/examples/calibrate
D=$(port); F=$(port); C=$(port)
mkdir -p "$work/www/cgi-bin"
echo hello > "$work/www/index.html"
printf '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "cgi $QUERY_STRING"\n' > "$work/www/cgi-bin/echo"
chmod +x "$work/www/cgi-bin/echo"
HOST=127.0.0.1 PORT=$D examples/hello/bin/demo-app >/dev/null 2>&1 & pids+=($!)
busybox httpd -f -p 127.0.0.1:$F -h "$work/www" & pids+=($!)
busybox httpd -f -p 127.0.0.1:$C -h "$work/www" & pids+=($!)
for p in $D $F $C; do wait_port $p; done
"$cal" record 127.0.0.1:$D / "$REQUESTS" "$work/demo-app.txt"
"$cal" record 127.0.0.1:$F /index.html "$REQUESTS" "$work/busybox-file.txt"
"$cal" record 127.0.0.1:$C /cgi-bin/echo "$REQUESTS" "$work/busybox-cgi.txt"
cd "$work" && "$cal" replay "$WINDOWS" 30 demo-app.txt busybox-file.txt busybox-cgi.txt
