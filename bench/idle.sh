#!/usr/bin/env bash
# Memory an idle keep-alive client connection costs: N connections that each sent one GET
# and then sit idle, per proxy (bgproxy, HAProxy, nginx), RSS growth divided by N, in turns
# over several rounds (medians). The proxies run as deployed: one worker, two pools of two
# backends (HAProxy and nginx: the same four backends), health checks on. Then the same over
# TLS (IDLE_TLS_CONNECTIONS, default 1,000: each handshake costs the Python client a millisecond
# or two). Then idle WebSocket tunnels, plain and over TLS (IDLE_WS_CONNECTIONS, default 1,000:
# each upgraded to the backends' /ws echo, one message each way, then idle: a chat's socket).
# Then connections that each sent 8 KiB of a request head and stopped (IDLE_HEAD_CONNECTIONS,
# default 1,000): what a flood of unfinished heads holds until the header timeout.
#
#   bench/idle.sh                          # 8,000 connections, 2 rounds
#   IDLE_MODES="ws wss" IDLE_UPSTREAM_CONNECTIONS=0 bench/idle.sh   # the tunnels only
# (HAProxy wants 2 descriptors per maxconn: 8,000 fits the 20,000-descriptor limit here.)
#   IDLE_CONNECTIONS=5000 IDLE_ROUNDS=3 bench/idle.sh
# Then idle backend connections (bench/idle_upstream.py): IDLE_UPSTREAM_CONNECTIONS (2,000)
# requests in flight at once leave that many backend connections to each proxy's pool; each
# proxy is measured against itself with its pool off (bgproxy max_idle_per_backend = 0,
# HAProxy option http-server-close, nginx without upstream keepalive), the same burst, so the
# difference is what the pooled connections hold.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${IDLE_CONNECTIONS:-8000}
n_tls=${IDLE_TLS_CONNECTIONS:-1000}
rounds=${IDLE_ROUNDS:-2}
n_up=${IDLE_UPSTREAM_CONNECTIONS:-2000}
n_ws=${IDLE_WS_CONNECTIONS:-1000}
n_head=${IDLE_HEAD_CONNECTIONS:-1000}
modes=${IDLE_MODES:-plain tls ws wss head}
connections=1 seconds=1 load_cpu=1

scripts/install-deps.sh
scripts/build.sh release --target bgproxy bg-backend >/dev/null
source bench/wrk_lib.sh
# Thousands of connections need more than the usual 1024 descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

backends=()
for name in blue-1 blue-2 green-1 green-2; do
  port=$(free_port)
  build/bench/bg-backend --listen "127.0.0.1:$port" --name "$name" >/dev/null &
  pids+=($!)
  wait_port "$port"
  backends+=("127.0.0.1:$port")
done

cat > "$work/bgproxy.toml" <<TOML
[server]
workers = 1
admin_listen = "127.0.0.1:0"
[[listener]]
address = "127.0.0.1:@PORT@"
[[listener]]
address = "127.0.0.1:@TLS_PORT@"
[listener.tls]
certificates = [{ cert = "$work/site.crt", key = "$work/site.key" }]
[routing]
blue = 100
green = 0
[pools.blue]
backends = [{ name = "blue-1", address = "${backends[0]}" }, { name = "blue-2", address = "${backends[1]}" }]
[pools.green]
backends = [{ name = "green-1", address = "${backends[2]}" }, { name = "green-2", address = "${backends[3]}" }]
[health]
interval = "1s"
[control]
socket = "$work/control.sock"
state_file = "$work/state.json"
audit_log = "$work/audit.log"
TOML

cat > "$work/haproxy.cfg.in" <<CFG
global
    nbthread 1
    maxconn $((n + 500))
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 60s
    timeout tunnel 1h
    option http-keep-alive
frontend fe
    bind 127.0.0.1:@PORT@
    bind 127.0.0.1:@TLS_PORT@ ssl crt $work/site.pem
    option forwardfor
    default_backend blue
backend blue
    option httpchk GET /healthz
    server b1 ${backends[0]} check inter 1s
    server b2 ${backends[1]} check inter 1s
