#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests.
# Integration tests use runc, skopeo and umoci for real (as root in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
./scripts/build-demo.sh >/dev/null
cargo test --workspace --locked
