#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian/Ubuntu machine:
# the Debian packages named in tests/system-packages.txt (a real browser, Prometheus, ...)
# and the project with its `test` extra. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t wanted < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' tests/system-packages.txt)
missing=()
for pkg in "${wanted[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
python3 -m pip install -q -e '.[test]'
# Write Ember's bytecode cache: an editable install has none, and where PYTHONDONTWRITEBYTECODE
# is set every daemon and worker would compile Ember's modules from source at each start.
python3 -m compileall -q src/ember >/dev/null
