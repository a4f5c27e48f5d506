#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ (or the ones named) for SECONDS each, one after another, and prints a line
# per target: executions, executions per second, and whether libFuzzer found anything (a crash, a timeout of more
# than 10 s, a leak or more than 4 GiB of memory). Installs cargo-fuzz from crates.io when it is missing.
#
#   tools/fuzz.sh [SECONDS] [TARGET...]        SECONDS defaults to 600; tools/fuzz.sh 60 chat_template
#
# cargo-fuzz builds with nightly-only compiler flags (-Zsanitizer=address). With a nightly toolchain installed by
# rustup it is used; otherwise the stable toolchain is told to accept them with RUSTC_BOOTSTRAP=1 (the stable
# toolchain ships the AddressSanitizer runtime too). Runs under `nice` (shared machines); FUZZ_JOBS=N runs N
# processes per target. The working corpus goes to fuzz/corpus/<target> (ignored by git), findings to
# fuzz/artifacts/<target>, logs to fuzz/logs/<target>.log. Exit status 1 if any target found something.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${1:-600}"
shift || true

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    toolchain=()
    export RUSTC_BOOTSTRAP=1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi

# fuzz/Cargo.lock must be current (cargo fuzz has no --locked; .ci/run checks this too). Then build every target.
cargo metadata --locked --format-version 1 >/dev/null
nice -n 10 cargo "${toolchain[@]}" fuzz build

parallel=()
if [[ ${FUZZ_JOBS:-1} -gt 1 ]]; then
    parallel=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
fi
mkdir -p logs
found=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="logs/$t.log"
    status=ok
    nice -n 10 cargo "${toolchain[@]}" fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 \
        "${parallel[@]}" >"$log" 2>&1 || status=FOUND
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | awk '{s+=$1} END {print s+0}')
    rate=$(awk -v r="$runs" -v s="$secs" 'BEGIN {printf "%.0f", r / s}')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    line="$(printf '%-20s %6s s  %12s execs  %8s exec/s  %-10s %s' "$t" "$secs" "$runs" "$rate" "$cov" "$status")"
    echo "$line"
    summary+=("$line")
    if [[ $status != ok ]]; then
        found=1
        tail -n 40 "$log"
    fi
done
printf '\n%s\n' "${summary[@]}"
exit $found
