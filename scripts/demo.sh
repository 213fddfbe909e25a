#!/usr/bin/env bash
# Sets up, builds and starts the demo: four bg-backends (blue-1, blue-2, green-1, green-2 on
# 127.0.0.1:9101..9104) and bgproxy on conf/bgproxy.toml. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release --target bgproxy bg-backend bgctl

pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

port=9101
for name in blue-1 blue-2 green-1 green-2; do
  build/bench/bg-backend --listen "127.0.0.1:$port" --name "$name" >/dev/null &
  pids+=($!)
  port=$((port + 1))
done
build/proxy/bgproxy --config conf/bgproxy.toml &
pids+=($!)
sleep 1
cat <<MSG

bgproxy is running on conf/bgproxy.toml (state, audit log and control socket in /tmp/bgproxy-demo):
  curl http://127.0.0.1:8080/            # answered by blue-1 or blue-2
  curl -i http://127.0.0.1:8080/headers  # what a backend receives (X-Forwarded-*)
In another terminal, from $(pwd):
  export BGCTL_SOCKET=/tmp/bgproxy-demo/control.sock
  build/control/bgctl status
  build/control/bgctl ramp green to=100 step=25 every=10s
Backends: blue-1 :9101, blue-2 :9102, green-1 :9103, green-2 :9104.
Ctrl-C stops the demo.
MSG
wait "${pids[@]}"
