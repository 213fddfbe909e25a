#!/usr/bin/env bash
# Side-by-side throughput and latency: wrk against one bg-backend directly, through bgproxy,
# through HAProxy and through nginx, in one run, with the same CPU pinning for every proxy.
#
#   bench/run.sh            # 3 interleaved rounds of 10 s per target, 64 keep-alive connections
#   BENCH_ROUNDS=5 BENCH_SECONDS=30 BENCH_CONNECTIONS=128 bench/run.sh
#
# Pinning (2 cores): the proxy under test on CPU 0 with one worker/thread; the backend and wrk
# share CPU 1. Figures are meant to be read as ratios between targets of the same run. The
# targets take turns round after round (the machine's speed drifts by tens of percent over
# minutes, so back-to-back blocks would measure the drift) and medians are compared. Besides
# requests/s, the CPU each proxy process spends per request is measured: with the load
# generator and backend on one CPU, requests/s can be capped by that CPU rather than by the
# proxy, while CPU per request is the proxy's own cost.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-3}
connections=${BENCH_CONNECTIONS:-64}
path=${BENCH_PATH:-/}
proxy_cpu=${BENCH_PROXY_CPU:-0}
load_cpu=${BENCH_LOAD_CPU:-1}

scripts/install-deps.sh
scripts/build.sh release --target bgproxy bg-backend >/dev/null

source bench/wrk_lib.sh

fill() { sed -e "s|@LISTEN@|127.0.0.1:$2|" -e "s|@BACKEND@|127.0.0.1:$backend_port|" -e "s|@DIR@|$work|" "$1"; }

backend_port=$(free_port)
taskset -c "$load_cpu" build/bench/bg-backend --listen "127.0.0.1:$backend_port" --name blue-1 >/dev/null &
pids+=($!)
wait_port "$backend_port"

bg_port=$(free_port)
taskset -c "$proxy_cpu" build/proxy/bgproxy --listen "127.0.0.1:$bg_port" --workers 1 \
  --blue "127.0.0.1:$backend_port" --green "127.0.0.1:$backend_port" --admin 127.0.0.1:0 \
  >/dev/null 2>&1 &
pids+=($!)
pid_of[bgproxy]=$!
pid_of[metrics-on]=$!
# The same proxy with per-request metrics off, to measure what counting costs.
bg_off_port=$(free_port)
taskset -c "$proxy_cpu" build/proxy/bgproxy --listen "127.0.0.1:$bg_off_port" --workers 1 \
  --blue "127.0.0.1:$backend_port" --green "127.0.0.1:$backend_port" --admin 127.0.0.1:0 \
  --metrics false >/dev/null 2>&1 &
pids+=($!)
pid_of[metrics-off]=$!

# BENCH_BASELINE=/path/to/an/older/bgproxy: that binary runs too, in the same turns, so a change
# is measured against the build before it (bgproxy:baseline).
targets=(direct bgproxy haproxy nginx)
if [ -n "${BENCH_BASELINE:-}" ]; then
  base_port=$(free_port)
  taskset -c "$proxy_cpu" "$BENCH_BASELINE" --listen "127.0.0.1:$base_port" --workers 1 \
    --blue "127.0.0.1:$backend_port" --green "127.0.0.1:$backend_port" --admin 127.0.0.1:0 \
    >/dev/null 2>&1 &
  pids+=($!)
  pid_of[baseline]=$!
  wait_port "$base_port"
  targets+=(baseline)
fi

ha_port=$(free_port)
fill bench/haproxy.cfg.in "$ha_port" > "$work/haproxy.cfg"
taskset -c "$proxy_cpu" haproxy -q -f "$work/haproxy.cfg" &
pids+=($!)
pid_of[haproxy]=$!

ng_port=$(free_port)
mkdir -p "$work"/{body,proxy,fastcgi,uwsgi,scgi}
fill bench/nginx.conf.in "$ng_port" > "$work/nginx.conf"
taskset -c "$proxy_cpu" nginx -c "$work/nginx.conf" -e "$work/nginx-error.log" &
pids+=($!)
pid_of[nginx]=$!
for p in "$bg_port" "$bg_off_port" "$ha_port" "$ng_port"; do wait_port "$p"; done

for round in $(seq 1 "$rounds"); do
  echo "round $round of $rounds" >&2
  run direct "http://127.0.0.1:$backend_port$path"
  run bgproxy "http://127.0.0.1:$bg_port$path"
  run haproxy "http://127.0.0.1:$ha_port$path"
  run nginx "http://127.0.0.1:$ng_port$path"
  if [ -n "${BENCH_BASELINE:-}" ]; then run baseline "http://127.0.0.1:$base_port$path"; fi
done
# Metrics on vs off: a difference of a few percent hides in run-to-run noise, so the two
# alternate over several short rounds too.
metrics_seconds=${BENCH_METRICS_SECONDS:-5}
for _ in $(seq 1 "$rounds"); do
  seconds=$metrics_seconds run metrics-on "http://127.0.0.1:$bg_port$path"
  seconds=$metrics_seconds run metrics-off "http://127.0.0.1:$bg_off_port$path"
done

printf '\nwrk: %s rounds of %s s, %s keep-alive connections, path %s; proxies on CPU %s (1 thread), backend+wrk on CPU %s\n' \
  "$rounds" "$seconds" "$connections" "$path" "$proxy_cpu" "$load_cpu"
extra=()
if [ -n "${BENCH_BASELINE:-}" ]; then extra=(baseline bgproxy:baseline baseline:haproxy); fi
python3 bench/summarize.py "$results" direct bgproxy haproxy nginx metrics-on metrics-off \
  bgproxy:haproxy bgproxy:nginx bgproxy:direct metrics-on:metrics-off "${extra[@]}"
