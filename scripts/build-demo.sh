#!/usr/bin/env bash
# Builds examples/demo-app as a static binary (it must run in a scratch
# image) and installs it where examples/hello/kiln.toml expects it.
# Paths are remapped so the binary is the same whatever the checkout path.
set -euo pipefail
cd "$(dirname "$0")/.."
triple=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$PWD=/src" \
  cargo build --quiet --release --locked -p demo-app --target "$triple"
install -D -m 0755 "target/$triple/release/demo-app" examples/hello/bin/demo-app
echo "examples/hello/bin/demo-app"
