#!/usr/bin/env bash
# kiln's main job on the bundled example: install what it needs, build kiln
# and the demo app, bake examples/hello into the store, show the result
# through kiln and through skopeo (a standard OCI tool), then run it as an
# immutable instance, ask it over HTTP, show its logs, and remove it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --quiet --release --locked -p kiln
./scripts/build-demo.sh >/dev/null
kiln=target/release/kiln
export KILN_HOME="${KILN_HOME:-$HOME/.local/share/kiln}"
echo "== kiln bake (store: $KILN_HOME/store)"
$kiln bake -f examples/hello/kiln.toml
echo "== kiln images"
$kiln images
echo "== kiln inspect hello:0.1.0"
$kiln inspect hello:0.1.0
echo "== skopeo inspect oci:$KILN_HOME/store:hello:0.1.0"
skopeo inspect "oci:$KILN_HOME/store:hello:0.1.0"
echo "== kiln run hello:0.1.0"
id=$($kiln run hello:0.1.0 -e HOST=127.0.0.1 --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["id"], r["port"])')
set -- $id
$kiln ps
echo "== curl http://127.0.0.1:$2/"
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$2/" && break; sleep 0.1; done
echo "== kiln stop $1; kiln logs --instance $1"
$kiln stop "$1" >/dev/null
$kiln logs --instance "$1"
$kiln rm "$1" >/dev/null
echo "== kiln plan -f examples/hello/kiln.toml (what releasing it would do; changes nothing)"
$kiln plan -f examples/hello/kiln.toml
echo "== kiln history --verify"
$kiln history --verify
