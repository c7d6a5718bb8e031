#!/usr/bin/env bash
# bench/sandbox.sh: what the default sandbox (seccomp allow-list, no
# capabilities, a user namespace with an idmapped root) costs an instance,
# against the same image with `seccomp = "unconfined"` and with
# `userns = false` as well, interleaved in one run (and the start of the
# same table handed to runc as an OCI profile, as before kiln compiled it):
#   - start → serving: `kiln run` until the demo app answers HTTP (median);
#   - requests/s and p99 straight to the instance with wrk (64 keep-alive
#     connections, 2 threads), median of ROUNDS rounds;
#   - the same through a `kiln proxy` in front of the instance (proxied
#     latency, as a service's clients see it).
# Prints both and the ratios. Usage: bench/sandbox.sh [RUNS] [ROUNDS] [SECONDS]
# (defaults 20, 3, 5). Needs root, runc and wrk.
set -euo pipefail
RUNS=${1:-20}
ROUNDS=${2:-3}
SECS=${3:-5}
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup runc wrk
work=$(mktemp -d /tmp/kiln-bench-sandbox.XXXXXX)
export KILN_HOME=$work/home
kiln="$root/target/release/kiln"
cleanup() {
  for id in $("$kiln" ps --all --json 2>/dev/null | python3 -c 'import json,sys; [print(r["id"]) for r in json.load(sys.stdin)["instances"]]' 2>/dev/null); do
    "$kiln" rm --force "$id" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
"$kiln" bake -f examples/hello/kiln.toml >/dev/null 2>&1
cat >"$work/kiln.toml" <<'EOF'
[service.on]
image = "hello:0.1.0"
env = { HOST = "127.0.0.1" }

[service.nofilter]
image = "hello:0.1.0"
env = { HOST = "127.0.0.1" }
seccomp = "unconfined"

[service.off]
image = "hello:0.1.0"
env = { HOST = "127.0.0.1" }
seccomp = "unconfined"
userns = false

[service.runc]
image = "hello:0.1.0"
env = { HOST = "127.0.0.1" }
seccomp = "default-profile.json"
EOF
# The same default table as an OCI profile, which runc compiles at each
# start: what the filter cost before kiln compiled it itself.
python3 - crates/kiln/src/runtime/seccomp.rs "$work/default-profile.json" <<'PY'
import json, re, sys
src = open(sys.argv[1]).read()
names = re.findall(r'"([a-z0-9_]+)"', src[src.index("const ALLOWED"):src.index("/// `clone`")])
rules = [{"names": names, "action": "SCMP_ACT_ALLOW"},
         {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
          "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}]
rules += [{"names": ["personality"], "action": "SCMP_ACT_ALLOW",
           "args": [{"index": 0, "value": p, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}
          for p in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF)]
json.dump({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "architectures": ["SCMP_ARCH_X86_64"],
           "syscalls": rules}, open(sys.argv[2], "w"))
PY

python3 - "$RUNS" "$ROUNDS" "$SECS" "$kiln" "$work/kiln.toml" "$root/bench" <<'PY'
import json, re, statistics, subprocess, sys, time
sys.path.insert(0, sys.argv[-1])
from http_ready import answered, free_port

runs, rounds, secs, kiln, spec = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]

def start(service):
    t = time.monotonic()
    out = subprocess.run([kiln, "run", "--service", service, "--file", spec, "--json"], check=True, capture_output=True)
    r = json.loads(out.stdout)
    assert answered(r["port"], t + 10), f"{service} did not answer"
    return time.monotonic() - t, r

def rm(r):
    subprocess.run([kiln, "rm", "--force", r["id"]], check=True, capture_output=True)

def unit(v, u):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]

def load(port):
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{secs}s", "--latency", f"http://127.0.0.1:{port}/"],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    return rps, unit(p99.group(1), p99.group(2))

kinds = ("on", "nofilter", "off")
starts = kinds + ("runc",)
for s in starts:  # warm caches (image unpack)
    rm(start(s)[1])
times = {s: [] for s in starts}
for _ in range(runs):
    for s in starts:
        took, r = start(s)
        times[s].append(took)
        rm(r)
rps = {s: [] for s in kinds}
p99 = {s: [] for s in kinds}
prps = {s: [] for s in kinds}
pp99 = {s: [] for s in kinds}
inst = {s: start(s)[1] for s in kinds}
proxies = {}
for s in kinds:
    port = free_port()
    proxies[s] = (port, subprocess.Popen([kiln, "proxy", "--listen", f"127.0.0.1:{port}", "--release",
                                          f"r=1@127.0.0.1:{inst[s]['port']}"], stderr=subprocess.DEVNULL))
    assert answered(port, time.monotonic() + 10), f"the proxy of {s} did not answer"
for _ in range(rounds):
    for s in kinds:
        a, b = load(inst[s]["port"])
        rps[s].append(a)
        p99[s].append(b)
        a, b = load(proxies[s][0])
        prps[s].append(a)
        pp99[s].append(b)
for _, p in proxies.values():
    p.terminate()
    p.wait()
for r in inst.values():
    rm(r)
med = statistics.median
print(f"{'sandbox':<40} {'start ms':>9} {'req/s':>9} {'p99 ms':>7} {'proxied req/s':>13} {'proxied p99':>11}")
names = {"on": "default (seccomp, no caps, userns)", "nofilter": "seccomp unconfined (userns)",
         "off": "seccomp unconfined, userns = false"}
for s in kinds:
    print(f"{names[s]:<40} {med(times[s])*1000:>9.1f} {med(rps[s]):>9.0f} {med(p99[s]):>7.2f} {med(prps[s]):>13.0f} {med(pp99[s]):>11.2f}")
print(f"{'the same table compiled by runc':<40} {med(times['runc'])*1000:>9.1f}")
print(f"kiln's compiled filter / runc compiling it: start {med(times['on'])/med(times['runc']):.3f}")
for s in ("on", "nofilter"):
    print(f"{names[s]} / no sandbox: start {med(times[s])/med(times['off']):.3f}, "
          f"req/s {med(rps[s])/med(rps['off']):.3f}, proxied req/s {med(prps[s])/med(prps['off']):.3f}, "
          f"proxied p99 {med(pp99[s])/med(pp99['off']):.3f} (goal: cost under 5 %)")
PY
