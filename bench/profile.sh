#!/usr/bin/env bash
# Where a proxy's time goes, per shape of traffic, in the deployment bench/run.sh measures (two
# pools of two backends, health checks on): for bgproxy and HAProxy side by side,
#   - syscalls per request, by name (perf's syscall tracepoints on the proxy while wrk runs),
#   - malloc calls per request (a perf uprobe on libc's malloc: operator new and Beast's
#     allocations go through it; HAProxy's pools mostly do not, which is the point),
#   - TCP segments per request (nstat: fewer, fuller segments are less kernel work),
#   - user and system CPU per request (/proc/PID/stat around wrk runs, three interleaved
#     rounds): which side of the syscall boundary the time goes,
#   - the top symbols by self time (perf record while wrk runs),
#   - user-space instructions per request, and the functions they go to: each proxy run again
#     under valgrind's callgrind for exactly PROFILE_REQUESTS requests (bench/http_requests.py,
#     one at a time). Unlike time on this machine, whose speed drifts by tens of percent, an
#     instruction count is the same run after run: the figure to compare two builds by.
# Each measurement is its own wrk run of BENCH_SECONDS; counts are divided by wrk's requests.
#
#   bench/profile.sh                        # shapes keepalive close download upload
#   PROFILE_SHAPES="tls-keepalive tls-handshake tls-resume tls-download tls-upload" bench/profile.sh
#                                           # HTTPS on the listener
#   PROFILE_SHAPES=tls-upstream bench/profile.sh   # TLS to an nginx backend (no instruction count)
#   PROFILE_SHAPES=close BENCH_SECONDS=5 PROFILE_BINARY=/path/to/bgproxy bench/profile.sh
# Needs root (perf probe, perf record, perf stat on tracepoints) and linux-perf, valgrind
# (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${BENCH_SECONDS:-5}
shapes=${PROFILE_SHAPES:-keepalive close download upload}
binary=${PROFILE_BINARY:-build/proxy/bgproxy}
counted_requests=${PROFILE_REQUESTS:-200}  # callgrind's; each wrk run counts its own
connections=64
source bench/deployment.sh
libc=$(ldd "$binary" | awk '/libc.so/ {print $3}')
if ! perf probe -l 2>/dev/null | grep -q 'probe_libc:malloc'; then
  perf probe -q -x "$libc" --add malloc
fi
bgproxy_config bgproxy ""
start_bgproxy bgproxy "$binary"
start_haproxy
wait_port "${port[bgproxy]}"
wait_port "${port[haproxy]}"

# wrk_for SHAPE TARGET: runs the shape's load for $seconds, prints the requests it completed.
wrk_for() {
  local url="http://127.0.0.1:${port[$2]}/" options=()
  case $1 in
    keepalive) connections=64 ;;
    browser) connections=64 options=(-s bench/browser.lua) ;;
    close) connections=32 options=(-H "Connection: close") ;;
    download) connections=16 url="${url}?bytes=1048576" ;;
    upload) connections=16 url="${url}upload" options=(-s bench/upload.lua) ;;
    tls-keepalive) connections=64 url="https://127.0.0.1:${tls_port[$2]}/" ;;
    tls-download) connections=16 url="https://127.0.0.1:${tls_port[$2]}/?bytes=1048576" ;;
    tls-upload)
      connections=16 url="https://127.0.0.1:${tls_port[$2]}/upload" options=(-s bench/upload.lua) ;;
    tls-handshake)
      connections=32 url="https://127.0.0.1:${full_port[$2]}/" options=(-H "Connection: close") ;;
    tls-resume)
      connections=32 url="https://127.0.0.1:${tls_port[$2]}/" options=(-H "Connection: close") ;;
    tls-upstream) connections=64 ;;
    *) echo "unknown shape $1" >&2; exit 2 ;;
  esac
  taskset -c "$load_cpu" wrk -t1 -c"$connections" -d"${seconds}s" "${options[@]}" "$url" |
    awk '/requests in/ {print $1}'
}

