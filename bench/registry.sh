#!/usr/bin/env bash
# bench/registry.sh: push and pull of a ~200 MB image through Debian's
# docker-registry behind TLS, kiln next to `skopeo copy` of the same image
# (kiln's store is an OCI layout skopeo reads), interleaved, ROUNDS times
# (default 3), each round against an empty registry (so neither side finds
# blobs already there, and kiln has no repository to mount from).
#   push: kiln push REF HOST/kiln/img:1  vs  skopeo copy oci:STORE:REF docker://HOST/skopeo/img:1
#   pull: kiln pull into an empty home  vs  skopeo copy docker://… oci:EMPTY_DIR:img
# The image: four layers of about 50 MB each of this machine's /usr/bin and
# libraries (real binaries, compressible as real images are).
# Goal (issue #23): no slower than skopeo. Usage: bench/registry.sh [ROUNDS]
set -euo pipefail
ROUNDS=${1:-3}
cd "$(dirname "$0")/.."
root=$PWD
. bench/common.sh
bench_setup docker-registry skopeo
bench_workdir registry
kiln=$root/target/release/kiln
export KILN_HOME=$work/home

# ---- the image ----
mkdir -p "$work/src"
cd "$work/src"
python3 - <<'PY'
import os, shutil
limit, total, part = 200 << 20, 0, 0
os.makedirs("p0")
for d in ["/usr/bin", "/usr/lib/x86_64-linux-gnu"]:
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if os.path.islink(p) or not os.path.isfile(p) or total > limit:
            continue
        if total > (part + 1) * (limit // 4):
            part += 1
            os.makedirs("p%d" % part, exist_ok=True)
        shutil.copy(p, "p%d/%s" % (part, name))
        total += os.path.getsize(p)
PY
{
  printf '[image.img]\nfrom = "scratch"\nversion = "1"\ncopy = [\n'
  for d in p*; do printf '  { src = "%s", dest = "/%s/" },\n' "$d" "$d"; done
  printf ']\n'
} > kiln.toml
"$kiln" bake >/dev/null
size=$("$kiln" inspect img:1 --json | python3 -c 'import json,sys; m=json.load(sys.stdin)["manifest"]; print(sum(l["size"] for l in m["layers"]))')

# ---- a TLS registry ----
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
  -keyout ca.key -out ca.pem 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout reg.key -out reg.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n' > reg.ext
openssl x509 -req -in reg.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile reg.ext -out reg.pem 2>/dev/null
mkdir -p certs && cp ca.pem certs/ca.crt
p=$(port)
host=localhost:$p
printf '[registries."%s"]\nca = "%s"\n' "$host" "$work/ca.pem" > "$work/kiln.toml"
start_registry() {
  rm -rf "$work/data"
  cat > "$work/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/data
http:
  addr: 127.0.0.1:$p
  tls:
    certificate: $work/reg.pem
    key: $work/reg.key
YML
  docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
  reg_pid=$!
  pids+=("$reg_pid")
  wait_port "$p"
}
stop_registry() { kill "$reg_pid"; wait "$reg_pid" 2>/dev/null || true; }

kp=(); sp=(); kl=(); sl=()
for r in $(seq "$ROUNDS"); do
  start_registry
  if [ $((r % 2)) -eq 1 ]; then order="kiln skopeo"; else order="skopeo kiln"; fi
  for who in $order; do
    if [ "$who" = kiln ]; then
      t=$(ms); "$kiln" push img:1 "$host/kiln/img:1" -f "$work/kiln.toml" >/dev/null; kp+=($(( $(ms) - t )))
    else
      t=$(ms); skopeo copy --quiet --dest-cert-dir "$work/certs" "oci:$KILN_HOME/store:img:1" "docker://$host/skopeo/img:1"; sp+=($(( $(ms) - t )))
    fi
  done
  for who in $order; do
    if [ "$who" = kiln ]; then
      rm -rf "$work/pullhome"
      t=$(ms); KILN_HOME=$work/pullhome "$kiln" pull "$host/kiln/img:1" -f "$work/kiln.toml" >/dev/null; kl+=($(( $(ms) - t )))
    else
      rm -rf "$work/pulled"
      t=$(ms); skopeo copy --quiet --src-cert-dir "$work/certs" "docker://$host/skopeo/img:1" "oci:$work/pulled:img"; sl+=($(( $(ms) - t )))
    fi
  done
  stop_registry
done
python3 - "$size" "${kp[*]}" "${sp[*]}" "${kl[*]}" "${sl[*]}" <<'PY'
import statistics, sys
size = int(sys.argv[1])
kp, sp, kl, sl = ([int(x) for x in a.split()] for a in sys.argv[2:6])
print("image: %.0f MB compressed in its layers" % (size / 1e6))
for what, k, s in (("push", kp, sp), ("pull", kl, sl)):
    mk, ms_ = statistics.median(k), statistics.median(s)
    print("%-5s kiln %6d ms (%.0f MB/s)   skopeo %6d ms (%.0f MB/s)   kiln/skopeo time %.2f   runs kiln %s skopeo %s" % (
        what, mk, size / 1e3 / mk, ms_, size / 1e3 / ms_, mk / ms_, k, s))
print("goal: kiln/skopeo time <= 1.00")
PY
