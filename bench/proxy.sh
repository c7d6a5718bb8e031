#!/usr/bin/env bash
# bench/proxy.sh: wrk against the demo backend directly, through kiln,
# nginx (2 workers) and HAProxy (2 threads), interleaved in rounds, at 64
# and 256 connections. Prints requests/s, p50/p99, each proxy's throughput
# ratio to direct, the p99 each proxy adds to direct's, CPU time per
# request (from /proc), and kiln's RSS.
# Usage: bench/proxy.sh [ROUNDS] [SECONDS]   (defaults 3 and 5).
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-5}
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup wrk nginx haproxy
bench_workdir proxy
B=$(port); K=$(port); N=$(port); H=$(port)

HOST=127.0.0.1 PORT=$B examples/hello/bin/demo-app >/dev/null 2>&1 & pids+=($!)
"$root/target/release/kiln" proxy --listen 127.0.0.1:$K --release b=1@127.0.0.1:$B --workers 2 2>/dev/null & pids+=($!); kiln_pid=$!
start_nginx $N "server 127.0.0.1:$B; keepalive 256;"
start_haproxy $H "  http-reuse always
  server s1 127.0.0.1:$B"
for p in $B $K $N $H; do wait_port $p; done

python3 - "$ROUNDS" "$SECS" "$B" "$K" "$N" "$H" "$kiln_pid" "$nginx_pid" "$haproxy_pid" <<'PY'
import os, re, statistics, subprocess, sys
rounds, secs = int(sys.argv[1]), int(sys.argv[2])
ports = dict(zip(["direct", "kiln", "nginx", "haproxy"], sys.argv[3:7]))
pids = {"kiln": int(sys.argv[7]), "nginx": int(sys.argv[8]), "haproxy": int(sys.argv[9])}
tick = os.sysconf("SC_CLK_TCK")

def tree(pid):
    out = [pid]
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except OSError:
        kids = []
    for k in kids:
        out += tree(int(k))
    return out

def cpu(name):
    if name not in pids:
        return 0.0
    total = 0
    for p in tree(pids[name]):
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except OSError:
            pass
    return total / tick

def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        sys.exit(f"unexpected wrk latency {v!r}")
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[m.group(2)]

def run(name, conns):
    c0 = cpu(name)
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{secs}s", "--latency", f"http://127.0.0.1:{ports[name]}/"], capture_output=True, text=True).stdout
    c1 = cpu(name)
    if "Requests/sec" not in out or "50%" not in out:
        sys.exit(f"wrk against {name} at {conns} connections gave no result:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    # The percentile lines of wrk's latency distribution, not a "+/- Stdev" value ending in 50%.
    p50 = ms(re.search(r"^\s+50%\s+(\S+)$", out, re.M).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)$", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return dict(rps=rps, p50=p50, p99=p99, cpu_us=(c1 - c0) * 1e6 / max(total, 1), bad=(errors.group(1) if errors else "0"), sock=(sock.group(1) if sock else ""))

results = {}
for conns in (64, 256):
    for r in range(rounds):
        for name in ports:
            results.setdefault((conns, name), []).append(run(name, conns))
    if conns == 256:
        rss = [l for l in open(f"/proc/{pids['kiln']}/status") if l.startswith("VmHWM")][0].split()[1]

print(f"{'conns':>5} {'target':<8} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'+p99 ms':>7} {'x direct':>8} {'cpu us/req':>10} {'non-2xx':>7}")
for conns in (64, 256):
    direct = statistics.median(x["rps"] for x in results[(conns, "direct")])
    direct_p99 = statistics.median(x["p99"] for x in results[(conns, "direct")])
    for name in ports:
        xs = results[(conns, name)]
        med = lambda k: statistics.median(x[k] for x in xs)
        cpu_s = f"{med('cpu_us'):.1f}" if name != "direct" else "-"
        added = f"{med('p99') - direct_p99:.2f}" if name != "direct" else "-"
        print(f"{conns:>5} {name:<8} {med('rps'):>9.0f} {med('p50'):>7.2f} {med('p99'):>7.2f} {added:>7} {med('rps') / direct:>8.2f} {cpu_s:>10} {xs[-1]['bad']:>7}")
print(f"kiln peak RSS: {int(rss) / 1024:.1f} MiB")
PY
