#!/usr/bin/env bash
# `make fuzz`: libFuzzer with AddressSanitizer on the parsers batond runs on bytes it did
# not write (Tests/Fuzz/BatonFuzzTargets: ledger records, ledger snapshots, the config
# file, the API's JSON request bodies, release archives), FUZZ_SECONDS each (60).
#
# The fuzzer is built into .build-fuzz (never .build): swift build --sanitize fuzzer
# --sanitize address, with BATON_FUZZ set so that Package.swift declares it. Each target
# starts from its committed corpus (Tests/Fuzz/corpus/<target>); inputs that reach new
# code are merged back into it (-merge=1), and a crash is written to
# Tests/Fuzz/crashes/<target>/ as a reproducer: commit both, and `make test` replays
# them (Tests/BatonFuzzTests). FUZZ_MINIMIZE=1 rewrites each corpus as the smallest set
# of its files with the same coverage. Exits 1 if any target crashed.
#
#   FUZZ_SECONDS=300 make fuzz
#   FUZZ_TARGETS="config release" make fuzz
#   BATON_FUZZ_TARGET=config .build-fuzz/debug/baton-fuzz Tests/Fuzz/crashes/config/crash-…   # replay one
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-ledger-record ledger-snapshot config request-body release}
scratch=.build-fuzz
fuzzer=${FUZZER:-$scratch/debug/baton-fuzz}

# ld.gold warns once per ASan symbol it cannot export; harmless, and hundreds of lines.
# FUZZER=<path> runs a fuzzer built before instead.
if [ -z "${FUZZER:-}" ] && ! BATON_FUZZ=1 swift build --scratch-path "$scratch" --sanitize fuzzer --sanitize address --product baton-fuzz \
        2>&1 | { grep -v "Cannot export local symbol" || true; }; then
    echo "fuzz: the fuzzer did not build" >&2
    exit 1
fi

# Swift's backtracer hangs when a sanitized process traps; libFuzzer reports the crash.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}

failed=0
summary=()
for target in $targets; do
    corpus=Tests/Fuzz/corpus/$target
    crashes=Tests/Fuzz/crashes/$target
    found=$scratch/found/$target
    log=$scratch/logs/$target.log
    mkdir -p "$corpus" "$crashes" "$found" "$scratch/logs"
    # Tokens the fuzzer cannot find by coverage: Foundation's JSON parser is not instrumented.
    case $target in
        config) dict=(-dict=Tests/Fuzz/dictionaries/toml.dict) ;;
        release) dict=() ;;
        *) dict=(-dict=Tests/Fuzz/dictionaries/json.dict) ;;
    esac
    echo "fuzz: $target for ${seconds}s ($(ls "$corpus" | wc -l) corpus files)"
    BATON_FUZZ_TARGET=$target "$fuzzer" "$found" "$corpus" "${dict[@]}" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$crashes/" -print_final_stats=1 >"$log" 2>&1
    status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ $status != 0 ]; then
        failed=1
        grep -m1 -E "Fatal error|ERROR: AddressSanitizer|ERROR: libFuzzer|deadly signal" "$log" >&2
        echo "fuzz: $target CRASHED: reproducer in $crashes/, log $log" >&2
    fi
    if [ "${FUZZ_MINIMIZE:-0}" = 1 ]; then
        rm -rf "$corpus.min" && mkdir "$corpus.min"
        BATON_FUZZ_TARGET=$target "$fuzzer" -merge=1 "$corpus.min" "$corpus" "$found" >>"$log" 2>&1 \
            && rm -rf "$corpus" && mv "$corpus.min" "$corpus"
    else
        BATON_FUZZ_TARGET=$target "$fuzzer" -merge=1 "$corpus" "$found" >>"$log" 2>&1
    fi
    rm -rf "$found"
    summary+=("$(printf '%-16s %10s runs %8s/s  corpus %4s files  %s' "$target" "${runs:-?}" "${rate:-?}" \
        "$(ls "$corpus" | wc -l)" "$([ $status = 0 ] && echo ok || echo CRASH)")")
done
printf '%s\n' "${summary[@]}"
exit $failed
