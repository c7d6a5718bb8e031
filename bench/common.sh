# Sourced by the bench scripts: installs what they need from Debian and
# builds kiln and the demo app in release mode.
# Usage: . bench/common.sh PACKAGE...
bench_setup() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
  cargo build --quiet --release --locked -p kiln
  ./scripts/build-demo.sh >/dev/null
}
