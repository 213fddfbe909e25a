#!/usr/bin/env bash
# The fleet demo: a local etcd (one member, on 127.0.0.1:2379), the four demo bg-backends
# (127.0.0.1:9101..9104) and three bgproxy instances of the fleet "demo" on conf/bgproxy.toml,
# listening on 8080, 8081 and 8082, each with its control socket under /tmp/bgproxy-fleet-demo.
# A change made on any instance is acknowledged when all three serve it. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release --target bgproxy bg-backend bgctl

dir=/tmp/bgproxy-fleet-demo
rm -rf "$dir"
mkdir -p "$dir"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

etcd --name demo --data-dir "$dir/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster demo=http://127.0.0.1:2380 >"$dir/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  curl -s -X POST http://127.0.0.1:2379/v3/kv/range -d '{"key":"AA=="}' >/dev/null && break
  sleep 0.1
done

port=9101
for name in blue-1 blue-2 green-1 green-2; do
  build/bench/bg-backend --listen "127.0.0.1:$port" --name "$name" >/dev/null &
  pids+=($!)
  port=$((port + 1))
done
for i in 0 1 2; do
  mkdir -p "$dir/i$i"
  build/proxy/bgproxy --config conf/bgproxy.toml --etcd http://127.0.0.1:2379 --fleet demo \
    --listen "127.0.0.1:808$i" --admin "127.0.0.1:990$((i + 1))" \
    --control-socket "$dir/i$i/control.sock" --state-file "$dir/i$i/state.json" \
    --audit-log "$dir/i$i/audit.log" >"$dir/i$i/bgproxy.log" 2>&1 &
  pids+=($!)
done
sleep 1.5
cat <<MSG

A fleet of three bgproxy instances shares one routing state in etcd (logs in $dir):
  curl http://127.0.0.1:8080/ http://127.0.0.1:8081/ http://127.0.0.1:8082/
In another terminal, from $(pwd):
  build/control/bgctl -s $dir/i0/control.sock status     # the fleet: members, versions
  build/control/bgctl -s $dir/i1/control.sock flip       # returns when all three serve green
  build/control/bgctl -s $dir/i2/control.sock rollback
Stop etcd (kill the etcd process) to see instances keep serving and refuse changes.
Ctrl-C stops the demo.
MSG
wait "${pids[@]}"
