# Shared by the benchmark scripts (sourced): a work dir and process cleanup, free ports, and
# one wrk measurement per target into rps/p50/p99. Needs $connections, $seconds, $load_cpu.
work=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
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
declare -A rps p50 p99
# run NAME URL [wrk options...]
run() {
  local name=$1 url=$2
  shift 2
  # Warm up keep-alive pools, then measure.
  taskset -c "$load_cpu" wrk -t1 -c"$connections" -d2s "$@" "$url" >/dev/null
  local out
  out=$(taskset -c "$load_cpu" wrk -t1 -c"$connections" -d"${seconds}s" --latency "$@" "$url")
  if echo "$out" | grep -q "Non-2xx\|Socket errors"; then
    echo "$name: errors during the run:" >&2
    echo "$out" | grep "Non-2xx\|Socket errors" >&2
  fi
  rps[$name]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50[$name]=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99[$name]=$(echo "$out" | awk '$1 == "99%" {print $2}')
}
to_us() { # wrk prints 812.00us, 1.20ms or 1.01s
  python3 -c "import sys,re; v=sys.argv[1]; m=re.match(r'([\d.]+)(us|ms|s)',v); print(float(m.group(1))*{'us':1,'ms':1e3,'s':1e6}[m.group(2)])" "$1"
}

ratio() { python3 -c "import sys; print('%.2f' % (float(sys.argv[1]) / float(sys.argv[2])))" "$1" "$2"; }
