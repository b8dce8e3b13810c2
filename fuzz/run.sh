#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after another, starting from the
# committed seeds (fuzz/seeds/<target>) plus what earlier runs found (fuzz/corpus/<target>,
# ignored by git). Crashes land in fuzz/artifacts/<target>/. cargo-fuzz needs nightly features:
# on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks them (install it with `cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(config safetensors torch_zip pickle tokenizer)
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "== $target for ${seconds}s"
    # -a: debug assertions, so integer overflow panics instead of wrapping silently.
    cargo fuzz run -a "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -timeout=10 -print_final_stats=1
done
