#!/usr/bin/env bash
# Lints protos/ (buf.yaml: STANDARD) and checks that they break neither the wire format nor the
# generated code of what came before (FILE rules), with the buf CLI of scripts/install-buf.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
buf=build/buf/node_modules/.bin/buf
"$buf" lint

# What came before: on a branch, the commit it left main at (so that main moving on is not read as this
# branch deleting what main added); on main itself, where that is HEAD, the commit before HEAD, so that
# CI on main checks the change it is testing. Uncommitted edits are always part of what is checked.
main=$(git rev-parse -q --verify main^{commit} || git rev-parse -q --verify origin/main^{commit} || true)
base=""
if [ -n "$main" ]; then
  base=$(git merge-base HEAD "$main" 2>/dev/null || true)
fi
if [ -z "$base" ] || [ "$base" = "$(git rev-parse HEAD)" ]; then
  base=$(git rev-parse -q --verify HEAD~1^{commit} || true)
fi
if [ -z "$base" ]; then
  # A shallow clone (or the first commit) has no earlier contracts to compare with.
  echo "check-protos: no earlier commit in this clone: breaking-change check skipped" >&2
  exit 0
fi
"$buf" breaking protos --against ".git#ref=$base,subdir=protos"
