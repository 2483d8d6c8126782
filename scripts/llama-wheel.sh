#!/usr/bin/env bash
# Prints the path of the llama-cpp-python wheel built with $CMAKE_ARGS, building it once per machine.
#
# pip's own wheel cache is keyed by version only, not by the build flags: a wheel cached from a build
# without the multimodal library (-DLLAVA_BUILD=OFF) would be installed again and again. This keeps the
# wheels in a folder per (version, flags) instead: ~/.cache/jan-models/wheels/<hash>/ (JAN_WHEEL_CACHE).
# Compiling takes ~13 minutes on 2 cores; later calls print the path at once.
#
# The flags: $CMAKE_ARGS, by default -DGGML_NATIVE=OFF: a -march=native build turns on Intel AMX kernels
# wherever the CPU advertises AMX, and they crash (SIGSEGV in ggml_backend_amx_mul_mat) in VMs that do
# not grant AMX state; the portable build keeps AVX2/FMA/F16C. GPU builds set their own.
#
# Usage: scripts/llama-wheel.sh PIP (the venv's pip)
set -euo pipefail
cd "$(dirname "$0")/.."
pip=${1:?usage: llama-wheel.sh PIP}
export CMAKE_ARGS=${CMAKE_ARGS:--DGGML_NATIVE=OFF}
req=$(python3 docker/requirements.py pyproject.toml --only llama-cpp-python)
key=$(printf '%s\n%s\n' "$req" "$CMAKE_ARGS" | sha256sum | cut -c1-16)
dir=${JAN_WHEEL_CACHE:-$HOME/.cache/jan-models/wheels}/$key
wheel=$(compgen -G "$dir/llama_cpp_python-${req##*==}-*.whl" | head -n1 || true)
if [ -z "$wheel" ]; then
	echo "building $req with CMAKE_ARGS='$CMAKE_ARGS' (once per machine, ~13 minutes)" >&2
	mkdir -p "$dir.tmp"
	"$pip" wheel -q --no-cache-dir --no-deps "$req" -w "$dir.tmp" >&2
	mkdir -p "$dir"
	mv "$dir.tmp"/llama_cpp_python-*.whl "$dir"/
	rm -rf "$dir.tmp"
	wheel=$(compgen -G "$dir/llama_cpp_python-${req##*==}-*.whl" | head -n1)
	printf '%s\n%s\n' "$req" "$CMAKE_ARGS" >"$dir/flags.txt"
fi
echo "$wheel"
