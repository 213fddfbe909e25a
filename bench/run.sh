#!/usr/bin/env bash
# Side-by-side throughput and latency: wrk against one bg-backend directly, through bgproxy,
# through HAProxy and through nginx, in one run, with the same CPU pinning for every proxy.
#
#   bench/run.sh            # 10 s per target, 64 keep-alive connections
#   BENCH_SECONDS=30 BENCH_CONNECTIONS=128 bench/run.sh
#
# Pinning (2 cores): the proxy under test on CPU 0 with one worker/thread; the backend and wrk
# share CPU 1. Figures are meant to be read as ratios between targets of the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${BENCH_SECONDS:-10}
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
# The same proxy with per-request metrics off, to measure what counting costs.
bg_off_port=$(free_port)
taskset -c "$proxy_cpu" build/proxy/bgproxy --listen "127.0.0.1:$bg_off_port" --workers 1 \
  --blue "127.0.0.1:$backend_port" --green "127.0.0.1:$backend_port" --admin 127.0.0.1:0 \
  --metrics false >/dev/null 2>&1 &
pids+=($!)

ha_port=$(free_port)
fill bench/haproxy.cfg.in "$ha_port" > "$work/haproxy.cfg"
taskset -c "$proxy_cpu" haproxy -q -f "$work/haproxy.cfg" &
pids+=($!)

ng_port=$(free_port)
mkdir -p "$work"/{body,proxy,fastcgi,uwsgi,scgi}
fill bench/nginx.conf.in "$ng_port" > "$work/nginx.conf"
taskset -c "$proxy_cpu" nginx -c "$work/nginx.conf" -e "$work/nginx-error.log" &
pids+=($!)
for p in "$bg_port" "$bg_off_port" "$ha_port" "$ng_port"; do wait_port "$p"; done

run direct "http://127.0.0.1:$backend_port$path"
run bgproxy "http://127.0.0.1:$bg_port$path"
run haproxy "http://127.0.0.1:$ha_port$path"
run nginx "http://127.0.0.1:$ng_port$path"
# Metrics on vs off: a difference of a few percent hides in run-to-run noise, so the two
# alternate over several short rounds and the sums are compared.
rounds=${BENCH_METRICS_ROUNDS:-3}
metrics_seconds=${BENCH_METRICS_SECONDS:-5}
on_total=0
off_total=0
for _ in $(seq 1 "$rounds"); do
  seconds=$metrics_seconds run metrics-on "http://127.0.0.1:$bg_port$path"
  seconds=$metrics_seconds run metrics-off "http://127.0.0.1:$bg_off_port$path"
  on_total=$(python3 -c "print($on_total + ${rps[metrics-on]})")
  off_total=$(python3 -c "print($off_total + ${rps[metrics-off]})")
done

printf '\nwrk: %s s, %s keep-alive connections, path %s; proxies on CPU %s (1 thread), backend+wrk on CPU %s\n' \
  "$seconds" "$connections" "$path" "$proxy_cpu" "$load_cpu"
printf '%-8s %12s %10s %10s\n' target requests/s p50 p99
for t in direct bgproxy haproxy nginx; do
  printf '%-8s %12s %10s %10s\n' "$t" "${rps[$t]}" "${p50[$t]}" "${p99[$t]}"
done
printf '\nbgproxy/haproxy requests/s: %s   p99: %s\n' "$(ratio "${rps[bgproxy]}" "${rps[haproxy]}")" \
  "$(ratio "$(to_us "${p99[bgproxy]}")" "$(to_us "${p99[haproxy]}")")"
printf 'bgproxy/nginx   requests/s: %s   p99: %s\n' "$(ratio "${rps[bgproxy]}" "${rps[nginx]}")" \
  "$(ratio "$(to_us "${p99[bgproxy]}")" "$(to_us "${p99[nginx]}")")"
printf 'bgproxy/direct  requests/s: %s\n' "$(ratio "${rps[bgproxy]}" "${rps[direct]}")"
printf 'metrics on/off  requests/s: %s   (%s rounds of %s s each: %.0f vs %.0f req/s)\n' \
  "$(ratio "$on_total" "$off_total")" "$rounds" "$metrics_seconds" \
  "$(python3 -c "print($on_total / $rounds)")" "$(python3 -c "print($off_total / $rounds)")"
