# Sourced by bench/run.sh and bench/profile.sh: the deployment every benchmark measures, built
# and pinned (BENCH_PROXY_CPU, BENCH_LOAD_CPU). A certificate, four bg-backends (two pools of
# two) on $load_cpu, and functions that start bgproxy, HAProxy and nginx on $proxy_cpu
# configured alike; bench/wrk_lib.sh's measurements.
proxy_cpu=${BENCH_PROXY_CPU:-0}
load_cpu=${BENCH_LOAD_CPU:-1}
# BENCH_PROXY_SHARE=35: each proxy process (with its children) in a cgroup of its own, held to
# 35% of a CPU (CFS quota, 10 ms periods). With two cores the load CPU (wrk and the backends)
# saturates before a proxy does, and requests/s shows the load CPU; held to the same budget,
# the proxies become the limit, and requests/s shows what each serves on it.
# BENCH_SHARE_BY=weight holds it the other way a CPU gets shared: a busy neighbour on the proxy
# CPU, weighted (cpu.shares) to take the other 65%. The proxy then runs in the scheduler's short
# slices instead of being stopped for 6.5 ms of every 10 (a container's quota), so its p99 shows
# the proxy more than the throttle.
proxy_share=${BENCH_PROXY_SHARE:-}
scripts/install-deps.sh
scripts/build.sh release --target bgproxy bg-backend >/dev/null
source bench/wrk_lib.sh

# start_neighbour: once, a busy loop on the proxy CPU weighted to take what the share leaves.
start_neighbour() {
  [ -n "${neighbour_group:-}" ] && return
  neighbour_group=/sys/fs/cgroup/cpu/bgbench-$$-neighbour
  mkdir "$neighbour_group"
  cgroups+=("$neighbour_group")
  echo $(((100 - proxy_share) * 1024 / 100)) > "$neighbour_group/cpu.shares"
  bash -c 'echo $$ > "$1/cgroup.procs"; exec taskset -c "$2" bash -c "while :; do :; done"' _ \
    "$neighbour_group" "$proxy_cpu" &
  pids+=($!)
}

