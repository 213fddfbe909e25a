#!/usr/bin/env bash
# Side by side, shape by shape: wrk through bgproxy, HAProxy and nginx (and straight to a
# backend where that means something), configured as bgproxy is deployed: two pools of two
# bg-backends (blue serving, green idle), health checks on, a plain and a TLS listener each.
#
#   bench/run.sh                                   # the default shapes, 3 rounds of 5 s per target
#   BENCH_SHAPES="keepalive close" BENCH_ROUNDS=5 BENCH_SECONDS=10 bench/run.sh
#   BENCH_BASELINE=/path/to/older/bgproxy bench/run.sh   # that build runs too (bgproxy:baseline)
#   BENCH_BGPROXY_TOML="bulk_buffer_size = 16384" bench/run.sh   # [server] settings for bgproxy
#                                                  # (not the baseline): an A/B of one setting
#   BENCH_PROXY_SHARE=35 bench/run.sh   # each proxy held to 35% of a CPU (bench/deployment.sh)
#   BENCH_PROXY_SHARE=35 BENCH_SHARE_BY=weight bench/run.sh   # ... beside a busy neighbour
#   BENCH_WRK_LOG=/tmp/wrk.log bench/run.sh   # every wrk output kept (latency max, stdev)
#   BENCH_TOGETHER=1 bench/run.sh   # each round's proxies loaded at the same time, sharing the
#                                  # proxy CPU (by the scheduler, or each to its BENCH_PROXY_SHARE):
#                                  # this machine's slow spells then fall on all of them at once
#
# Shapes (BENCH_SHAPES):
#   keepalive      GET of a small body on 64 keep-alive connections
#   browser        the same with a browser's request head (about 600 bytes, bench/browser.lua)
#   close          a new connection per request (Connection: close), 32 connections
#   download       1 MiB responses, 16 keep-alive connections (requests/s x 1 MiB = bytes/s)
#   upload         1 MiB POST bodies, 16 keep-alive connections
#   tls-handshake  HTTPS, a new connection (a full handshake) per request, 32 connections, on
#                  a listener with resumption off (wrk resumes wherever it may; HAProxy's is a
#                  second process, bench/deployment.sh)
#   tls-resume     the same on the listener as deployed: each reconnect resumes its session
#   tls-keepalive  HTTPS keep-alive GETs, 64 connections
#   tls-download   1 MiB responses over HTTPS, 16 keep-alive connections (copied and encrypted:
#                  no splice under TLS)
#   tls-upload     1 MiB POST bodies over HTTPS, 16 keep-alive connections
#   tls-upstream   plain in front, TLS to an nginx backend (bgproxy and HAProxy), 64 connections
#   tls-flood      keep-alive GETs, 32 connections, while another wrk opens TLS connections (a
#                  handshake and one request each, 16 at a time: returning clients, resumed,
#                  each still a key exchange) as fast as the proxy takes
#                  them: the latency of open connections' requests under a handshake flood (the
#                  CPU column counts the flood's handshakes too)
#   metrics-cost   keep-alive GETs, bgproxy with per-request metrics on vs off
#   splice-cost    1 MiB responses, bgproxy splicing bodies vs copying them (splice_min_body = 0)
#   idle           bench/idle.sh: memory per idle connection (its own processes)
#
# Pinning (2 cores): the proxy under test on CPU 0 with one worker/thread; the backends and wrk
# share CPU 1. Targets take turns round after round within each shape (this machine's speed
# drifts by tens of percent over minutes) and medians are compared as ratios. Besides
# requests/s, the CPU each proxy process spends per request is measured: requests/s can be
# capped by the load CPU, CPU per request is the proxy's own cost.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}
shapes=${BENCH_SHAPES:-keepalive browser close download upload tls-handshake tls-resume tls-keepalive tls-download tls-upload tls-upstream tls-flood}
connections=64
source bench/deployment.sh
bgproxy_config bgproxy "${BENCH_BGPROXY_TOML:-}"
start_bgproxy bgproxy build/proxy/bgproxy
targets=(bgproxy haproxy nginx)
if [ -n "${BENCH_BASELINE:-}" ]; then
  bgproxy_config baseline ""
  if ! why=$("$BENCH_BASELINE" --check "$work/baseline.toml" 2>&1); then
    echo "BENCH_BASELINE: $BENCH_BASELINE does not take the bench's config (the full-handshake" \
      "listener's session_tickets and session_cache came with d8b6689): $why" >&2
    exit 2
  fi
  start_bgproxy baseline "$BENCH_BASELINE"
  targets+=(baseline)
