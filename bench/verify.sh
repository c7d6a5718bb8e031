#!/usr/bin/env bash
# bench/verify.sh: the verify gates' speed.
#   1. The test gate on examples/hello (`kiln test`: boot, health, checks,
#      teardown, record), $RUNS times (default 5): median wall time.
#   2. Secret-scan throughput: an image of $MB MB (default 100) of text and
#      hex noise in four layers; `kiln scan-secrets` next to Yelp's
#      detect-secrets (PyPI) on $REF_FILES (default 5) of the same files
#      (it is too slow for all), both on one core (taskset); MB/s each.
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