# count_instructions NAME PORT SHAPE COMMAND...: COMMAND (a proxy listening on PORT) is started
# under callgrind with counting off; after a warm-up, $counted_requests requests of SHAPE are
# counted. PROFILE_KEEP=DIR keeps each dump there (DIR/NAME-SHAPE.cg, for callgrind_annotate).
count_instructions() {
  local name=$1 listen=$2 shape=$3
  shift 3
  taskset -c "$proxy_cpu" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/$name.cg" "$@" >/dev/null 2>"$work/$name.valgrind" &
  local pid=$!
  pids+=($pid)
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$listen") 2>/dev/null && break
    sleep 0.2
  done
  python3 bench/http_requests.py "$listen" "$shape" 5
  callgrind_control -i on "$pid" >/dev/null 2>&1
  python3 bench/http_requests.py "$listen" "$shape" "$counted_requests"
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  local dump total
  dump=$(ls "$work/$name.cg".* | sort -V | head -1)
  total=$(callgrind_annotate "$dump" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "$name: $(per_request "$total" "$counted_requests" | cut -d. -f1) user-space instructions per request; the top functions:"
  callgrind_annotate --inclusive=no "$dump" | awk '/file:function/ {on=1; next} on && NF' |
    sed -n '2,13p' | sed -E 's/^ *([0-9,]+) *\( *([0-9.]+%)\) *[^:]*:([^([]*).*/    \2 \3/' | cut -c1-110
  if [[ -n ${PROFILE_KEEP:-} ]]; then
    mkdir -p "$PROFILE_KEEP"
    cp "$dump" "$PROFILE_KEEP/$name-$shape.cg"
  fi
  rm -f "$work/$name.cg"*
}

# Context switches of every thread of PID so far (each one a sleep in epoll_wait and a wake-up,
# or a preemption): kernel time that no syscall count shows.
context_switches() {
  cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {n += $2} END {print n}'
}

per_request() { python3 -c "import sys; print('%.2f' % (float(sys.argv[1]) / float(sys.argv[2])))" "$1" "$2"; }

# The proxies a shape measures: the deployment's, or (tls-upstream) those in front of the TLS
# backend, started once.
declare -A key_of=([bgproxy]=bgproxy [haproxy]=haproxy)
for shape in $shapes; do
  echo "== $shape"
  key_of=([bgproxy]=bgproxy [haproxy]=haproxy)
  if [[ $shape == tls-upstream ]]; then
    [[ -n ${pid_of[bgproxy-up]:-} ]] || start_tls_upstream "$binary"
    key_of=([bgproxy]=bgproxy-up [haproxy]=haproxy-up)
  elif [[ $shape == tls-handshake ]]; then
    key_of=([bgproxy]=bgproxy [haproxy]=haproxy-full)  # bench/deployment.sh: why a second
  fi
  for target in bgproxy haproxy; do
    pid=${pid_of[${key_of[$target]}]}
    wrk_for "$shape" "${key_of[$target]}" >/dev/null  # warm-up
    # malloc calls
    perf stat -x, -e probe_libc:malloc -p "$pid" -o "$work/malloc" &
    stat_pid=$!
    nstat -n
    requests=$(wrk_for "$shape" "${key_of[$target]}")
    segments=$(nstat | awk '/TcpOutSegs/ {print $2}')
    kill -INT "$stat_pid"
    wait "$stat_pid" || true
    mallocs=$(awk -F, '/probe_libc:malloc/ {print $1}' "$work/malloc")
    echo "$target: $(per_request "$mallocs" "$requests") malloc calls per request ($requests requests)"
    echo "$target: $(per_request "$segments" "$requests") TCP segments per request (every socket on the machine: client, proxy, backend)"
    # syscalls, by name, and those that failed: perf's syscall tracepoints. (strace slowed the
    # proxy enough to change what it counts: under it, reads found nothing that do not.)
    perf stat -x, -e 'syscalls:sys_enter_*' -p "$pid" -o "$work/syscalls" &
    calls_pid=$!
    perf stat -x, -e 'syscalls:sys_exit_*' --filter 'ret < 0' -p "$pid" -o "$work/failed" &
    failed_pid=$!
    sleep 0.5  # attached before the load starts
    requests=$(wrk_for "$shape" "${key_of[$target]}")
    kill -INT "$calls_pid" "$failed_pid"
    wait "$calls_pid" "$failed_pid" || true
    python3 - "$work/syscalls" "$work/failed" "$requests" "$target" <<'PY'
import sys
calls_path, failed_path, requests, target = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def counts(path, prefix):
    out = {}
    for line in open(path):
        fields = line.split(",")
        if len(fields) > 2 and fields[2].startswith(prefix) and fields[0].isdigit():
            out[fields[2][len(prefix):]] = int(fields[0])
    return out

calls = counts(calls_path, "syscalls:sys_enter_")
failed = counts(failed_path, "syscalls:sys_exit_")
total = sum(calls.values())
print("%s: %.2f syscalls per request (%d requests):" % (target, total / requests, requests))
for name, n in sorted(calls.items(), key=lambda kv: -kv[1]):
    if n / requests >= 0.01:
        errors = failed.get(name, 0)
        extra = " (%.2f failed)" % (errors / requests) if errors / requests >= 0.01 else ""
        print("    %-16s %6.2f%s" % (name, n / requests, extra))
PY
  done
  # user and system CPU per request: utime and stime (clock ticks) around each wrk run
  tick=$(getconf CLK_TCK)
  : > "$work/split"
  for round in 1 2 3; do
    for target in bgproxy haproxy; do
      pid=${pid_of[${key_of[$target]}]}
      read -r user0 system0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
      switches0=$(context_switches "$pid")
      requests=$(wrk_for "$shape" "${key_of[$target]}")
      read -r user1 system1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
      switches1=$(context_switches "$pid")
      echo "$target $round $requests $((user1 - user0)) $((system1 - system0)) $((switches1 - switches0))" >> "$work/split"
    done
  done
  awk -v tick="$tick" '
    { u = $4 / tick / $3 * 1e6; s = $5 / tick / $3 * 1e6; su[$1] += u; ss[$1] += s; n[$1]++
      printf "%s round %d: user %.2f us + system %.2f us per request (%d requests), %.3f context switches per request\n", $1, $2, u, s, $3, $6 / $3 }
    END { for (t in n) printf "%s mean: user %.2f us + system %.2f us = %.2f us per request\n",
            t, su[t] / n[t], ss[t] / n[t], (su[t] + ss[t]) / n[t]
          printf "bgproxy / haproxy: user %.2f, system %.2f, total %.2f\n", su["bgproxy"] / su["haproxy"],
            ss["bgproxy"] / ss["haproxy"], (su["bgproxy"] + ss["bgproxy"]) / (su["haproxy"] + ss["haproxy"]) }
  ' "$work/split"
  # top symbols by self time
  for target in bgproxy haproxy; do
    perf record -q -F 2000 -g -p "${pid_of[${key_of[$target]}]}" -o "$work/perf.data" 2>/dev/null &
    record_pid=$!
    wrk_for "$shape" "${key_of[$target]}" >/dev/null
    kill -INT "$record_pid"
    wait "$record_pid" || true
    echo "$target: top symbols by self time"
    perf report -q -i "$work/perf.data" --no-children --sort dso,sym --percent-limit 1.2 \
      --stdio -g none 2>/dev/null | grep -v '^$' | sed -e 's/^ */    /' | head -25
  done
  # user-space instructions: a bgproxy and an HAProxy of their own, under callgrind
  if [[ $shape == tls-upstream ]]; then
    continue  # bench/http_requests.py speaks to one proxy of the deployment's
  fi
  bgproxy_config counted ""
  counted=${port[counted]} counted_tls=${tls_port[counted]} counted_full=${full_port[counted]}
  [[ $shape == tls-* ]] && counted=$counted_tls
  [[ $shape == tls-handshake ]] && counted=$counted_full
  count_instructions bgproxy "$counted" "$shape" "$binary" --config "$work/counted.toml"
  counted=$(free_port) counted_tls=$(free_port)
  if [[ $shape == tls-handshake ]]; then
    haproxy_full_config "$counted" "$counted_tls" > "$work/haproxy-counted.cfg"
  else
    fill bench/haproxy.cfg.in "$counted" "$counted_tls" > "$work/haproxy-counted.cfg"
  fi
  [[ $shape == tls-* ]] && counted=$counted_tls
  count_instructions haproxy "$counted" "$shape" haproxy -q -f "$work/haproxy-counted.cfg"
done
