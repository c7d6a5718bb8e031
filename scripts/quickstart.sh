#!/usr/bin/env bash
# kiln's main job on the bundled example, end to end: install what it needs,
# build kiln and the demo app, bake examples/hello into the store and show it
# through kiln and skopeo (a standard OCI tool), test, scan, SBOM and sign it, run it
# once as an immutable instance; then the release loop: kiln serve, deploy v1 behind kiln's load
# balancer, release v2 by canary under traffic, roll back, with kiln status
# and kiln history along the way (and the dashboard's link, the API on
# 127.0.0.1:7070). Everything it started is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --quiet --release --locked -p kiln-cli
./scripts/build-demo.sh >/dev/null
kiln=$PWD/target/release/kiln
export KILN_HOME="${KILN_HOME:-$HOME/.local/share/kiln}"
# The key that seals secrets and signing keys lives outside KILN_HOME
# (README, "Keys at rest"); the quick start makes one if there is none.
export KILN_KEY_FILE="${KILN_KEY_FILE:-$HOME/.config/kiln/key}"
if [ ! -f "$KILN_KEY_FILE" ]; then
  mkdir -p "$(dirname "$KILN_KEY_FILE")"
  (umask 077; openssl rand -hex -out "$KILN_KEY_FILE" 32)
  echo "== made a key-encryption key: $KILN_KEY_FILE (mode 0600, outside KILN_HOME)"
fi
echo "== kiln bake (store: $KILN_HOME/store)"
$kiln bake -f examples/hello/kiln.toml
echo "== kiln images"
$kiln images
echo "== kiln inspect hello:0.1.0"
$kiln inspect hello:0.1.0
echo "== skopeo inspect oci:$KILN_HOME/store:hello:0.1.0"
skopeo inspect "oci:$KILN_HOME/store:hello:0.1.0"
echo "== kiln test hello:0.1.0 (the test gate: a private instance, its checks, a record on the digest)"
$kiln test hello:0.1.0 -f examples/hello/kiln.toml
echo "== kiln scan-secrets hello:0.1.0"
$kiln scan-secrets hello:0.1.0 -f examples/hello/kiln.toml
echo "== kiln scan hello:0.1.0 (offline OSV database; here the tests' fixture of real Debian 12 advisories)"
$kiln scan hello:0.1.0 -f examples/hello/kiln.toml --db crates/kiln-cli/tests/fixtures/osv --force
echo "== kiln sbom hello:0.1.0 (SPDX 2.3 and CycloneDX 1.5, stored on the digest)"
$kiln sbom hello:0.1.0
echo "== kiln key generate; kiln sign hello:0.1.0; kiln verify hello:0.1.0"
[ -f "$KILN_HOME/keys/default.pub" ] || $kiln key generate >/dev/null
$kiln sign hello:0.1.0
$kiln verify hello:0.1.0
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

echo "== kiln serve (the release controller, in the background)"
work=$(mktemp -d)
cleanup() {
  # kiln down drains and destroys the service's instances and stops its
  # load balancer (a script cut short still stops what it started).
  if [ -n "${serve:-}" ]; then
    $kiln down hello -f examples/hello/kiln.toml >/dev/null 2>&1 || true
    kill "$serve" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
$kiln serve -f examples/hello/kiln.toml --tcp 127.0.0.1:7070 2>"$work/serve.log" &
serve=$!
for _ in $(seq 100); do $kiln status >/dev/null 2>&1 && break; sleep 0.1; done
echo "== kiln deploy (v1: hello:0.1.0, two instances behind 127.0.0.1:8080)"
$kiln deploy -f examples/hello/kiln.toml
curl -fsS http://127.0.0.1:8080/
$kiln status
echo "== the dashboard and the API (kiln serve --tcp 127.0.0.1:7070)"
echo "open $($kiln dashboard) in a browser while this runs"
curl -fsS -H "Authorization: Bearer $(cat "$KILN_HOME/serve.token")" http://127.0.0.1:7070/metrics | grep '^kiln_releases_total'
echo "== kiln plan, then kiln deploy of v2 (hello:0.2.0) by canary, under traffic"
sed 's/"0.1.0"/"0.2.0"/g' examples/hello/kiln.toml > "$work/kiln.toml"
mkdir -p "$work/bin" && cp examples/hello/bin/demo-app "$work/bin/"
$kiln bake -f "$work/kiln.toml" >/dev/null
( for _ in $(seq 4000); do curl -s -o /dev/null http://127.0.0.1:8080/ || true; done ) &
traffic=$!
$kiln plan -f "$work/kiln.toml"
$kiln deploy -f examples/hello/kiln.toml --image hello:0.2.0
kill "$traffic" 2>/dev/null || true
curl -fsS http://127.0.0.1:8080/
$kiln status
echo "== kiln rollback (v1 is still warm: one traffic switch)"
$kiln rollback -f examples/hello/kiln.toml
curl -fsS http://127.0.0.1:8080/
$kiln status
echo "== kiln history --verify"
$kiln history --verify
echo "== kiln down hello (drain, destroy its instances, stop its load balancer; history and archive stay)"
$kiln down hello -f examples/hello/kiln.toml
$kiln history hello | tail -n 2