fi

start_haproxy
start_nginx
for t in "${targets[@]}"; do
  wait_port "${port[$t]}"
  wait_port "${tls_port[$t]}"
  wait_port "${full_port[$t]}"
done

# resumed PORT: how many of 4 reconnections, each offering the session before, resumed it.
resumed() {
  python3 - "$1" <<'PY'
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
session, resumed = None, 0
for _ in range(5):
    raw = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="bench.test", session=session) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass
        resumed += s.session_reused
        session = s.session
print(resumed)
PY
}
# The TLS shapes measure what they say only if every target's listeners resume as configured.
if [[ " $shapes " =~ \ tls-(handshake|resume|flood)\  ]]; then
  for t in "${targets[@]}"; do
    full=$(resumed "${full_port[$t]}") deployed=$(resumed "${tls_port[$t]}")
    if [ "$full" != 0 ] || [ "$deployed" != 4 ]; then
      echo "$t: of 4 reconnections, $full resumed on the full-handshake listener (must be 0)" \
        "and $deployed on the deployed one (must be 4)" >&2
      exit 2
    fi
  done
fi

# measure SHAPE TARGET URL [wrk options]: one result line named SHAPE/TARGET, with the CPU of
# the target's process per request.
measure() {
  local shape=$1 target=$2 process=$2
  shift 2
  if [ "$shape" = tls-handshake ] && [ -n "${pid_of[$target-full]:-}" ]; then
    process=$target-full
  fi
  pid_of[$shape/$target]=${pid_of[$process]:-}
  run "$shape/$target" "$@"
}

# Each shape: its targets in turns, round after round.
run_shape() {
  local shape=$1
  shift
  echo "shape $shape" >&2
  local together job
  for round in $(seq 1 "$rounds"); do
    together=()
    for t in "$@"; do
      if [ -n "${BENCH_TOGETHER:-}" ] && [ "$t" != direct ]; then
        measure_one "$shape" "$t" &
        together+=($!)
      else
        measure_one "$shape" "$t"
      fi
    done
    for job in "${together[@]}"; do
      wait "$job" || { echo "$shape: a measurement failed (round $round)" >&2; exit 1; }
    done
  done
}
# measure_one SHAPE TARGET: one measurement of the shape through the target.
measure_one() {
  local shape=$1 t=$2
  case $shape in
    keepalive) connections=64 measure "$shape" "$t" "$(url "$t")/" ;;
    browser) connections=64 measure "$shape" "$t" "$(url "$t")/" -s bench/browser.lua ;;
    close) connections=32 measure "$shape" "$t" "$(url "$t")/" -H "Connection: close" ;;
    download | splice-cost) connections=16 measure "$shape" "$t" "$(url "$t")/?bytes=1048576" ;;
    upload) connections=16 measure "$shape" "$t" "$(url "$t")/upload" -s bench/upload.lua ;;
    tls-handshake)
      connections=32 measure "$shape" "$t" "https://127.0.0.1:${full_port[$t]}/" \
        -H "Connection: close" ;;
    tls-resume)
      connections=32 measure "$shape" "$t" "https://127.0.0.1:${tls_port[$t]}/" \
        -H "Connection: close" ;;
    tls-keepalive) connections=64 measure "$shape" "$t" "https://127.0.0.1:${tls_port[$t]}/" ;;
    tls-download)
      connections=16 measure "$shape" "$t" "https://127.0.0.1:${tls_port[$t]}/?bytes=1048576" ;;
    tls-upload)
      connections=16 measure "$shape" "$t" "https://127.0.0.1:${tls_port[$t]}/upload" \
        -s bench/upload.lua ;;
    tls-flood) flooded "$t" ;;
    *) connections=64 measure "$shape" "$t" "$(url "$t")/" ;;
  esac
}
# tls-flood: keep-alive GETs measured while another wrk floods the TLS listener. The flood lasts
# over the warm-up and the measurement and a second more (it stops by itself); its handshakes/s
# are a result line of their own (tls-flood-handshakes/TARGET): a proxy that kept its open
# connections fast by starving the handshakes would show there.
flooded() {
  local t=$1 flood_out="$work/flood-$1"
  taskset -c "$load_cpu" wrk -t1 -c16 -d$((warmup_seconds + seconds + 1))s --latency \
    -H "Connection: close" "https://127.0.0.1:${tls_port[$t]}/" > "$flood_out" 2>&1 &
  local flood=$!
  pids+=("$flood")
  connections=32 measure tls-flood "$t" "$(url "$t")/"
  if ! wait "$flood"; then
    echo "tls-flood/$t: the flood's wrk failed: $(tail -2 "$flood_out")" >&2
    return
  fi
  if grep -q "Non-2xx\|Socket errors" "$flood_out"; then
    echo "tls-flood-handshakes/$t: errors during the flood:" >&2
    grep "Non-2xx\|Socket errors" "$flood_out" >&2
  fi
  local out
  out=$(cat "$flood_out")
  echo "tls-flood-handshakes/$t $(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(to_us "$(echo "$out" | awk '$1 == "50%" {print $2}')")" \
    "$(to_us "$(echo "$out" | awk '$1 == "99%" {print $2}')") -" >> "$results"
}
url() { if [ "$1" = direct ]; then echo "http://127.0.0.1:${backend[blue-1]}"; else echo "http://127.0.0.1:${port[$1]}"; fi; }

