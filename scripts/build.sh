#!/usr/bin/env bash
# Configures and builds one flavour: release (build/), asan (build-asan/: ASan+UBSan) or
# tsan (build-tsan/). Usage: scripts/build.sh [release|asan|tsan] [cmake --build args...]
set -euo pipefail
cd "$(dirname "$0")/.."
# ccache: relative paths, so a fresh clone elsewhere (CI) reuses what an earlier build compiled.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=true
flavour=${1:-release}
shift || true
case "$flavour" in
  release) dir=build; opts=(-DCMAKE_BUILD_TYPE=RelWithDebInfo) ;;
  asan) dir=build-asan; opts=(-DCMAKE_BUILD_TYPE=Debug -DBGPROXY_SANITIZE=address) ;;
  tsan) dir=build-tsan; opts=(-DCMAKE_BUILD_TYPE=Debug -DBGPROXY_SANITIZE=thread) ;;
  *) echo "usage: $0 [release|asan|tsan]" >&2; exit 2 ;;
esac
if [ ! -f "$dir/CMakeCache.txt" ]; then
  cmake -S . -B "$dir" "${opts[@]}" >/dev/null
fi
cmake --build "$dir" -j"$(nproc)" "$@"
