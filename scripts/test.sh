#!/usr/bin/env bash
# The test command of the README: sets up what a fresh Debian machine lacks, then builds and runs
# every test. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: a C compiler and pkg-config for crates with build scripts. Installed only when
# missing, so a developer machine is left alone.
missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "missing system packages: ${missing[*]} (run as root, or install them)" >&2
        exit 1
    fi
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }

# The GPU kernels are tested on wgpu; without a GPU that is Mesa's software Vulkan driver
# (lavapipe, from bookworm-backports: Debian 12's own truncates long shader loops). Set
# COIL_TEST_DEVICE=cuda to test them on an NVIDIA GPU instead.
if [[ ${COIL_TEST_DEVICE:-wgpu} == wgpu* ]]; then
    "$(dirname "$0")/install-lavapipe.sh"
fi

# One release build serves the tests, the benchmarks' compile check and the README's main command.
cargo test --release --locked
cargo build --release --locked -p coil-benches --benches --bins
