#!/bin/sh
# ctest's run of one fuzz target from its seed corpus. Fails on any crash, leak, timeout or
# out-of-memory (libFuzzer exits non-zero and keeps the input in WORK/artifacts).
# New inputs go to WORK/corpus, a scratch folder: the seeds in the source tree are only read.
#
# The suite's run is reproducible: a fixed SEED and a fixed number of RUNS explore the same
# inputs on every machine, so CI fails on a regression, not on the luck of the draw; SECONDS
# only caps it (a slower machine runs a prefix of the same sequence). Exploration for new bugs
# is a separate, longer run with SEED 0 (random): see README, Fuzzing.
# Usage: run_fuzz.sh FUZZER SEEDS WORK RUNS SECONDS SEED [DICT]
set -eu
fuzzer=$1 seeds=$2 work=$3 runs=$4 seconds=$5 seed=$6
dict=${7:+-dict=$7}
rm -rf "$work/corpus"
mkdir -p "$work/corpus" "$work/artifacts"
# -timeout: one input; -rss_limit_mb: the whole process, far above what any input needs.
# shellcheck disable=SC2086
exec "$fuzzer" -seed="$seed" -runs="$runs" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/artifacts/" $dict \
    "$work/corpus" "$seeds"
