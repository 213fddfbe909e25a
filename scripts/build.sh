#!/usr/bin/env bash
# Configures and builds one flavour: release (build/), asan (build-asan/: ASan+UBSan),
# tsan (build-tsan/) or fuzz (build-fuzz/: clang-14, the libFuzzer targets only).
# Usage: scripts/build.sh [release|asan|tsan|fuzz] [cmake --build args...]
set -euo pipefail
cd "$(dirname "$0")/.."
# ccache: relative paths, so a fresh clone elsewhere (CI) reuses what an earlier build compiled.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=true
flavour=${1:-release}
targets=()
shift || true
case "$flavour" in
  release) dir=build; opts=(-DCMAKE_BUILD_TYPE=RelWithDebInfo) ;;
  asan) dir=build-asan; opts=(-DCMAKE_BUILD_TYPE=Debug -DBGPROXY_SANITIZE=address) ;;
  tsan) dir=build-tsan; opts=(-DCMAKE_BUILD_TYPE=Debug -DBGPROXY_SANITIZE=thread) ;;
  fuzz) dir=build-fuzz; targets=(--target fuzz_targets)
        opts=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DBGPROXY_FUZZ=ON -DCMAKE_C_COMPILER=clang-14
              -DCMAKE_CXX_COMPILER=clang++-14) ;;
  *) echo "usage: $0 [release|asan|tsan|fuzz]" >&2; exit 2 ;;
esac
# (A configure that failed, say before the dependencies were installed, leaves a cache but no
# Makefile: configure again.)
if [ ! -f "$dir/CMakeCache.txt" ] || [ ! -f "$dir/Makefile" ]; then
  cmake -S . -B "$dir" "${opts[@]}" >/dev/null
fi
cmake --build "$dir" -j"$(nproc)" "${targets[@]}" "$@"
