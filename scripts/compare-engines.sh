#!/usr/bin/env bash
# Prefill and decode throughput of Coil and of the other engines present on this machine, on the
# same mamba2-130m-shaped weights (seeded random, HF dialect), in one run, with ratios.
#
#   scripts/compare-engines.sh [THREADS]          (default 2)
#
# ROUNDS (default 3): alternating runs of Coil and llama.cpp, medians reported. DTYPES (default
# "f32 bf16 f16"): the weight dtypes they run in.
#
# Engines, each run only when found:
#   HF transformers  PYTHON (default: python3) with torch + transformers (pip install -r
#                    checkpoints/training/requirements-train.txt)
#   llama.cpp        LLAMA_CPP=path/to/llama.cpp (built; uses its convert_hf_to_gguf.py and
#                    build/bin/llama-bench)
#   candle           CANDLE_MAMBA2=path/to/benches/engines/candle-mamba2 built (an adapter over
#                    candle-transformers' models::mamba2 printing the same prefill:/decode: lines)
# scripts/get-engines.sh builds both outside the repo and prints the two variables.
# Nothing of theirs is committed here. The weights live in ${COMPARE_DIR:-target/compare}.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
dir=${COMPARE_DIR:-target/compare}
weights=$dir/mamba2-130m-random
python=${PYTHON:-python3}
mkdir -p "$dir"

cargo build --release --locked -p coil-benches --bin throughput >/dev/null
have_hf=0
if "$python" -c "import torch, transformers" 2>/dev/null; then have_hf=1; fi
if [[ ! -f $weights/model.safetensors ]]; then
    [[ $have_hf == 1 ]] || { echo "the shared weights are made with transformers: set PYTHON to a python that has it" >&2; exit 1; }
    "$python" scripts/compare_hf.py make "$weights"
fi

rows=()
row() { rows+=("$(printf '%-28s %10s %10s %10s' "$1" "$2" "$3" "$4")"); }
num() { grep -E "^$1" | sed -E 's/.* ([0-9.]+) tok\/s.*/\1/'; }

