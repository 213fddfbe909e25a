#!/usr/bin/env bash
# Mixed-traffic soak of bgproxy: 2 blue + 2 green bg-backends and one bgproxy (2 workers) on
# 127.0.0.1, with keep-alive and one-shot GETs, uploads, large downloads, WebSocket echo, slow
# clients and hostile inputs running all the time, while flips, sets, ramps, reloads (bgctl and
# SIGHUP) and kill -9 / restart of one backend at a time go on. Prints a summary table and, as the
# last line, `SOAK_RESULT {json}`; exits 1 when a goal is missed (see bench/soak.py).
#
#   bench/soak.sh                          # 10 minutes
#   SOAK_SECONDS=60 bench/soak.sh          # short run
#   SOAK_STRICT=0 bench/soak.sh            # report only: exit 0 even when a goal is missed
#   SOAK_OUT=/tmp/my-soak bench/soak.sh    # where everything goes (default: a new /tmp dir)
#   SOAK_SEED=42                           # the same random choices again
#   SOAK_SAMPLE_SECONDS=5                  # RSS/descriptor sampling period (default 5, or 2 when
#                                          # the run is shorter than 2 minutes)
#   SOAK_VERBOSE=1                         # print each operation as it happens
#   SOAK_CLIENTS=get_keepalive,post        # narrowing a problem down: only these clients (of
#                                          # get_keepalive get_newconn post download websocket
#                                          # slow_header slow_reader hostile)
#   SOAK_OPS=flip,kill                     # ...only these operations (flip set reload ramp kill;
#                                          # "none" for none)
#   BGPROXY=... BG_BACKEND=... BGCTL=...   # binaries (default: build/...); never built here
#
# Nothing is built: the binaries must exist. They are copied into the output dir first, so a
# rebuild during the run changes nothing (a backend restarted after kill -9 runs the same code).
# Every process started is stopped at the end, on failure and on Ctrl-C. The output dir keeps
# summary.txt, result.json, samples.csv (RSS and descriptors over time), timeline.log,
# failures.txt, wrong_colour.json, ops.json, watch.jsonl, the config and the process logs; the
# access log and the backends' request logs (hundreds of MB in 10 minutes) only when the run
# failed, or with SOAK_KEEP_LOGS=1 (with records.bin and state.json they let
# `python3 bench/soak.py --analyse DIR` run the checks again).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

seconds=${SOAK_SECONDS:-600}
bgproxy=${BGPROXY:-$root/build/proxy/bgproxy}
backend=${BG_BACKEND:-$root/build/bench/bg-backend}
bgctl=${BGCTL:-$root/build/control/bgctl}
for bin in "$bgproxy" "$backend" "$bgctl"; do
  if [ ! -x "$bin" ]; then
    echo "soak: $bin is missing or not executable (build it first: scripts/build.sh)" >&2
    exit 2
  fi
done

if [ -n "${SOAK_OUT:-}" ]; then
  out=$SOAK_OUT
  mkdir -p "$out"
else
  out=$(mktemp -d /tmp/bgproxy-soak.XXXXXX)
fi
out=$(cd "$out" && pwd)
mkdir -p "$out/bin"
cp "$bgproxy" "$out/bin/bgproxy"
cp "$backend" "$out/bin/bg-backend"
cp "$bgctl" "$out/bin/bgctl"
: > "$out/pids"

py_pid=
# Stops whatever is still running from the pids file (bgproxy, backends, bgctl watch): only
# processes whose executable is one of our copies, so a recycled pid is never touched.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$py_pid" ] && kill -0 "$py_pid" 2>/dev/null; then
    kill -TERM "$py_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$py_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$py_pid" 2>/dev/null || true
  fi
  while read -r pid; do
    [ -n "$pid" ] || continue
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
    case "$exe" in
      "$out"/bin/*) kill -KILL "$pid" 2>/dev/null || true ;;
    esac
  done < "$out/pids"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "soak: ${seconds} s, output in $out; bgproxy $bgproxy built $(stat -c %y "$bgproxy" | cut -d. -f1)" >&2
# Bounded whatever happens: the run, 30 s to drain the clients, 20 s for bgproxy to stop, and the
# analysis (about a minute for 10 minutes of traffic); past that the driver stops everything.
limit=$(python3 -c "import sys; print(int(float(sys.argv[1]) * 1.2) + 150)" "$seconds")
set +e
SOAK_OUT=$out SOAK_SECONDS=$seconds BGPROXY=$out/bin/bgproxy BG_BACKEND=$out/bin/bg-backend \
  BGCTL=$out/bin/bgctl PYTHONUNBUFFERED=1 \
  timeout --signal=TERM --kill-after=20 "$limit" python3 "$root/bench/soak.py" &
py_pid=$!
wait "$py_pid"
rc=$?
py_pid=
set -e
if [ "$rc" -eq 124 ]; then
  echo "soak: stopped after ${limit} s (over its time bound)" >&2
fi
if [ "$rc" -eq 0 ] && [ "${SOAK_KEEP_LOGS:-0}" != 1 ] && grep -q '^PASS$' "$out/summary.txt" 2>/dev/null; then
  rm -f "$out/access.log" "$out"/backend-*.log "$out/records.bin"
fi
rm -rf "$out/bin"
exit "$rc"
