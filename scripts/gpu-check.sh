#!/usr/bin/env bash
# The GPU machine's check, in one run (about 5 minutes on an H200): the kernel, golden, all-paths
# and mitigation tests on CUDA, the CLI's main job on CUDA against the CPU, then prefill (2K, 8K,
# 64K tokens) and decode (batch 1 and 32) on mamba2-130m- and 1.3b-shaped random models, on CUDA
# and on the CPU side by side, and the per-op benches; one summary at the end.
#
#   scripts/gpu-check.sh                           # everything
#   COIL_GPU_CHECK_QUICK=1 scripts/gpu-check.sh    # tests, the CLI and one small benchmark
#
# Where .gpu/pack.tar.xz is present (scripts/gpu-pack.sh, run where Rust and crates.io are), it
# runs those binaries and needs no toolchain; else it builds with cargo. Where $OUT is set, the
# whole log lands in $OUT/gpu-check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
[[ -n ${OUT:-} ]] && exec > >(tee "$OUT/gpu-check.log") 2>&1

summary=()
note() { summary+=("$1"); echo "== $1"; }
finish() { echo; echo "==== summary"; printf '%s\n' "${summary[@]}"; }
trap finish EXIT

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
nproc
# A CUDA toolkit's stub libcuda (lib/stubs, which this workplace's H200 image puts on
# LD_LIBRARY_PATH) shadows the driver's: cudarc asks for libcuda.so first.
LD_LIBRARY_PATH=$(tr ':' '\n' <<< "${LD_LIBRARY_PATH:-}" | grep -v '/stubs/\?$' | paste -sd:)
export LD_LIBRARY_PATH
# NVRTC compiles the kernels at run time: make it findable if ldconfig does not know it.
if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so'; then
    for lib in $(find /usr/local /opt /usr/lib -name 'libnvrtc.so*' 2>/dev/null | head -20); do
        LD_LIBRARY_PATH="$(dirname "$lib"):${LD_LIBRARY_PATH:-}"
    done
    export LD_LIBRARY_PATH
fi
ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libnvrtc\.so' | head -4
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

start=$(date +%s)
if [[ -f .gpu/pack.tar.xz ]]; then
    rm -rf .gpu/bin
    tar -C .gpu -xJf .gpu/pack.tar.xz 2>/dev/null || python3 -c 'import tarfile; tarfile.open(".gpu/pack.tar.xz").extractall(".gpu")'
    bin=$PWD/.gpu/bin
    # The tests find their fixtures (and the CLI) under the folder they were built in.
    root=$(cat "$bin/root")
    if [[ $root != "$PWD" && ! -e $root ]]; then mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root"; fi
    mkdir -p target/release && cp "$bin/coil" target/release/coil
    note "binaries: unpacked in $(( $(date +%s) - start )) s (built in $root)"
    run_tests() { (cd "$1" && timeout 300 "$bin/$2" --test-threads 4 "${@:3}"); }
else
    if cargo build --release --locked -p coil -p coil-benches --bins 2>&1 | tail -3; then
        note "build: ok in $(( $(date +%s) - start )) s"
    else
        note "build: FAILED"; exit 1
    fi
    bin=$PWD/target/release
    run_tests() {
        local package=$1 target=$2
        cargo test --release --locked --manifest-path "$package/Cargo.toml" --test "$target" -- --test-threads 4 "${@:3}"
    }
fi
"$bin/coil" devices

# COIL_GPU_CHECK_DEVICE=wgpu tries the script on a machine without CUDA.
gpu=${COIL_GPU_CHECK_DEVICE:-cuda}
export COIL_TEST_DEVICE=$gpu
for t in "gpu kernels" "ssm paths_agree on_the_gpu" ". golden gpu::" ". mitigations on_the_gpu"; do
    start=$(date +%s)
    # shellcheck disable=SC2086
    if run_tests $t 2>&1 | tail -60; then
        note "tests on $gpu ($t): passed in $(( $(date +%s) - start )) s"
    else
        note "tests on $gpu ($t): FAILED"
    fi
done

# The README's main job, on CUDA and on the CPU: the same greedy text is expected.
for device in $gpu cpu; do
    start=$(date +%s)
    timeout 120 "$bin/coil" run --device "$device" --prompt "The state of a recurrent model" --max-new-tokens 48 \
        --device-stats "/tmp/run-$device.json" > "/tmp/run-$device.txt" 2> "/tmp/run-$device.err"
    note "coil run on $device: exit $? in $(( $(date +%s) - start )) s: $(head -c 300 "/tmp/run-$device.txt" | tr '\n' ' ')"
    note "coil run on $device, traffic: $(cat "/tmp/run-$device.json" 2>/dev/null)"
done
cmp -s "/tmp/run-$gpu.txt" /tmp/run-cpu.txt && note "coil run: $gpu and cpu wrote the same text" || note "coil run: $gpu and cpu texts DIFFER"

bench() { # label, seconds, throughput arguments
    local label=$1 seconds=$2 start lines
    start=$(date +%s)
    lines=$(timeout "$seconds" "$bin/throughput" "${@:3}" 2>&1 | grep -E '^(shape|prefill|decode|memory)' | tr '\n' ' ')
    note "$label ($(( $(date +%s) - start )) s): ${lines:-failed or timed out}"
}
if [[ -n ${COIL_GPU_CHECK_QUICK:-} ]]; then
    bench "130m $gpu f32" 150 130m 512 8 0 "" --device "$gpu" --batch 1,4
    exit 0
fi
bench "130m $gpu f32" 150 130m 2048,8192,65536 64 0 "" --device "$gpu" --batch 1,32
bench "130m cpu f32 ($(nproc) threads)" 120 130m 2048,8192 16 0 "" --batch 1,32
bench "130m $gpu bf16" 150 130m 2048,8192 64 0 "" --device "$gpu" --weights bf16 --batch 1,32
bench "1.3b $gpu f32" 240 1.3b 2048,8192 32 0 "" --device "$gpu" --batch 1,32

start=$(date +%s)
COIL_BENCH_DEVICES=$gpu,cpu timeout 200 "$bin/ops" --bench --warm-up-time 0.3 --measurement-time 1 --output-format bencher 2>&1 | grep -E '^test ' > /tmp/ops.txt
note "ops bench ($(( $(date +%s) - start )) s):"
while read -r line; do note "  $line"; done < /tmp/ops.txt