# Coil and llama.cpp, the close pair, run ROUNDS times (default 3) in alternation and report
# each figure's median: this machine's bandwidth moves between runs by 20-30%, and alternating
# spreads that over both. HF and candle are far from both and slow: one run each.
rounds=${ROUNDS:-3}
declare -A runs=()
record() { runs[$1]+="$2 $3 $4;"; }
median() { tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
row_of() {
    local field values=()
    for field in 1 2 3; do
        values+=("$(echo "${runs[$1]}" | tr ';' '\n' | awk -v f="$field" 'NF { printf "%s ", $f }' | sed 's/ $//' | median)")
    done
    row "$1" "${values[@]}"
}
coil_run() {
    local p512 out
    p512=$(./target/release/throughput 130m 512 1 "$threads" "" --model "$weights" --weights "$1" | num prefill)
    out=$(./target/release/throughput 130m 2048 32 "$threads" "" --model "$weights" --weights "$1")
    record "coil $1" "$p512" "$(echo "$out" | num prefill)" "$(echo "$out" | num decode)"
}
llama_run() {
    local gguf=$dir/mamba2-130m-$1.gguf res
    [[ -f $gguf ]] || "$python" "$LLAMA_CPP/convert_hf_to_gguf.py" "$weights" --outtype "$1" --outfile "$gguf" >"$dir/convert-$1.log" 2>&1
    res=$("$LLAMA_CPP/build/bin/llama-bench" -m "$gguf" -p 512,2048 -n 32 -t "$threads" -o csv)
    # llama-bench csv: n_prompt, n_gen and avg_ts columns; pick them by header.
    record "llama.cpp $1" $("$python" - "$res" <<'PY'
import csv, io, sys
rows = list(csv.DictReader(io.StringIO(sys.argv[1])))
get = lambda p, n: next((r["avg_ts"] for r in rows if r["n_prompt"] == str(p) and r["n_gen"] == str(n)), "nan")
num = lambda v, digits: f"{float(v):.{digits}f}"
print(num(get(512, 0), 1), num(get(2048, 0), 1), num(get(0, 32), 2))
PY
)
}
# DTYPES (default "f32 bf16 f16"): the weight dtypes both engines run.
dtypes=${DTYPES:-f32 bf16 f16}
for ((round = 1; round <= rounds; round++)); do
    for dtype in $dtypes; do
        coil_run "$dtype"
        if [[ -n ${LLAMA_CPP:-} ]]; then llama_run "$dtype"; fi
    done
done
for dtype in $dtypes; do row_of "coil $dtype"; done
if [[ -n ${LLAMA_CPP:-} ]]; then
    for dtype in $dtypes; do row_of "llama.cpp $dtype"; done
fi
if [[ $have_hf == 1 ]]; then
    p512=$("$python" scripts/compare_hf.py bench "$weights" 512 1 "$threads" 2>/dev/null | num prefill)
    out=$("$python" scripts/compare_hf.py bench "$weights" 2048 32 "$threads" 2>/dev/null)
    row "HF transformers f32" "$p512" "$(echo "$out" | num prefill)" "$(echo "$out" | num decode)"
fi
if [[ -n ${CANDLE_MAMBA2:-} ]]; then
    # candle's chunked-SSD prefill (forward_prefill); its per-token path is `--mode step`.
    p512=$("$CANDLE_MAMBA2" --weights "$weights" --prefill 512 --decode 1 --threads "$threads" | num prefill)
    out=$("$CANDLE_MAMBA2" --weights "$weights" --prefill 2048 --decode 32 --threads "$threads")
    row "candle f32" "$p512" "$(echo "$out" | num prefill)" "$(echo "$out" | num decode)"
fi

echo
echo "mamba2-130m shape, random weights, $threads threads, batch 1 ($(date -u +%F), $(nproc) cores)"
# Every table names its machine: the CPU, the SIMD features that decide both engines' kernels, and
# the body Coil picked (COIL_SIMD, or its own probe where AVX512-BF16 is present).
cpu_model=$(grep -m1 -E '^model name' /proc/cpuinfo | sed 's/.*: //')
cpu_flags=$(grep -m1 -E '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512f|avx512_bf16|avx512_fp16|amx_bf16|amx_tile)$' | tr '\n' ' ')
coil_simd=$(./target/release/throughput 130m 1 0 "$threads" "" | sed -n -E 's/.* on cpu \(([a-z0-9]+)\).*/\1/p')
echo "cpu: $cpu_model; $(grep -m1 -E '^cpu family' /proc/cpuinfo | sed 's/.*: /family /'), model $(grep -m1 -E '^model\s' /proc/cpuinfo | sed 's/.*: //'); flags: ${cpu_flags% }; coil's kernels: $coil_simd"
printf '%-28s %10s %10s %10s\n' "engine" "pre 512" "pre 2048" "decode"
printf '%s\n' "${rows[@]}"
echo "(tokens/s, same run; coil and llama.cpp: medians of $rounds alternating rounds)"
# Coil over each other engine at the same weight dtype (f32 rows against coil f32).
printf '%s\n' "${rows[@]}" | awk '
    { name = substr($0, 1, 28); sub(/ +$/, "", name); p5[name] = $(NF-2); p2[name] = $(NF-1); dec[name] = $NF; order[++n] = name }
    END {
        for (i = 1; i <= n; i++) {
            name = order[i]; if (name ~ /^coil/) continue
            dtype = (name ~ /bf16/) ? "bf16" : (name ~ /f16/) ? "f16" : "f32"; coil = "coil " dtype
            if (!(coil in p5) || p5[name] + 0 == 0) continue
            printf "coil %s / %s: prefill 512 %.2fx, prefill 2048 %.2fx, decode %.2fx\n", dtype, name, p5[coil] / p5[name], p2[coil] / p2[name], dec[coil] / dec[name]
        }
    }'
# Peak memory of Coil'"'"'s prefill at two prompt lengths (flat: the prefill streams in pieces).
for n in 10240 102400; do
    [[ ${COMPARE_MEMORY:-1} == 1 ]] || break
    echo "coil bf16 prefill $n: $(./target/release/throughput 130m "$n" 1 "$threads" "" --model "$weights" --weights bf16 | grep memory:)"
done
