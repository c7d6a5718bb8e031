#!/usr/bin/env bash
# kiln's main job on the bundled example: install what it needs, build kiln
# and the demo app, bake examples/hello into the store, and show the result
# through kiln and through skopeo (a standard OCI tool).
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
skopeo inspect "oci:$KILN_HOME/store:hello:0.1.0" | head -n 20