backend green
    option httpchk GET /healthz
    server g1 ${backends[2]} check inter 1s
    server g2 ${backends[3]} check inter 1s
CFG

mkdir -p "$work"/{body,proxy,fastcgi,uwsgi,scgi}
# nginx.conf.in with its TLS listener on a port of its own and room for the connections.
sed -e "s|worker_connections [0-9]*;|worker_connections 30000;|" \
    -e "s|worker_rlimit_nofile [0-9]*;|worker_rlimit_nofile 40000;|" \
    -e "s|@TLS_LISTEN@|127.0.0.1:@TLS_PORT@|" -e "s|@FULL_LISTEN@|127.0.0.1:@FULL_PORT@|" \
    -e "s|@BLUE1@|${backends[0]}|" \
    -e "s|@BLUE2@|${backends[1]}|" -e "s|@GREEN1@|${backends[2]}|" -e "s|@GREEN2@|${backends[3]}|" \
    -e "s|@DIR@|$work|g" bench/nginx.conf.in > "$work/nginx.conf.in"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$work/site.key" -out "$work/site.crt" -subj "/CN=bench.test" 2>/dev/null
cat "$work/site.crt" "$work/site.key" > "$work/site.pem"  # HAProxy wants both in one file

start() { # start NAME PORT TLS_PORT [POOL]: starts the proxy on both ports, sets $pid; POOL
           # "on" keeps up to $n_up idle backend connections, "off" none (else the defaults)
  local fill=(-e "s|@PORT@|$2|" -e "s|@TLS_PORT@|$3|") pool=${4:-}
  case $1 in
    bgproxy) sed "${fill[@]}" "$work/bgproxy.toml" > "$work/bgproxy-run.toml"
             case $pool in
               on) printf '[upstream]\nmax_idle_per_backend = %s\n' "$n_up" ;;
               off) printf '[upstream]\nmax_idle_per_backend = 0\n' ;;
             esac >> "$work/bgproxy-run.toml"
             build/proxy/bgproxy --config "$work/bgproxy-run.toml" >/dev/null 2>&1 & ;;
    haproxy) sed "${fill[@]}" "$work/haproxy.cfg.in" > "$work/haproxy.cfg"
             if [ "$pool" = off ]; then
               sed -i 's|^    option http-keep-alive$|    option http-server-close|' "$work/haproxy.cfg"
             fi
             haproxy -q -f "$work/haproxy.cfg" & ;;
    nginx)   sed -e "s|@LISTEN@|127.0.0.1:$2|" -e "s|@TLS_PORT@|$3|" \
               -e "s|@FULL_PORT@|$(free_port)|" "$work/nginx.conf.in" \
               > "$work/nginx.conf"
             case $pool in
               on) sed -i "s|keepalive [0-9]*;|keepalive $n_up;|" "$work/nginx.conf" ;;
               off) sed -i "/keepalive [0-9]*;/d" "$work/nginx.conf" ;;
             esac
             nginx -c "$work/nginx.conf" -e "$work/nginx-error.log" & ;;
  esac
  pid=$!
  wait_port "$2"
  wait_port "$3"
}

# Each measurement on a freshly started proxy: memory freed by an earlier one would hide growth.
declare -A per_conn marginal
for round in $(seq 1 "$rounds"); do
  for mode in $modes; do
    for name in bgproxy haproxy nginx; do
      port=$(free_port)
      tls_port=$(free_port)
      start "$name" "$port" "$tls_port"
      sleep 1
      # nginx: the worker holds the connections, not the master.
      target=$pid
      if [ "$name" = nginx ]; then target=$(pgrep -P "$pid" | head -1); fi
      case $mode in
        plain) out=$(python3 bench/idle_clients.py "$port" "$target" "$n") ;;
        tls) out=$(python3 bench/idle_clients.py "$tls_port" "$target" "$n_tls" tls) ;;
        ws) out=$(python3 bench/idle_clients.py "$port" "$target" "$n_ws" ws) ;;
        wss) out=$(python3 bench/idle_clients.py "$tls_port" "$target" "$n_ws" wss) ;;
        head) out=$(python3 bench/idle_clients.py "$port" "$target" "$n_head" head) ;;
      esac
      echo "round $round $mode $name: $out (KiB per connection, RSS before, after; KiB per connection of the second half)" >&2
      per_conn[$mode/$name]="${per_conn[$mode/$name]:-} $(echo "$out" | cut -d' ' -f1)"
      marginal[$mode/$name]="${marginal[$mode/$name]:-} $(echo "$out" | cut -d' ' -f4)"
      kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    done
  done
