#!/usr/bin/env bash
# Installs the Debian 12 packages bgproxy needs to build, test and benchmark, when missing.
set -euo pipefail

packages=(cmake g++ make libboost1.81-dev libboost-json1.81-dev libboost-url1.81-dev libssl-dev
          libtomlplusplus-dev prometheus-cpp-dev doctest-dev libcli11-dev libspdlog-dev ccache
          curl openssl python3 haproxy wrk nginx-light prometheus
          iproute2  # ss: the tests read a socket's kernel buffers
          # The fuzz build: clang and its runtimes (libclang_rt.fuzzer, asan, ubsan: only
          # recommended by clang-14, so named), llhttp's C sources for the differential checks.
          clang-14 libclang-rt-14-dev node-llhttp
          # Fleet mode and its tests: a real etcd cluster on loopback.
          etcd-server etcd-client
          # bench/profile.sh: where the time goes (perf record, a malloc uprobe, syscall tracepoints, callgrind).
          linux-perf strace valgrind)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
