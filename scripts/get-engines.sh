#!/usr/bin/env bash
# Builds the other engines that scripts/compare-engines.sh compares Coil with, outside the repo:
#
#   scripts/get-engines.sh [DIR]        (default ../engines; prints the variables to export)
#
# - llama.cpp: the source vendored in PyPI's llama-cpp-python sdist (GitHub is not needed),
#   checked against PyPI's sha256, built for the CPU with cmake (llama-bench only; ~15 min on
#   2 cores). Converting the weights needs a python with torch, numpy and safetensors (PYTHON).
# - candle: benches/engines/candle-mamba2, an adapter over candle-transformers' models::mamba2
#   with the same command line as Coil's `throughput` (~10 min; its own target folder in DIR).
# Nothing of theirs lands in the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
dir=$(mkdir -p "${1:-../engines}" && cd "${1:-../engines}" && pwd)
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
python=${PYTHON:-python3}
jobs=${JOBS:-$(nproc)}

command -v cmake >/dev/null && command -v g++ >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake g++ >/dev/null; }

src=$dir/llama_cpp_python-$version/vendor/llama.cpp
if [[ ! -x $src/build/bin/llama-bench ]]; then
    read -r url sha < <("$python" - "$version" <<'PY'
import json, sys, urllib.parse, urllib.request
# The project's JSON, not the version's (/pypi/NAME/VERSION/json): some mirrors answer only the former.
# Its file URLs can be relative to the JSON's (a mirror's are).
index = "https://pypi.org/pypi/llama-cpp-python/json"
files = json.load(urllib.request.urlopen(index))["releases"][sys.argv[1]]
sdist = next(f for f in files if f["packagetype"] == "sdist")
print(urllib.parse.urljoin(index, sdist["url"]), sdist["digests"]["sha256"])
PY
)
    curl -sSL -o "$dir/llama-cpp-python.tar.gz" "$url"
    echo "$sha  $dir/llama-cpp-python.tar.gz" | sha256sum -c --quiet
    tar xzf "$dir/llama-cpp-python.tar.gz" -C "$dir"
    grep -q LLM_ARCH_MAMBA2 "$src/src/llama-arch.h" || { echo "llama.cpp in llama-cpp-python $version has no Mamba-2" >&2; exit 1; }
    cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
    # gcc's warnings on ggml's AVX-512 kernels run to thousands of lines: kept in a log, shown on failure.
    cmake --build "$src/build" -j "$jobs" --target llama-bench >"$dir/llama-build.log" 2>&1 || { tail -40 "$dir/llama-build.log" >&2; exit 1; }
fi
ln -sfn "$src" "$dir/llama.cpp"

target=${CANDLE_TARGET:-$dir/candle-target}
cargo build --release --locked -j "$jobs" --manifest-path "$repo/benches/engines/candle-mamba2/Cargo.toml" --target-dir "$target"

echo "export LLAMA_CPP=$dir/llama.cpp"
echo "export CANDLE_MAMBA2=$target/release/candle-mamba2"