done

# Idle backend connections: each proxy with its pool on and off, in turns.
declare -A up_growth up_sockets
for round in $(seq 1 "$rounds"); do
  [ "$n_up" -gt 0 ] || break
  for name in bgproxy haproxy nginx; do
    for pool in on off; do
      port=$(free_port)
      start "$name" "$port" "$(free_port)" "$pool"
      sleep 1
      target=$pid
      if [ "$name" = nginx ]; then target=$(pgrep -P "$pid" | head -1); fi
      out=$(python3 bench/idle_upstream.py "$port" "$target" "$n_up")
      echo "round $round pooled $name pool $pool: $out (RSS growth KiB, sockets before, after)" >&2
      read -r growth before after <<<"$out"
      up_growth[$name/$pool]="${up_growth[$name/$pool]:-} $growth"
      up_sockets[$name/$pool]="${up_sockets[$name/$pool]:-} $((after - before))"
      kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    done
  done
done

median() { python3 -c "import sys, statistics; print('%.2f' % statistics.median(map(float, sys.argv[1:])))" "$@"; }
# report ARRAY MODE: each proxy's median and rounds from the associative array ARRAY, then ratios.
report() {
  local -n figures=$1
  local mode=$2 name b h g
  for name in bgproxy haproxy nginx; do
    # shellcheck disable=SC2086
    printf '  %-8s %8s KiB   (rounds:%s)\n' "$name" "$(median ${figures[$mode/$name]})" \
      "${figures[$mode/$name]}"
  done
  b=$(median ${figures[$mode/bgproxy]})
  h=$(median ${figures[$mode/haproxy]})
  g=$(median ${figures[$mode/nginx]})
  printf '  bgproxy/haproxy %s   bgproxy/nginx %s\n' "$(ratio "$b" "$h")" "$(ratio "$b" "$g")"
}
for mode in $modes; do
  case $mode in
    plain) count=$n what="keep-alive plain connections (one GET each)" ;;
    tls) count=$n_tls what="keep-alive TLS connections (one GET each)" ;;
    ws) count=$n_ws what="WebSocket tunnels (one message each way)" ;;
    wss) count=$n_ws what="WebSocket tunnels over TLS (one message each way)" ;;
    head) count=$n_head what="connections with 8 KiB of a request head, unfinished" ;;
  esac
  printf '\n%s idle %s, %s rounds; RSS growth per connection:\n' "$count" "$what" "$rounds"
  report per_conn "$mode"
  printf '  the second half alone (what one more idle connection costs):\n'
  report marginal "$mode"
done

[ "$n_up" -gt 0 ] || exit 0
printf '\n%s backend connections opened at once, then idle in the pool, %s rounds:\n' "$n_up" "$rounds"
for name in bgproxy haproxy nginx; do
  # shellcheck disable=SC2086
  on=$(median ${up_growth[$name/on]}) off=$(median ${up_growth[$name/off]})
  kept=$(median ${up_sockets[$name/on]}) gone=$(median ${up_sockets[$name/off]})
  kept=${kept%.*} gone=${gone%.*}
  printf '  %-8s %s sockets kept (pool off: %s); RSS growth %s KiB (pool off: %s): %s KiB per pooled connection\n' \
    "$name" "$kept" "$gone" "$on" "$off" \
    "$(python3 -c "import sys; k=float(sys.argv[3])-float(sys.argv[4]); print('%.2f' % ((float(sys.argv[1])-float(sys.argv[2]))/k) if k > 0 else '-')" "$on" "$off" "$kept" "$gone")"
done
