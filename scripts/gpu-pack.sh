#!/usr/bin/env bash
# Build here what scripts/gpu-check.sh runs on the GPU machine, for a GPU machine with no Rust
# toolchain and no network (this workplace's H200): the CLI, `throughput`, the GPU test binaries
# and the `ops` bench, stripped and packed into .gpu/pack.tar.xz (about 12 MB: xz -9 finds what the binaries share), with the folder
# the tests were built in (they find their fixtures through it). Then on the GPU machine, with
# `.gpu` carried: `scripts/gpu-check.sh`.
#
# The binaries load libcuda and NVRTC at run time (cudarc's dynamic loading), so they are built
# without a CUDA toolkit; CUDARC_CUDA_VERSION (e.g. 13000) picks the bindings' version, else
# cudarc takes the newest it knows.
set -euo pipefail
cd "$(dirname "$0")/.."

executables() { # cargo's JSON messages -> "target-name path" per executable
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])'
}

rm -rf .gpu && mkdir -p .gpu/bin
# Artifacts as JSON on stdout; compiler errors and warnings rendered on stderr as usual.
json=(-q --locked --message-format=json-render-diagnostics)
{
    cargo build --release "${json[@]}" -p coil -p coil-benches --bins
    cargo test --release --no-run "${json[@]}" -p coil-gpu --test kernels -p coil-ssm --test paths_agree
    cargo test --release --no-run "${json[@]}" -p coil --test golden --test mitigations
    cargo bench --no-run "${json[@]}" -p coil-benches --bench ops
} | executables | while read -r name path; do
    strip -o ".gpu/bin/$name" "$path"
done
# Where the tests' CARGO_MANIFEST_DIR points: gpu-check.sh links it to its checkout if missing.
pwd > .gpu/bin/root
(cd .gpu/bin && ls -l)
tar -C .gpu -cf - bin | xz -9 > .gpu/pack.tar.xz
rm -rf .gpu/bin
ls -l .gpu/pack.tar.xz
