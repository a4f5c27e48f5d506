#!/usr/bin/env bash
# flash-moe against llama.cpp on models that fit in RAM, in one command per model and thread count: prompt (512)
# and decode (128) tok/s of both, their ratios, the bytes per decode token and the memory bandwidth measured in the
# same run (`flash-moe bench --llama-cpp`: each round runs both, the best round of each counts).
#
#   bench/cpu_vs_llama.sh LLAMA_CPP_BUILD_DIR MODEL.gguf... 
#   env: THREADS="1 2" thread counts; REPS=3 rounds; PP=512 prompt tokens; NG=128 decoded tokens;
#        FM_EXTRA extra flags for flash-moe bench (e.g. "-d 16384 -ctk f16 -ctv f16").
set -euo pipefail
llama=${1:?usage: bench/cpu_vs_llama.sh LLAMA_CPP_BUILD_DIR MODEL.gguf...}
shift
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" # root, fm, drop
summary=()
for model in "$@"; do
    for t in ${THREADS:-1 2}; do
        echo "== $model, $t thread(s)"
        # shellcheck disable=SC2086
        out=$("$fm" bench -m "$model" -t "$t" -p "${PP:-512}" -n "${NG:-128}" -r "${REPS:-3}" -q \
            --llama-cpp "$llama" ${FM_EXTRA:-} 2>&1)
        echo "$out"
        summary+=("$(basename "$model") t$t: $(grep '^ratio' <<<"$out" | sed 's/ratio flash-moe \/ llama.cpp: //')")
    done
done
echo "== summary (flash-moe / llama.cpp, best rounds)"
printf '%s\n' "${summary[@]}"