pairs=()
summary_targets=()
for shape in $shapes; do
  case $shape in
    keepalive | browser | close) run_shape "$shape" direct "${targets[@]}" ;;
    download | upload | tls-handshake | tls-resume | tls-keepalive | tls-download | tls-upload)
      run_shape "$shape" "${targets[@]}" ;;
    tls-flood)
      run_shape "$shape" "${targets[@]}"
      for t in "${targets[@]}"; do summary_targets+=("$shape/$t" "tls-flood-handshakes/$t"); done
      pairs+=("$shape/bgproxy:$shape/haproxy" "$shape/bgproxy:$shape/nginx"
        "tls-flood-handshakes/bgproxy:tls-flood-handshakes/haproxy"
        "tls-flood-handshakes/bgproxy:tls-flood-handshakes/nginx")
      if [ -n "${BENCH_BASELINE:-}" ]; then
        pairs+=("$shape/bgproxy:$shape/baseline"
          "tls-flood-handshakes/bgproxy:tls-flood-handshakes/baseline")
      fi
      continue ;;
    tls-upstream)
      start_tls_upstream
      targets_up=(bgproxy-up haproxy-up)
      run_shape "$shape" "${targets_up[@]}"
      summary_targets+=("$shape/bgproxy-up" "$shape/haproxy-up")
      pairs+=("$shape/bgproxy-up:$shape/haproxy-up")
      continue ;;
    metrics-cost)
      bgproxy_config metrics-off "metrics = false"
      start_bgproxy metrics-off build/proxy/bgproxy
      wait_port "${port[metrics-off]}"
      run_shape "$shape" bgproxy metrics-off
      summary_targets+=("$shape/bgproxy" "$shape/metrics-off")
      pairs+=("$shape/bgproxy:$shape/metrics-off")
      continue ;;
    splice-cost)
      bgproxy_config copying "splice_min_body = 0"
      start_bgproxy copying build/proxy/bgproxy
      wait_port "${port[copying]}"
      run_shape "$shape" bgproxy copying
      summary_targets+=("$shape/bgproxy" "$shape/copying")
      pairs+=("$shape/bgproxy:$shape/copying")
      continue ;;
    idle) continue ;;  # below, with its own processes
    *) echo "unknown shape $shape" >&2; exit 2 ;;
  esac
  for t in direct "${targets[@]}"; do summary_targets+=("$shape/$t"); done
  pairs+=("$shape/bgproxy:$shape/haproxy" "$shape/bgproxy:$shape/nginx")
  if [ -n "${BENCH_BASELINE:-}" ]; then pairs+=("$shape/bgproxy:$shape/baseline"); fi
done

printf '\nwrk: %s rounds of %s s per target and shape; proxies on CPU %s (1 thread), backends+wrk on CPU %s\n' \
  "$rounds" "$seconds" "$proxy_cpu" "$load_cpu"
if [ -n "${BENCH_TOGETHER:-}" ]; then
  printf 'each round loads its proxies at the same time (BENCH_TOGETHER)\n'
fi
if [ -n "$proxy_share" ]; then
  printf 'each proxy held to %s%% of a CPU (BENCH_PROXY_SHARE, by %s): requests/s is what it serves on that budget\n' \
    "$proxy_share" "${BENCH_SHARE_BY:-quota}"
fi
python3 bench/summarize.py "$results" "${summary_targets[@]}" "${pairs[@]}"
if [[ " $shapes " == *" idle "* ]]; then
  bench/idle.sh
fi
