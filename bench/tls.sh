#!/usr/bin/env bash
# TLS side by side: wrk over HTTPS to bgproxy and to HAProxy, both terminating TLS with the same
# certificate (ECDSA P-256, made here) in front of one bg-backend, in one run, same pinning.
# Two shapes: keep-alive (the record layer) and a new connection per request (the handshake).
# A third shape is TLS on the other side: plain HTTP in front, TLS to an nginx backend
# (verified against the same certificate and name by both proxies).
#
#   bench/tls.sh            # 3 rounds of 10 s per target and shape, 64 connections
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${BENCH_SECONDS:-10}
rounds=${BENCH_ROUNDS:-3}
connections=${BENCH_CONNECTIONS:-64}
proxy_cpu=${BENCH_PROXY_CPU:-0}
load_cpu=${BENCH_LOAD_CPU:-1}

scripts/install-deps.sh
scripts/build.sh release --target bgproxy bg-backend >/dev/null
source bench/wrk_lib.sh

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$work/site.key" -out "$work/site.crt" -subj "/CN=bench.test" \
  -addext "subjectAltName=DNS:bench.test" 2>/dev/null
cat "$work/site.crt" "$work/site.key" > "$work/site.pem"  # HAProxy wants both in one file

backend_port=$(free_port)
taskset -c "$load_cpu" build/bench/bg-backend --listen "127.0.0.1:$backend_port" --name blue-1 >/dev/null &
pids+=($!)
wait_port "$backend_port"

bg_port=$(free_port)
cat > "$work/bgproxy.toml" <<TOML
[server]
workers = 1
admin_listen = ""
[[listener]]
address = "127.0.0.1:$bg_port"
[listener.tls]
certificates = [{ cert = "$work/site.crt", key = "$work/site.key" }]
[control]
socket = ""
state_file = ""
audit_log = ""
[pools.blue]
backends = [{ name = "blue-1", address = "127.0.0.1:$backend_port" }]
[pools.green]
backends = [{ name = "green-1", address = "127.0.0.1:$backend_port" }]
TOML
taskset -c "$proxy_cpu" build/proxy/bgproxy --config "$work/bgproxy.toml" >/dev/null 2>&1 &
pids+=($!)
pid_of[bgproxy-keepalive]=$!
pid_of[bgproxy-newconn]=$!

ha_port=$(free_port)
sed -e "s|@LISTEN@|127.0.0.1:$ha_port|" -e "s|@BACKEND@|127.0.0.1:$backend_port|" \
  -e "s|@DIR@|$work|" bench/haproxy-tls.cfg.in > "$work/haproxy.cfg"
taskset -c "$proxy_cpu" haproxy -q -f "$work/haproxy.cfg" &
pids+=($!)
pid_of[haproxy-keepalive]=$!
pid_of[haproxy-newconn]=$!
# TLS to the backend: nginx with the same certificate behind a second bgproxy and HAProxy.
tls_backend_port=$(free_port)
mkdir -p "$work"/{body,proxy,fastcgi,uwsgi,scgi}
sed -e "s|@LISTEN@|127.0.0.1:$tls_backend_port|" -e "s|@DIR@|$work|" \
  bench/nginx-tls-backend.conf.in > "$work/nginx-backend.conf"
taskset -c "$load_cpu" nginx -c "$work/nginx-backend.conf" -e "$work/nginx-backend-error.log" &
pids+=($!)
bg_up_port=$(free_port)
cat > "$work/bgproxy-up.toml" <<TOML
[server]
workers = 1
admin_listen = ""
[[listener]]
address = "127.0.0.1:$bg_up_port"
[control]
socket = ""
state_file = ""
audit_log = ""
[pools.blue]
backends = [{ name = "blue-1", address = "127.0.0.1:$tls_backend_port" }]
[pools.blue.tls]
ca_file = "$work/site.crt"
server_name = "bench.test"
[pools.green]
backends = [{ name = "green-1", address = "127.0.0.1:$tls_backend_port" }]
TOML
taskset -c "$proxy_cpu" build/proxy/bgproxy --config "$work/bgproxy-up.toml" >/dev/null 2>&1 &
pids+=($!)
pid_of[bgproxy-to-tls]=$!
ha_up_port=$(free_port)
sed -e "s|@LISTEN@|127.0.0.1:$ha_up_port|" -e "s|@BACKEND@|127.0.0.1:$tls_backend_port|" \
  -e "s|@DIR@|$work|" bench/haproxy-tls-backend.cfg.in > "$work/haproxy-up.cfg"
taskset -c "$proxy_cpu" haproxy -q -f "$work/haproxy-up.cfg" &
pids+=($!)
pid_of[haproxy-to-tls]=$!
for p in "$bg_port" "$ha_port" "$tls_backend_port" "$bg_up_port" "$ha_up_port"; do wait_port "$p"; done

# In turns, round after round (see bench/run.sh): medians are compared.
for round in $(seq 1 "$rounds"); do
  echo "round $round of $rounds" >&2
  run bgproxy-keepalive "https://127.0.0.1:$bg_port/"
  run haproxy-keepalive "https://127.0.0.1:$ha_port/"
  run bgproxy-newconn "https://127.0.0.1:$bg_port/" -H "Connection: close"
  run haproxy-newconn "https://127.0.0.1:$ha_port/" -H "Connection: close"
  run bgproxy-to-tls "http://127.0.0.1:$bg_up_port/"
  run haproxy-to-tls "http://127.0.0.1:$ha_up_port/"
done

printf '\nwrk over TLS: %s rounds of %s s, %s connections; proxies on CPU %s (1 thread), backend+wrk on CPU %s\n' \
  "$rounds" "$seconds" "$connections" "$proxy_cpu" "$load_cpu"
python3 bench/summarize.py "$results" bgproxy-keepalive haproxy-keepalive bgproxy-newconn \
  haproxy-newconn bgproxy-to-tls haproxy-to-tls bgproxy-keepalive:haproxy-keepalive \
  bgproxy-newconn:haproxy-newconn bgproxy-to-tls:haproxy-to-tls
