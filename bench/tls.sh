#!/usr/bin/env bash
# bench/tls.sh: HTTPS through kiln, nginx (2 workers) and HAProxy (2
# threads) to the demo backend, each terminating TLS 1.3 with the same
# ECDSA P-256 certificate (nginx and HAProxy with OpenSSL, kiln with
# rustls), interleaved in rounds:
#   - keep-alive HTTPS requests/s and p99 at 64 and 256 connections (wrk);
#   - new TLS handshakes per second (wrk, `Connection: close`: every
#     request a new connection and a full handshake; wrk resumes no session).
#   - HTTP/2 multiplexed requests/s (h2load from nghttp2-client: 64
#     connections, 10 streams each) against nginx and HAProxy.
# Prints each proxy's figures and kiln's ratio to the better of the two.
# Usage: bench/tls.sh [ROUNDS] [SECONDS]   (defaults 3 and 5).
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-5}
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup wrk nginx haproxy openssl nghttp2-client
bench_workdir tls
B=$(port); K=$(port); N=$(port); H=$(port)

cd "$work"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -subj "/CN=bench CA" -days 30 -out ca.pem 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out site.key
openssl req -new -key site.key -subj /CN=bench.test -addext "subjectAltName=DNS:bench.test" -out site.csr
printf 'subjectAltName=DNS:bench.test\n' > ext
openssl x509 -req -in site.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile ext -out site.pem 2>/dev/null
cat site.pem site.key > site.combined.pem
cd "$root"

HOST=127.0.0.1 PORT=$B examples/hello/bin/demo-app >/dev/null 2>&1 & pids+=($!)
"$root/target/release/kiln" proxy --listen 127.0.0.1:$K --release b=1@127.0.0.1:$B --workers 2 \
  --tls-cert "$work/site.pem" --tls-key "$work/site.key" 2>/dev/null & pids+=($!); kiln_pid=$!

mkdir -p "$work/nginx/logs"
cat > "$work/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  # nginx ends a client connection after 1000 requests by default (HTTP/2
  # too); h2load does not reconnect, so the limit is lifted as kiln has none.
  keepalive_requests 1000000;
  upstream b { server 127.0.0.1:$B; keepalive 256; }
  server {
    listen 127.0.0.1:$N ssl http2;
    ssl_certificate $work/site.pem;
    ssl_certificate_key $work/site.key;
    ssl_protocols TLSv1.3;
    ssl_session_cache shared:S:10m;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
nginx -p "$work/nginx" -c "$work/nginx.conf" & pids+=($!); nginx_pid=$!

cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 2
  maxconn 8000
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend f
  bind 127.0.0.1:$H ssl crt $work/site.combined.pem alpn h2,http/1.1
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:$B
CONF
haproxy -f "$work/haproxy.cfg" -db 2>/dev/null & pids+=($!); haproxy_pid=$!
for p in $B $K $N $H; do wait_port $p; done
for p in $K $N $H; do
  curl -sS --fail --tlsv1.3 --cacert "$work/ca.pem" --resolve bench.test:$p:127.0.0.1 "https://bench.test:$p/" >/dev/null
done

python3 - "$ROUNDS" "$SECS" "$K" "$N" "$H" "$kiln_pid" <<'PY'
import re, statistics, subprocess, sys
rounds, secs = int(sys.argv[1]), int(sys.argv[2])
ports = dict(zip(["kiln", "nginx", "haproxy"], sys.argv[3:6]))
kiln_pid = int(sys.argv[6])

def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[m.group(2)]

def run(name, conns, close):
    args = ["wrk", "-t2", f"-c{conns}", f"-d{secs}s", "--latency"]
    if close:
        args += ["-H", "Connection: close"]
    p = subprocess.run(args + [f"https://127.0.0.1:{ports[name]}/"], capture_output=True, text=True)
    out = p.stdout
    if "Requests/sec" not in out:
        sys.exit(f"wrk against {name} ({' '.join(args)}) gave no result:\n{out}{p.stderr}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return dict(rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
                p99=ms(re.search(r"^\s+99%\s+(\S+)$", out, re.M).group(1)),
                bad=int(bad.group(1)) if bad else 0)

cases = [("keep-alive", 64, False), ("keep-alive", 256, False), ("handshakes", 64, True)]
results = {}
for r in range(rounds):
    for case in cases:
        for name in ports:
            results.setdefault((case, name), []).append(run(name, case[1], case[2]))
def h2(name):
    out = subprocess.run(["h2load", "-n", str(20000 * secs), "-c", "64", "-m", "10", "-t", "2",
                          f"https://127.0.0.1:{ports[name]}/"], capture_output=True, text=True).stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded, (\d+) failed", out)
    proto = re.search(r"Application protocol: (\S+)", out)
    if not m or not ok or not proto or proto.group(1) != "h2":
        sys.exit(f"h2load against {name} gave no HTTP/2 result:\n{out}")
    return dict(rps=float(m.group(1)), failed=int(ok.group(2)))
h2res = {}
for r in range(rounds):
    for name in ports:
        h2res.setdefault(name, []).append(h2(name))
rss = [l for l in open(f"/proc/{kiln_pid}/status") if l.startswith("VmHWM")][0].split()[1]
print(f"{'case':<11} {'conns':>5} {'target':<8} {'req/s':>9} {'p99 ms':>7} {'non-2xx':>7}")
for case in cases:
    for name in ports:
        xs = results[(case, name)]
        print(f"{case[0]:<11} {case[1]:>5} {name:<8} {statistics.median(x['rps'] for x in xs):>9.0f} "
              f"{statistics.median(x['p99'] for x in xs):>7.2f} {sum(x['bad'] for x in xs):>7}")
for case in cases:
    med = {n: statistics.median(x["rps"] for x in results[(case, n)]) for n in ports}
    p99 = {n: statistics.median(x["p99"] for x in results[(case, n)]) for n in ports}
    best = max(("nginx", "haproxy"), key=lambda n: med[n])
    print(f"{case[0]} at {case[1]}: kiln / {best} (the better) = {med['kiln'] / med[best]:.2f} req/s; "
          f"p99 kiln {p99['kiln']:.2f} ms vs {p99[best]:.2f} ms")
for name in ports:
    xs = h2res[name]
    print(f"{'h2 -m10':<11} {64:>5} {name:<8} {statistics.median(x['rps'] for x in xs):>9.0f} {'-':>7} {sum(x['failed'] for x in xs):>7}")
h2med = {n: statistics.median(x["rps"] for x in h2res[n]) for n in ports}
best = max(("nginx", "haproxy"), key=lambda n: h2med[n])
print(f"h2 multiplexed: kiln / {best} (the better) = {h2med['kiln'] / h2med[best]:.2f} req/s; kiln / nginx = {h2med['kiln'] / h2med['nginx']:.2f}")
print(f"kiln peak RSS: {int(rss) / 1024:.1f} MiB")
PY
