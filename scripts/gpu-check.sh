#!/usr/bin/env bash
# The GPU machine's check, in one run (under 5 minutes on an H200): build with CUDA, run the
# kernel, golden, all-paths and mitigation tests on CUDA, then benchmark prefill (8K and 64K
# tokens) and decode (batch 1 and 32) on mamba2-130m- and 1.3b-shaped random models, on CUDA and
# on the CPU backend side by side, and print one summary.
#
#   scripts/gpu-check.sh                 # everything
#   COIL_GPU_CHECK_QUICK=1 scripts/gpu-check.sh   # smaller benchmark sizes
set -uo pipefail
cd "$(dirname "$0")/.."

summary=()
note() { summary+=("$1"); echo "== $1"; }

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libnvrtc\.so' | head -4

export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-}
[[ -z $CUDARC_CUDA_VERSION ]] && unset CUDARC_CUDA_VERSION
start=$(date +%s)
if cargo build --release --locked -p coil -p coil-benches --bins --tests 2>&1 | tail -3; then
    note "build: ok in $(( $(date +%s) - start )) s"
else
    note "build: FAILED"; printf '%s\n' "${summary[@]}"; exit 1
fi
./target/release/coil devices

export COIL_TEST_DEVICE=cuda
for t in "-p coil-gpu --test kernels" "--test golden gpu::" "-p coil-ssm --test paths_agree on_the_gpu" "--test mitigations on_the_gpu"; do
    start=$(date +%s)
    # shellcheck disable=SC2086
    if cargo test --release --locked $t 2>&1 | tail -4; then
        note "tests on cuda ($t): passed in $(( $(date +%s) - start )) s"
    else
        note "tests on cuda ($t): FAILED"
    fi
done

if [[ -n ${COIL_GPU_CHECK_QUICK:-} ]]; then lengths="2048 8192"; else lengths="8192 65536"; fi
for shape in 130m 1.3b; do
    for device in cuda cpu; do
        for prefill in $lengths; do
            # The CPU at 64K on 1.3b would take minutes: it runs at 8K only.
            if [[ $device == cpu && $prefill -gt 8192 ]]; then continue; fi
            decode=32; [[ $device == cpu ]] && decode=8
            line=$(timeout 240 ./target/release/throughput "$shape" "$prefill" "$decode" 0 "" --device "$device" --batch 1 2>&1 | grep -E '^(prefill|decode)' | tr '\n' ' ')
            note "$shape $device prefill $prefill: ${line:-failed or timed out}"
        done
        decode=32; [[ $device == cpu ]] && decode=4
        line=$(timeout 240 ./target/release/throughput "$shape" 256 "$decode" 0 "" --device "$device" --batch 32 2>&1 | grep -E '^decode' | tr '\n' ' ')
        note "$shape $device batch 32: ${line:-failed or timed out}"
    done
done

echo
echo "==== summary"
printf '%s\n' "${summary[@]}"
