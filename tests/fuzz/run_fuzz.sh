#!/bin/sh
# ctest's run of one fuzz target: SECONDS of fuzzing from its seed corpus. Fails on any crash,
# leak, timeout or out-of-memory (libFuzzer exits non-zero and keeps the input in WORK/artifacts).
# New inputs go to WORK/corpus, a scratch folder: the seeds in the source tree are only read.
# Usage: run_fuzz.sh FUZZER SEEDS WORK SECONDS [DICT]
set -eu
fuzzer=$1 seeds=$2 work=$3 seconds=$4
dict=${5:+-dict=$5}
rm -rf "$work/corpus"
mkdir -p "$work/corpus" "$work/artifacts"
# -timeout: one input; -rss_limit_mb: the whole process, far above what any input needs.
# shellcheck disable=SC2086
exec "$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" $dict "$work/corpus" "$seeds"
