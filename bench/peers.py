"""The processes the switch and kill benchmarks run side by side: bg-backends, bgproxy and
HAProxy configured alike (two pools of two backends, health checks on, a control socket, one
worker/thread on the proxy CPU), and wrk. Every process is stopped by stop_all()."""
import http.client
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BENCH_BUILD", os.path.join(ROOT, "build"))
PROXY_CPU = os.environ.get("BENCH_PROXY_CPU", "0")
LOAD_CPU = os.environ.get("BENCH_LOAD_CPU", "1")
_processes = []
_dirs = []


def ensure_built():
    """Builds what the benchmarks run (a no-op on a built tree), like bench/run.sh does."""
    if "BENCH_BUILD" not in os.environ:
        subprocess.run([os.path.join(ROOT, "scripts/build.sh"), "release", "--target", "bgproxy",
                        "bg-backend"], check=True, stdout=subprocess.DEVNULL)


def workdir():
    d = tempfile.mkdtemp(prefix="bgbench-")
    _dirs.append(d)
    return d


def start(args, cpu, pattern=None):
    """Starts a process pinned to `cpu`; with a pattern, waits for it on stdout (10 s)."""
    proc = subprocess.Popen(["taskset", "-c", cpu] + args, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    _processes.append(proc)
    match = None
    if pattern:
        deadline = time.time() + 10
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            match = re.search(pattern, line)
            if match:
                break
        if not match:
            raise RuntimeError("%s did not start" % args[0])
    return proc, match


def stop_all():
    for proc in _processes:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _processes.clear()
    for d in _dirs:
        shutil.rmtree(d, ignore_errors=True)
    _dirs.clear()


class Backend:
    def __init__(self, name):
        self.name = name
        self.proc, m = start([os.path.join(BUILD, "bench/bg-backend"), "--listen", "127.0.0.1:0",
                              "--name", name], LOAD_CPU, r"listening on ([\d.]+):(\d+)")
        self.port = int(m.group(2))
        self.address = "127.0.0.1:%d" % self.port

    def get(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode().strip()
        finally:
            conn.close()

    def kill(self):
        self.proc.kill()
        self.proc.wait()


def pools():
    """blue-1, blue-2, green-1, green-2."""
    return {c: [Backend("%s-%d" % (c, i)) for i in (1, 2)] for c in ("blue", "green")}


def unix_exchange(path, line, until_close=False):
    """Sends one line on a UNIX socket; returns (the reply up to its first newline, or up to
    the close with until_close, and the time.time_ns() when it was complete)."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(line.encode() + b"\n")
    data = b""
    while until_close or b"\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    done = time.time_ns()
    s.close()
    return data.decode(errors="replace"), done


class BgProxy:
    name = "bgproxy"

    def __init__(self, backends, weights=(100, 0), binary=None, extra=""):
        self.dir = workdir()
        self.socket = os.path.join(self.dir, "control.sock")
        pool = lambda c: ", ".join('{ name = "%s", address = "%s" }' % (b.name, b.address)
                                   for b in backends[c])
        config = os.path.join(self.dir, "bgproxy.toml")
        with open(config, "w") as f:
            f.write("""
[[listener]]
address = "127.0.0.1:0"
[routing]
blue = %d
green = %d
[pools.blue]
backends = [%s]
[pools.green]
backends = [%s]
[control]
socket = "%s"
state_file = "%s"
audit_log = "%s/audit.log"
%s
""" % (weights[0], weights[1], pool("blue"), pool("green"), self.socket,
       "" if os.environ.get("BENCH_NO_STATE") else self.dir + "/state.json", self.dir, extra))
        self.proc, m = start([binary or os.path.join(BUILD, "proxy/bgproxy"), "--config", config,
                              "--workers", "1", "--admin", "127.0.0.1:0"], PROXY_CPU,
                             r"listening on http://[\d.]+:(\d+)")
        self.port = int(m.group(1))

    def switch_to(self, colour):
        """Sends all traffic to `colour` (a flip); returns (reply, ack time in time.time_ns())."""
        reply, done = unix_exchange(self.socket, "flip")
        if '"ok":true' not in reply:
            raise RuntimeError("bgproxy refused: " + reply)
        return reply, done


class HAProxy:
    name = "haproxy"

    def __init__(self, backends, weights=(100, 0)):
        self.dir = workdir()
        self.socket = os.path.join(self.dir, "stats.sock")
        self.port = free_port()
        servers = "".join(
            "    server %s %s weight %d check inter 2s fastinter 500ms rise 2 fall 3\n"
            % (b.name, b.address, weights[0 if c == "blue" else 1])
            for c in ("blue", "green") for b in backends[c])
        config = os.path.join(self.dir, "haproxy.cfg")
        with open(config, "w") as f:
            f.write("""
global
    nbthread 1
    maxconn 4096
    stats socket %s level admin
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse always
    retries 3
    option redispatch 1
frontend fe
    bind 127.0.0.1:%d
    option forwardfor
    default_backend be
backend be
    balance leastconn
    option httpchk GET /healthz
%s""" % (self.socket, self.port, servers))
        self.backends = backends
        self.proc, _ = start(["haproxy", "-f", config, "-db"], PROXY_CPU)
        wait_port(self.port)

    def switch_to(self, colour):
        """`set weight` on every server, in one line (HAProxy runs it as one batch)."""
        other = "green" if colour == "blue" else "blue"
        line = "; ".join(["set weight be/%s 100" % b.name for b in self.backends[colour]] +
                         ["set weight be/%s 0" % b.name for b in self.backends[other]])
        # Non-interactive mode: the answers (empty when all went well), then the close.
        data, done = unix_exchange(self.socket, line, until_close=True)
        if data.strip():
            raise RuntimeError("haproxy said: " + data)
        return data, done


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on port %d" % port)


def wrk(port, seconds, connections=64):
    """wrk on the load CPU; wrk_result() reads its figures when it ends."""
    proc, _ = start(["wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds, "--latency",
                     "http://127.0.0.1:%d/" % port], LOAD_CPU)
    return proc


def wrk_result(proc):
    out = proc.communicate(timeout=120)[0]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)) if rps else 0.0,
            "socket_errors": errors.group(1) if errors else "none",
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}
