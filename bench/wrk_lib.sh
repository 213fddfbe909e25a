# Shared by the benchmark scripts (sourced): a work dir and process cleanup, free ports, and
# one wrk measurement per target into rps/p50/p99. Needs $connections, $seconds, $load_cpu.
work=$(mktemp -d)
pids=()
cgroups=()  # bench/deployment.sh's, removed at the end
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
  for group in "${cgroups[@]}"; do  # empty once the last child (an nginx worker) is gone
    for _ in $(seq 1 20); do rmdir "$group" 2>/dev/null && break; sleep 0.1; done
  done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}
declare -A rps p50 p99 pid_of
# Every measurement, one line each: NAME REQUESTS_PER_S P50_US P99_US CPU_US_PER_REQUEST
# (the last is "-" when the target has no pid_of entry). bench/summarize.py reads it.
results="$work/results"
: > "$results"

# CPU time (user + system, in clock ticks) of a process, its threads and its children so far.
proc_ticks() {
  python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1])
def stat(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()
total = 0
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            fields = stat(int(entry))
        except OSError:
            continue
        if int(entry) == root or int(fields[1]) == root:  # fields[1]: the parent's pid
            total += int(fields[11]) + int(fields[12])     # utime, stime
print(total)
PY
}

warmup_seconds=2  # before each measurement, on the same connections' shape

# run NAME URL [wrk options...]: one warm-up, one measurement into rps/p50/p99 and $results.
# With pid_of[NAME] set, the CPU that process spent per request is measured too.
run() {
  local name=$1 url=$2
  shift 2
  # Warm up keep-alive pools, then measure.
  taskset -c "$load_cpu" wrk -t1 -c"$connections" -d"${warmup_seconds}s" "$@" "$url" >/dev/null
  local out pid=${pid_of[$name]:-} before=0 after=0 cpu=-
  [ -n "$pid" ] && before=$(proc_ticks "$pid")
  out=$(taskset -c "$load_cpu" wrk -t1 -c"$connections" -d"${seconds}s" --latency "$@" "$url")
  [ -n "$pid" ] && after=$(proc_ticks "$pid")
  [ -n "${BENCH_WRK_LOG:-}" ] && printf '== %s\n%s\n' "$name" "$out" >> "$BENCH_WRK_LOG"
  if echo "$out" | grep -q "Non-2xx\|Socket errors"; then
    echo "$name: errors during the run:" >&2
    echo "$out" | grep "Non-2xx\|Socket errors" >&2
  fi
  rps[$name]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50[$name]=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99[$name]=$(echo "$out" | awk '$1 == "99%" {print $2}')
  local requests
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  if [ -n "$pid" ]; then
    cpu=$(python3 -c "import os,sys; print('%.2f' % ((int(sys.argv[2]) - int(sys.argv[1])) * 1e6 / os.sysconf('SC_CLK_TCK') / int(sys.argv[3])))" "$before" "$after" "$requests")
  fi
  echo "$name ${rps[$name]} $(to_us "${p50[$name]}") $(to_us "${p99[$name]}") $cpu" >> "$results"
}
to_us() { # wrk prints 812.00us, 1.20ms or 1.01s
  python3 -c "import sys,re; v=sys.argv[1]; m=re.match(r'([\d.]+)(us|ms|s)',v); print(float(m.group(1))*{'us':1,'ms':1e3,'s':1e6}[m.group(2)])" "$1"
}

ratio() { python3 -c "import sys; print('%.2f' % (float(sys.argv[1]) / float(sys.argv[2])))" "$1" "$2"; }