# on_proxy_cpu NAME COMMAND...: COMMAND pinned to the proxy CPU (and in NAME's cgroup when
# BENCH_PROXY_SHARE is set), in the background; its pid is $!.
on_proxy_cpu() {
  local name=$1
  shift
  if [ -z "$proxy_share" ]; then
    taskset -c "$proxy_cpu" "$@" &
    return
  fi
  local group=/sys/fs/cgroup/cpu/bgbench-$$-$name
  mkdir "$group"
  cgroups+=("$group")
  if [ "${BENCH_SHARE_BY:-quota}" = weight ]; then
    echo $((proxy_share * 1024 / 100)) > "$group/cpu.shares"
    start_neighbour
  else
    echo 10000 > "$group/cpu.cfs_period_us"
    echo $((proxy_share * 100)) > "$group/cpu.cfs_quota_us"
  fi
  # The shell joins the cgroup, then becomes the proxy: its children are born in it.
  bash -c 'echo $$ > "$1/cgroup.procs"; shift; exec taskset -c "$@"' _ "$group" "$proxy_cpu" "$@" &
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$work/site.key" -out "$work/site.crt" -subj "/CN=bench.test" \
  -addext "subjectAltName=DNS:bench.test" 2>/dev/null
cat "$work/site.crt" "$work/site.key" > "$work/site.pem"  # HAProxy wants both in one file
mkdir -p "$work"/{body,proxy,fastcgi,uwsgi,scgi}

declare -A backend
for name in blue-1 blue-2 green-1 green-2; do
  backend[$name]=$(free_port)
  taskset -c "$load_cpu" build/bench/bg-backend --listen "127.0.0.1:${backend[$name]}" \
    --name "$name" >/dev/null &
  pids+=($!)
done
for name in "${!backend[@]}"; do wait_port "${backend[$name]}"; done

# Each proxy has three listeners: plain, TLS as deployed (sessions resume), and TLS with
# resumption off, where every handshake is full (HAProxy's in a second process: below). wrk resumes whenever the server lets it (it
# keeps its SSL object across reconnects, and with it the last session ticket), so only the
# third measures what a new client costs.
fill() {  # template, plain port, TLS port, full-handshake TLS port
  sed -e "s|@LISTEN@|127.0.0.1:$2|" -e "s|@TLS_LISTEN@|127.0.0.1:$3|" -e "s|@DIR@|$work|" \
    -e "s|@FULL_LISTEN@|127.0.0.1:${4:-0}|" \
    -e "s|@BLUE1@|127.0.0.1:${backend[blue-1]}|" -e "s|@BLUE2@|127.0.0.1:${backend[blue-2]}|" \
    -e "s|@GREEN1@|127.0.0.1:${backend[green-1]}|" -e "s|@GREEN2@|127.0.0.1:${backend[green-2]}|" \
    -e "s|@BACKEND@|127.0.0.1:${tls_backend:-0}|" "$1"
}

# bgproxy as deployed: the two pools, health checks (the defaults), a control socket and state.
declare -A port tls_port full_port
bgproxy_config() {  # name, extra TOML
  port[$1]=$(free_port)
  tls_port[$1]=$(free_port)
  full_port[$1]=$(free_port)
  cat > "$work/$1.toml" <<TOML
[server]
workers = 1
admin_listen = "127.0.0.1:0"
$2
[[listener]]
address = "127.0.0.1:${port[$1]}"
[[listener]]
address = "127.0.0.1:${tls_port[$1]}"
[listener.tls]
certificates = [{ cert = "$work/site.crt", key = "$work/site.key" }]
[[listener]]
address = "127.0.0.1:${full_port[$1]}"
[listener.tls]
certificates = [{ cert = "$work/site.crt", key = "$work/site.key" }]
session_tickets = false
session_cache = 0
[control]
socket = "$work/$1.sock"
state_file = "$work/$1.state.json"
audit_log = "$work/$1.audit.log"
[pools.blue]
backends = [{ name = "blue-1", address = "127.0.0.1:${backend[blue-1]}" },
            { name = "blue-2", address = "127.0.0.1:${backend[blue-2]}" }]
[pools.green]
backends = [{ name = "green-1", address = "127.0.0.1:${backend[green-1]}" },
            { name = "green-2", address = "127.0.0.1:${backend[green-2]}" }]
TOML
}
start_bgproxy() {  # name, binary
  on_proxy_cpu "$1" "$2" --config "$work/$1.toml" >/dev/null 2>&1
  pids+=($!)
  pid_of[$1]=$!
}
start_haproxy() {
  port[haproxy]=$(free_port)
  tls_port[haproxy]=$(free_port)
  fill bench/haproxy.cfg.in "${port[haproxy]}" "${tls_port[haproxy]}" > "$work/haproxy.cfg"
  on_proxy_cpu haproxy haproxy -q -f "$work/haproxy.cfg"
  pids+=($!)
  pid_of[haproxy]=$!
  start_haproxy_full
}
# HAProxy's session cache is global, and with it a TLS 1.3 listener without tickets resumes
# from the cache: resumption cannot be off on one listener only. Its full-handshake listener is
# a second HAProxy (haproxy-full; its plain listener unused), the same config with no tickets
# and no cache. Without the cache it does less per handshake (no store per ticket): the
# deployed HAProxy keeps its cache.
haproxy_full_config() {  # plain port, TLS port
  fill bench/haproxy.cfg.in "$1" "$2" |
    sed -e 's|^\(    bind .* ssl .*\)$|\1 no-tls-tickets|' -e 's|^global$|global\n    tune.ssl.cachesize 0|'
}
start_haproxy_full() {
  full_port[haproxy]=$(free_port)
  full_port[haproxy-full]=${full_port[haproxy]}
  port[haproxy-full]=$(free_port)
  haproxy_full_config "${port[haproxy-full]}" "${full_port[haproxy]}" > "$work/haproxy-full.cfg"
  on_proxy_cpu haproxy-full haproxy -q -f "$work/haproxy-full.cfg"
  pids+=($!)
  pid_of[haproxy-full]=$!
}
start_nginx() {
  port[nginx]=$(free_port)
  tls_port[nginx]=$(free_port)
  full_port[nginx]=$(free_port)
  fill bench/nginx.conf.in "${port[nginx]}" "${tls_port[nginx]}" "${full_port[nginx]}" > "$work/nginx.conf"
  on_proxy_cpu nginx nginx -c "$work/nginx.conf" -e "$work/nginx-error.log"
  pids+=($!)
  pid_of[nginx]=$!
}

# TLS to the backend: nginx with the same certificate behind a second bgproxy and HAProxy.
start_tls_upstream() {  # bgproxy binary (build/proxy/bgproxy)
  tls_backend=$(free_port)
  fill bench/nginx-tls-backend.conf.in "$tls_backend" 0 > "$work/nginx-backend.conf"
  taskset -c "$load_cpu" nginx -c "$work/nginx-backend.conf" -e "$work/nginx-backend-error.log" &
  pids+=($!)
  port[bgproxy-up]=$(free_port)
  cat > "$work/bgproxy-up.toml" <<TOML
[server]
workers = 1
admin_listen = ""
[[listener]]
address = "127.0.0.1:${port[bgproxy-up]}"
[control]
socket = ""
state_file = ""
audit_log = ""
[pools.blue]
backends = [{ name = "blue-1", address = "127.0.0.1:$tls_backend" }]
[pools.blue.tls]
ca_file = "$work/site.crt"
server_name = "bench.test"
[pools.green]
backends = [{ name = "green-1", address = "127.0.0.1:$tls_backend" }]
TOML
  on_proxy_cpu bgproxy-up "${1:-build/proxy/bgproxy}" --config "$work/bgproxy-up.toml" >/dev/null 2>&1
  pids+=($!)
  pid_of[bgproxy-up]=$!
  port[haproxy-up]=$(free_port)
  fill bench/haproxy-tls-backend.cfg.in "${port[haproxy-up]}" 0 > "$work/haproxy-up.cfg"
  on_proxy_cpu haproxy-up haproxy -q -f "$work/haproxy-up.cfg"
  pids+=($!)
  pid_of[haproxy-up]=$!
  for p in "$tls_backend" "${port[bgproxy-up]}" "${port[haproxy-up]}"; do wait_port "$p"; done
}
