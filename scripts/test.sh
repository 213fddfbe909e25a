#!/usr/bin/env bash
# The whole test suite: unit and integration tests on the release build, then again on an
# ASan+UBSan build, then the threaded parts on a TSan build, then each fuzz target for a fixed
# number of inputs from a fixed seed (about 25 s each, clang build). Prints ctest's summary for each.
# Tests run two at a time (TEST_JOBS): integration tests mostly wait on timers and peers, each
# in its own temporary directory on its own ports; the shards of one module never run together
# and the soak runs alone (tests/integration/CMakeLists.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

status=0
run() {
  local flavour=$1 dir=$2
  shift 2
  echo "=== $flavour build ==="
  scripts/build.sh "$flavour"
  echo "=== $flavour tests ==="
  (cd "$dir" && ctest --output-on-failure --timeout 600 -j "${TEST_JOBS:-2}" "$@") || status=1
}
run release build
run asan build-asan -L "unit|sanitize"
run tsan build-tsan -L "unit|sanitize"
run fuzz build-fuzz -L fuzz
exit $status
