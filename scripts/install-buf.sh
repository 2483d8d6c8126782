#!/usr/bin/env bash
# The buf CLI of `make test` (lint and breaking-change checks of protos/), pinned, installed from npm's
# @bufbuild/buf package into build/buf (git-ignored). Nothing to do when that version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.75.0
prefix=build/buf
buf="$prefix/node_modules/.bin/buf"
if [ -x "$buf" ] && [ "$("$buf" --version 2>/dev/null)" = "$version" ]; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  # Debian's npm (as scripts/install-browser.sh installs chromium: as root, or through sudo).
  as_root=()
  if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "install-buf: npm is missing and there is no sudo: apt-get install npm, to check protos/" >&2
      exit 1
    fi
    as_root=(sudo -n)
  fi
  echo "installing npm (Debian) for the buf CLI"
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" apt-get install -y -qq npm >/dev/null
fi
echo "installing buf $version into $prefix"
mkdir -p "$prefix"
# --ignore-scripts: the package's postinstall only double-checks the binary that npm already picked
# for this platform (an optional dependency), and nothing else needs to run.
npm install --prefix "$prefix" --no-audit --no-fund --ignore-scripts --loglevel=error "@bufbuild/buf@$version"
"$buf" --version >/dev/null
