#!/usr/bin/env bash
# The headless browser of the web page's tests (tests/browser): Debian's chromium and chromium-driver.
# Nothing to do when both are there; otherwise installed with apt (as root, or through sudo).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
as_root=()
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "install-browser: chromium and chromium-driver are missing and there is no sudo:" \
      "install them (apt-get install chromium chromium-driver) for tests/browser" >&2
    exit 0
  fi
  as_root=(sudo -n)
fi
echo "installing chromium and chromium-driver for the web page's tests"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq chromium chromium-driver >/dev/null
