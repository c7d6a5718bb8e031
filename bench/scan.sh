#!/usr/bin/env bash
# bench/scan.sh: the vulnerability scan against a full-size database.
#   1. A Debian 12 OSV export of $RECORDS records (default 100,000, about
#      osv.dev's Debian export), generated: records shaped as osv.dev's
#      (aliases, summary, details, ranges, a version list, references,
#      Debian's urgency), about ten for each source package of this
#      machine's dpkg database (some affecting the installed version) and
#      the rest for other package names. Zipped as osv.dev publishes it
#      (zip64: over 65,535 entries).
#   2. `kiln db update` from it, served over HTTPS on loopback by
#      `openssl s_server -WWW`: wall time.
#   3. An image of about 200 MB with this machine's dpkg database (its
#      /usr/bin and libraries, every package of /var/lib/dpkg/status);
#      `kiln scan` with kiln's stored database, and with the zip itself
#      (`--db all.zip`): wall time and peak memory (max RSS) of each.
# Goal (issue #23): under 3 s and under 300 MB with the full database.
# Usage: bench/scan.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup
bench_workdir scan
kiln=$root/target/release/kiln
export KILN_HOME=$work/home
RECORDS=${RECORDS:-100000}

# ---- the export ----
mkdir -p "$work/mirror/Debian"
t=$(ms)
python3 - "$work/mirror/Debian/all.zip" "$RECORDS" <<'PY'
import json, random, sys, time, zipfile
out, total = sys.argv[1], int(sys.argv[2])
rnd = random.Random(23)
now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
sources = {}
for para in open("/var/lib/dpkg/status").read().split("\n\n"):
    f = dict(l.split(": ", 1) for l in para.splitlines() if ": " in l and not l.startswith(" "))
    if "Package" not in f:
        continue
    src = f.get("Source", f["Package"]).split(" ")[0]
    ver = f.get("Source", "").split("(")[1].rstrip(")") if "(" in f.get("Source", "") else f["Version"]
    sources[src] = ver
words = "buffer overflow in the parser allows remote attackers to cause a denial of service or possibly execute arbitrary code via crafted input".split()
def record(i, name, fixed):
    cve = "CVE-%d-%05d" % (2000 + i % 25, i)
    versions = ["%d.%d-%d" % (rnd.randint(0, 9), rnd.randint(0, 20), rnd.randint(1, 9)) for _ in range(20)]
    return {
        "id": "DEBIAN-" + cve, "aliases": [cve], "modified": now, "published": now,
        "summary": " ".join(rnd.choice(words) for _ in range(10)),
        "details": " ".join(rnd.choice(words) for _ in range(90)),
        "affected": [{
            "package": {"ecosystem": "Debian:12", "name": name, "purl": "pkg:deb/debian/%s?arch=source" % name},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}] + ([{"fixed": fixed}] if fixed else [])}],
            "versions": versions,
            "ecosystem_specific": {"urgency": rnd.choice(["unimportant", "low", "medium", "high", "not yet assigned"])},
        }],
        "references": [{"type": "ADVISORY", "url": "https://security-tracker.debian.org/tracker/" + cve}] +
                      [{"type": "WEB", "url": "https://example.org/%s/%d" % (name, k)} for k in range(4)],
        "schema_version": "1.6.0",
    }
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
    i, names = 0, sorted(sources)
    for src in names:
        for k in range(10):
            if i >= total:
                break
            # Some fixed after the installed version (findings), most before.
            fixed = sources[src] + "+deb12u9" if k < 2 else ("0.%d" % k if k < 9 else None)
            z.writestr("DEBIAN-CVE-%d.json" % i, json.dumps(record(i, src, fixed), indent=2))
            i += 1
    while i < total:
        z.writestr("DEBIAN-CVE-%d.json" % i, json.dumps(record(i, "pkg%05d" % (i % 20000), "1.%d-1" % (i % 7)), indent=2))
        i += 1
print("export: %d records for %d installed source packages" % (total, len(sources)), file=sys.stderr)
PY
gen=$(( $(ms) - t ))
zip_mb=$(python3 -c "import os,sys; print('%.0f' % (os.path.getsize(sys.argv[1]) / 1e6))" "$work/mirror/Debian/all.zip")

# ---- kiln db update over HTTPS ----
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
  -keyout ca.key -out ca.pem 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout mirror.key -out mirror.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n' > mirror.ext
openssl x509 -req -in mirror.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile mirror.ext \
  -out mirror.pem 2>/dev/null
p=$(port)
(cd "$work/mirror" && exec openssl s_server -WWW -quiet -accept "127.0.0.1:$p" -cert "$work/mirror.pem" -key "$work/mirror.key" </dev/null >/dev/null 2>&1) &
pids+=($!)
wait_port "$p"
t=$(ms); "$kiln" db update --mirror "https://localhost:$p" --ca "$work/ca.pem" --ecosystem Debian >/dev/null; ut=$(( $(ms) - t ))

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
PY
printf '[image.deb]\nfrom = "rootfs:rootfs.tar"\nversion = "1"\n' > kiln.toml
"$kiln" bake >/dev/null
python3 - "$kiln" "$work/mirror/Debian/all.zip" "$gen" "$ut" "$zip_mb" <<'PY'
import json, resource, subprocess, sys, time
kiln, zipf, gen, ut, zip_mb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def measure(args):
    # Each run in a child of its own, so its peak RSS is its own.
    code = ("import resource,subprocess,sys,time,json; t=time.monotonic(); "
            "r=subprocess.run(sys.argv[1:], capture_output=True); "
            "print(json.dumps([time.monotonic()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode, r.stdout.decode()])) ")
    out = subprocess.run([sys.executable, "-c", code] + args, capture_output=True, text=True, check=True).stdout
    return json.loads(out)
def best(args, n=3):
    runs = [measure(args) for _ in range(n)]
    return min(runs, key=lambda r: r[0])
stored = best([kiln, "scan", "deb", "--json"])
report = json.loads(stored[3])
viazip = best([kiln, "scan", "deb", "--db", zipf, "--force", "--json"], 1)
print("export generated: %d ms, %s MB zipped" % (gen, zip_mb))
print("%-48s %8d ms" % ("kiln db update (HTTPS, Debian)", ut))
print("%-48s %8d ms %6d MB  (%d records, %d packages, %d findings, %d failing)" % (
    "kiln scan, stored database (200 MB image)", stored[0] * 1000, stored[1] / 1024,
    report["db"]["advisories"], report["packages"], len(report["findings"]), report["failing"]))
print("%-48s %8d ms %6d MB" % ("kiln scan --db all.zip (every record read)", viazip[0] * 1000, viazip[1] / 1024))
print("goal: under 3000 ms and 300 MB with the full database")
PY
