#!/usr/bin/env python3
"""Mixed-traffic soak test of bgproxy; started by bench/soak.sh (which see for the knobs).

Starts 2 blue + 2 green bg-backends (ports below the ephemeral range, so a backend restarted
after `kill -9` gets its port back) and one bgproxy on a generated config (2 workers, health
checks every second, control socket, state file, audit log, admin listener, access log), then
for SOAK_SECONDS runs, all at once:

  traffic   keep-alive GETs, a new connection per GET, POST uploads (64 KiB..1 MiB,
            Content-Length and chunked), large downloads (Content-Length and chunked), WebSocket
            echo sessions, a client sending its header slowly, a client reading a large body
            slowly, hostile inputs (each with its expected status) and request-smuggling probes
  operator  `bgctl flip` every 4 s, `bgctl set green=N`, `bgctl ramp`, a reload (bgctl reload
            and SIGHUP in turns, each after editing the config) every 25 s, and every 20 s a
            `kill -9` of one backend (in turns one of the colour taking the traffic and one of
            the other), restarted on the same port 3-6 s later (never more than one backend
            down at a time)
  sampler   VmRSS and the number of open descriptors of bgproxy every SOAK_SAMPLE_SECONDS

and then checks:

  1. failed well-formed requests: not a complete, correct response (status, body length and
     content, X-Backend/X-Served-By consistent, no stray bytes). A failure is excused only when
     it is precisely explained by a kill: the backend that was serving it (from the response
     head, or for a POST, which is never replayed once written, from the access log line
     found by the request's id) was killed while the request was in flight. Every other
     failure counts, and is listed with the kill timeline (failures.txt).
  2. responses from a colour at weight 0: every state change is timed (sent/acknowledged for
     bgctl commands; for automatic ones such as ramp steps and reverts, the proxy's change
     time and the moment `bgctl watch` reported it), and a response counts when its colour had
     weight 0 in every state that could have been in effect during the request.
     2b (access log): a request started after version V was acknowledged must have been routed
     by a table of version >= V. 2c (access log): no response from a colour at weight 0 in the
     very table the request was routed by.
     Not counted, but reported: responses while the weighted colour had no backend able to
     serve (bgproxy then routes to the other colour, as documented): a backend cannot serve
     from its kill until it listens again, nor while bgproxy has it down or ejected (from the
     health and ejection events of `bgctl watch`).
  3. RSS and descriptors of bgproxy: the curve (samples.csv) and the growth of the mean of the
     last 20% of the run over the mean of the 20%-40% window (judged for runs of 2 min+).
  4. hostile inputs answered with their expected status, nothing smuggled to a backend
     (the backends' request logs), and bgproxy alive, /healthz 200, exit 0 on SIGTERM.

Everything it writes goes to SOAK_OUT. The last line of stdout is `SOAK_RESULT {json}`.
`soak.py --analyse DIR` runs the checks again on a finished run (state.json, records.bin and
the logs, kept when the run failed or with SOAK_KEEP_LOGS=1).
Standard library only.
"""
import base64
import bisect
import collections
import hashlib
import heapq
import itertools
import json
import os
import random
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from array import array
from datetime import datetime

NAMES = ["blue-1", "blue-2", "green-1", "green-2"]
BACKEND_INDEX = {n: i for i, n in enumerate(NAMES)}
COLOUR_OF = {n: n.split("-")[0] for n in NAMES}
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "WARNING: ThreadSanitizer", "runtime error:",
                     "ERROR: LeakSanitizer")


def env_float(name, default):
    value = os.environ.get(name, "")
    return float(value) if value else default


def now():
    return time.time()


def parse_iso(text):
    # "2026-12-01T22:22:19.827Z" (UTC)
    return datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


class Interrupted(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# A strict little HTTP/1.1 client on raw sockets: we want to see exactly what came back.

class Closed(Exception):
    """The peer closed (or reset) before the response was complete."""


class Bad(Exception):
    """A response that arrived but is wrong."""


class Response:
    def __init__(self, version, status, headers, raw_head):
        self.version = version
        self.status = status
        self.headers = headers  # lower-case name -> value (duplicates joined with ", ")
        self.raw_head = raw_head
        self.body = b""
        self.until_close = False

    def header(self, name):
        return self.headers.get(name)

    def closes(self):
        conn = (self.headers.get("connection") or "").lower()
        return self.until_close or "close" in conn or self.version == "HTTP/1.0" and "keep-alive" not in conn


class Conn:
    def __init__(self, port, timeout=20.0, rcvbuf=None):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.settimeout(timeout)
            s.connect(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            s.close()
            raise
        self.s = s
        self.buf = bytearray()
        self.requests = 0
        self.received = 0  # bytes received for the current response

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def send(self, data):
        self.requests += 1
        self.received = 0
        self.s.sendall(data)

    def _more(self, n=262144):
        try:
            chunk = self.s.recv(n)
        except ConnectionResetError:
            raise Closed("connection reset after %d response bytes" % self.received)
        if not chunk:
            raise Closed("connection closed after %d response bytes" % self.received)
        self.received += len(chunk)
        self.buf += chunk
        return chunk

    def read_head(self):
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            if len(self.buf) > 131072:
                raise Bad("response head over 128 KiB")
            self._more()
        head = bytes(self.buf[:i])
        del self.buf[:i + 4]
        lines = head.split(b"\r\n")
        m = re.match(rb"(HTTP/1\.[01]) (\d{3})(?: |$)", lines[0])
        if not m:
            raise Bad("bad status line %r" % lines[0][:100])
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise Bad("bad header line %r" % line[:100])
            key = name.strip().lower().decode("latin-1")
            value = value.strip().decode("latin-1")
            headers[key] = headers[key] + ", " + value if key in headers else value
        return Response(m.group(1).decode(), int(m.group(2)), headers, head)

    def read_response(self, head_method=False, slow=None):
        """One response; 100 Continue is skipped. `slow` = (piece, pause): read that slowly."""
        while True:
            r = self.read_head()
            if r.status != 100:
                break
        if head_method or 100 <= r.status < 200 or r.status in (204, 304):
            return r
        te = r.headers.get("transfer-encoding")
        cl = r.headers.get("content-length")
        if te is not None:
            if te.lower() != "chunked":
                raise Bad("unexpected Transfer-Encoding %r" % te)
            if cl is not None:
                raise Bad("response has both Content-Length and Transfer-Encoding")
            r.body = self._read_chunked(slow)
        elif cl is not None:
            if not cl.isdigit():
                raise Bad("bad Content-Length %r" % cl)
            r.body = self._read_exact(int(cl), slow)
        else:
            r.until_close = True
            parts = [bytes(self.buf)]
            self.buf.clear()
            while True:
                try:
                    chunk = self.s.recv(262144)
                except ConnectionResetError:
                    raise Closed("reset while reading a body delimited by close")
                if not chunk:
                    break
                parts.append(chunk)
            r.body = b"".join(parts)
        return r

    def _read_exact(self, n, slow=None):
        take = min(len(self.buf), n)
        parts = [bytes(self.buf[:take])]
        del self.buf[:take]
        need = n - take
        while need > 0:
            if slow:
                time.sleep(slow[1])
            try:
                chunk = self.s.recv(min(need, slow[0] if slow else 1 << 20))
            except ConnectionResetError:
                raise Closed("reset after %d of %d body bytes" % (n - need, n))
            if not chunk:
                raise Closed("closed after %d of %d body bytes" % (n - need, n))
            parts.append(chunk)
            need -= len(chunk)
        return b"".join(parts)

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            if len(self.buf) > 8192:
                raise Bad("chunk-size line too long")
            self._more()

    def _read_chunked(self, slow=None):
        parts = []
        total = 0
        while True:
            line = self._line()
            size_text = line.split(b";")[0].strip()
            if not re.fullmatch(rb"[0-9a-fA-F]+", size_text):
                raise Bad("bad chunk size %r" % line[:50])
            size = int(size_text, 16)
            if size == 0:
                while self._line() != b"":  # trailer fields until the empty line
                    pass
                return b"".join(parts)
            while len(self.buf) < size + 2:
                if slow:
                    time.sleep(slow[1])
                self._more(slow[0] if slow else 262144)
            if self.buf[size:size + 2] != b"\r\n":
                raise Bad("chunk data longer than its size")
            parts.append(bytes(self.buf[:size]))
            del self.buf[:size + 2]
            total += size


def served_by(r):
    """The backend named by a bg-backend response, checked against the proxy's X-Served-By."""
    xb = r.header("x-backend")
    if xb not in BACKEND_INDEX:
        raise Bad("status %d, X-Backend %r" % (r.status, xb))
    sb = r.header("x-served-by")
    if sb != "%s/%s" % (COLOUR_OF[xb], xb):
        raise Bad("X-Served-By %r does not match X-Backend %r" % (sb, xb))
    return xb


# ---------------------------------------------------------------------------------------------
# WebSocket (RFC 6455) client frames.

def ws_frame(payload, opcode):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    # XOR with the mask, fast: as big integers.
    reps = (n + 3) // 4
    key = int.from_bytes((mask * reps)[:n], "big") if n else 0
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
    return head + mask + masked


def ws_read_frame(conn):
    while len(conn.buf) < 2:
        conn._more()
    b0, b1 = conn.buf[0], conn.buf[1]
    if b1 & 0x80:
        raise Bad("server frame is masked")
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        while len(conn.buf) < 4:
            conn._more()
        n = struct.unpack("!H", conn.buf[2:4])[0]
        pos = 4
    elif n == 127:
        while len(conn.buf) < 10:
            conn._more()
        n = struct.unpack("!Q", conn.buf[2:10])[0]
        pos = 10
    while len(conn.buf) < pos + n:
        conn._more()
    payload = bytes(conn.buf[pos:pos + n])
    del conn.buf[:pos + n]
    return b0 & 0x80, b0 & 0x0F, payload


# ---------------------------------------------------------------------------------------------
# What the traffic threads record.

KINDS = ["get_keepalive", "get_newconn", "post_length", "post_chunked", "download_length",
         "download_chunked", "websocket", "slow_header", "slow_reader", "smuggle_probe"]
KIND_INDEX = {k: i for i, k in enumerate(KINDS)}


class Recorder:
    """Per-thread compact record of every completed request (for the colour and version
    checks), plus shared lists of failures and hostile results."""

    def __init__(self, soak):
        self.ids = array("q")
        self.starts = array("d")
        self.ends = array("d")
        self.backends = array("b")
        self.kinds = array("b")
        self.soak = soak

    def ok(self, kind, rid, start, end, backend):
        self.ids.append(rid)
        self.starts.append(start)
        self.ends.append(end)
        self.backends.append(BACKEND_INDEX[backend])
        self.kinds.append(KIND_INDEX[kind])

    def fail(self, kind, rid, start, end, reason, backend=None, got_head=False, has_body=False,
             status=None):
        with self.soak.lock:
            self.soak.failures.append(dict(kind=kind, id=rid, start=start, end=end, reason=reason,
                                           backend=backend, got_head=got_head,
                                           has_body=has_body, status=status))


# ---------------------------------------------------------------------------------------------

class Backend:
    def __init__(self, soak, name, port):
        self.soak = soak
        self.name = name
        self.port = port
        self.proc = None
        self.generation = 0
        self.log = os.path.join(soak.out, "backend-%s.log" % name)

    def start(self):
        for attempt in range(25):
            self.generation += 1
            out = os.path.join(self.soak.logs, "%s.%d.out" % (self.name, self.generation))
            with open(out, "w") as f:
                self.proc = subprocess.Popen(
                    [self.soak.bins["bg-backend"], "--listen", "127.0.0.1:%d" % self.port,
                     "--name", self.name, "--log", self.log],
                    stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.soak.note_pid(self.proc.pid)
            deadline = now() + 5
            while now() < deadline:
                with open(out) as f:
                    text = f.read()
                if "listening on" in text:
                    return now()
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            time.sleep(0.2)  # the port is briefly taken (a connection's source port?): again
        raise RuntimeError("bg-backend %s could not listen on port %d again; see %s"
                           % (self.name, self.port, out))

    def kill9(self):
        """Returns when the signal went and when the process was gone (its sockets closed by the
        kernel in between: a request can still reach it just after the signal)."""
        sent = now()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return sent, now()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class Soak:
    def __init__(self):
        self.out = os.environ["SOAK_OUT"]
        self.seconds = env_float("SOAK_SECONDS", 600.0)
        self.strict = os.environ.get("SOAK_STRICT", "1") != "0"
        self.sample_every = env_float("SOAK_SAMPLE_SECONDS", 5.0 if self.seconds >= 120 else 2.0)
        self.seed = int(os.environ.get("SOAK_SEED") or int(time.time()))
        self.rng = random.Random(self.seed)
        self.bins = {"bgproxy": os.environ["BGPROXY"], "bg-backend": os.environ["BG_BACKEND"],
                     "bgctl": os.environ["BGCTL"]}
        self.logs = os.path.join(self.out, "logs")
        self.run_dir = os.path.join(self.out, "run")
        os.makedirs(self.logs, exist_ok=True)
        os.makedirs(self.run_dir, exist_ok=True)
        self.socket = os.path.join(self.run_dir, "control.sock")
        self.config_path = os.path.join(self.run_dir, "bgproxy.toml")
        self.access_log = os.path.join(self.out, "access.log")
        self.lock = threading.Lock()
        self.failures = []
        self.hostile = collections.Counter()       # (case, status) -> count
        self.hostile_bad = []                      # unexpected answers
        self.recorders = []
        self.ws_messages = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.ids = itertools.count(1)
        self.stop = threading.Event()
        self.threads = []
        self.backends = {}
        self.proxy = None
        self.watch = None
        self.watch_thread = None
        self.watch_events = []                     # (received at, event)
        self.ops = []                              # every operation, as dicts
        self.kills = []                            # dicts: backend, killed_at, restarted_at
        self.samples = []                          # (elapsed, rss_kb, fds, threads)
        self.health_interval = "1s"
        self.weights = {"blue": 100.0, "green": 0.0}
        self.ramp_until = 0.0
        self.t0 = None
        self.proxy_died_at = None
        self.proxy_exit = None
        self.initial = None
        self.proxy_stderr = ""
        self.pids_file = os.path.join(self.out, "pids")

    # -- processes ------------------------------------------------------------------------

    def note_pid(self, pid):
        with open(self.pids_file, "a") as f:
            f.write("%d\n" % pid)

    def pick_ports(self, count):
        """Free ports below the ephemeral range: a killed backend's port is never taken by a
        client connection's source port while it is down."""
        low = 32768
        try:
            with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
                low = int(f.read().split()[0])
        except OSError:
            pass
        ports = []
        candidates = list(range(max(1024, low - 12000), low - 10))
        self.rng.shuffle(candidates)
        for p in candidates:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    continue
            ports.append(p)
            if len(ports) == count:
                return ports
        raise RuntimeError("no free ports below %d" % low)

    def config_text(self):
        pools = {}
        for colour in ("blue", "green"):
            pools[colour] = ", ".join('{ name = "%s", address = "127.0.0.1:%d" }' % (b.name, b.port)
                                      for b in self.backends.values() if COLOUR_OF[b.name] == colour)
        return """# Generated by bench/soak.py
[server]
admin_listen = "127.0.0.1:0"
workers = 2
served_by_header = "X-Served-By"

[[listener]]
address = "127.0.0.1:0"

[timeouts]
client_header = "10s"
shutdown_grace = "10s"
shutdown_ready_delay = "200ms"

[limits]
max_connections = 4096

# The default queue (8192 lines per worker): its slots are touched as they are first used, so
# a bigger one only moves the RSS plateau up and later.
[access_log]
target = "%(access)s"

[control]
socket = "%(socket)s"
state_file = "%(run)s/state.json"
audit_log = "%(run)s/audit.log"

[routing]
blue = 100
green = 0

[health]
interval = "%(interval)s"
fast_interval = "250ms"
timeout = "1s"
rise = 2
fall = 3

[pools.blue]
backends = [%(blue)s]

[pools.green]
backends = [%(green)s]
""" % dict(access=self.access_log, socket=self.socket, run=self.run_dir,
           interval=self.health_interval, blue=pools["blue"], green=pools["green"])

    def write_config(self):
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.config_text())
        os.rename(tmp, self.config_path)

    def start_proxy(self):
        self.proxy_out = os.path.join(self.logs, "bgproxy.out")
        self.proxy_err = os.path.join(self.logs, "bgproxy.err")
        with open(self.proxy_out, "w") as o, open(self.proxy_err, "w") as e:
            self.proxy = subprocess.Popen([self.bins["bgproxy"], "--config", self.config_path],
                                          stdout=o, stderr=e, stdin=subprocess.DEVNULL)
        self.note_pid(self.proxy.pid)
        deadline = now() + 15
        while now() < deadline:
            with open(self.proxy_out) as f:
                text = f.read()
            m = re.search(r"listening on http://[\d.]+:(\d+)", text)
            a = re.search(r"admin on http://[\d.]+:(\d+)", text)
            if m and a and "control socket" in text:
                self.port = int(m.group(1))
                self.admin_port = int(a.group(1))
                return
            if self.proxy.poll() is not None:
                break
            time.sleep(0.05)
        with open(self.proxy_err) as f:
            raise RuntimeError("bgproxy did not start: %s" % f.read()[-2000:])

    def bgctl(self, *args, timeout=30):
        return subprocess.run([self.bins["bgctl"], "--socket", self.socket] + list(args),
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def start_watch(self):
        self.watch = subprocess.Popen([self.bins["bgctl"], "--socket", self.socket, "--json", "watch"],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      stdin=subprocess.DEVNULL, text=True)
        self.note_pid(self.watch.pid)
        first = self.watch.stdout.readline()
        if '"watching":true' not in first:
            raise RuntimeError("bgctl watch did not start: %r" % first)
        self.watch_log = open(os.path.join(self.out, "watch.jsonl"), "w")
        self.watch_log.write(first)

        def reader():
            for line in self.watch.stdout:
                at = now()
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self.watch_log.write(json.dumps({"received": at, **event}) + "\n")
                with self.lock:
                    self.watch_events.append((at, event))
                    if event.get("event") == "switch":
                        self.weights = dict(event["weights"])
                        kind = event.get("kind")
                        if kind != "ramp_step" and kind != "reload" and kind != "ramp" or \
                                "ramp ended" in event.get("change", ""):
                            self.ramp_until = 0.0
            self.watch_log.flush()

        self.watch_thread = threading.Thread(target=reader, daemon=True)
        self.watch_thread.start()

    def setup(self):
        ports = self.pick_ports(len(NAMES))
        for name, port in zip(NAMES, ports):
            self.backends[name] = Backend(self, name, port)
        for b in self.backends.values():
            b.start()
        self.write_config()
        self.start_proxy()
        status = json.loads(self.bgctl("--json", "status").stdout)
        self.initial = {"version": status["version"],
                        "weights": {c: status["colours"][c]["weight"] for c in ("blue", "green")}}
        self.weights = dict(self.initial["weights"])
        self.start_watch()

    # -- traffic ------------------------------------------------------------------------

    def worker(self, name, body):
        rec = Recorder(self)
        self.recorders.append(rec)
        wrng = random.Random(self.rng.random())

        def run():
            try:
                body(rec, wrng)
            except Exception:  # a bug in the soak itself: loud, and counted as a failure
                rec.fail(name, 0, now(), now(), "soak client crashed: " + traceback.format_exc())
        t = threading.Thread(target=run, name=name, daemon=True)
        self.threads.append(t)
        t.start()

    def running(self):
        return not self.stop.is_set()

    def get_keepalive(self, rec, rng):
        conn = None
        while self.running():
            rid = next(self.ids)
            start = now()
            reused = False
            try:
                if conn is None:
                    conn = Conn(self.port)
                reused = conn.requests > 0
                if conn.buf:
                    raise Bad("%d unexpected bytes after the previous response: %r"
                              % (len(conn.buf), bytes(conn.buf[:80])))
                conn.send(b"GET /?id=%d HTTP/1.1\r\nHost: soak\r\nUser-Agent: soak\r\n\r\n" % rid)
                r = conn.read_response()
                backend = served_by(r)
                if r.status != 200 or r.body != backend.encode() + b"\n":
                    raise Bad("status %d body %r" % (r.status, r.body[:80]))
                rec.ok("get_keepalive", rid, start, now(), backend)
                if r.closes():
                    conn.close()
                    conn = None
            except (OSError, Closed, Bad) as e:
                rec.fail("get_keepalive", rid, start, now(),
                         "%s%s" % ("(reused connection) " if reused else "", describe(e)))
                if conn:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn:
            conn.close()

    def get_newconn(self, rec, rng):
        while self.running():
            rid = next(self.ids)
            start = now()
            conn = None
            http10 = rng.random() < 0.2
            try:
                conn = Conn(self.port)
                if http10:
                    conn.send(b"GET /?id=%d HTTP/1.0\r\nHost: soak\r\n\r\n" % rid)
                else:
                    conn.send(b"GET /?id=%d HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n" % rid)
                r = conn.read_response()
                backend = served_by(r)
                if r.status != 200 or r.body != backend.encode() + b"\n":
                    raise Bad("status %d body %r" % (r.status, r.body[:80]))
                if not r.closes():
                    raise Bad("no Connection: close in the answer to a closing request")
                try:
                    extra = conn.s.recv(1024)
                except ConnectionResetError:
                    extra = b""
                if extra or conn.buf:
                    raise Bad("bytes after the response: %r" % (bytes(conn.buf) + extra)[:80])
                rec.ok("get_newconn", rid, start, now(), backend)
            except (OSError, Closed, Bad) as e:
                rec.fail("get_newconn", rid, start, now(), describe(e))
                time.sleep(0.05)
            finally:
                if conn:
                    conn.close()

    def post(self, rec, rng):
        blob = self.blob
        conn = None
        while self.running():
            rid = next(self.ids)
            size = rng.randint(64 * 1024, 1024 * 1024)
            chunked = rng.random() < 0.5
            kind = "post_chunked" if chunked else "post_length"
            start = now()
            got_head = False
            backend = None
            try:
                if conn is None:
                    conn = Conn(self.port)
                if conn.buf:
                    raise Bad("unexpected bytes after the previous response")
                offset = rng.randint(0, len(blob) - size)
                body = blob[offset:offset + size]
                if chunked:
                    head = (b"POST /upload?id=%d HTTP/1.1\r\nHost: soak\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n" % rid)
                    pieces = []
                    pos = 0
                    while pos < size:
                        n = min(size - pos, rng.randint(1, 65536))
                        pieces.append(b"%x\r\n" % n + body[pos:pos + n] + b"\r\n")
                        pos += n
                    pieces.append(b"0\r\n\r\n")
                    conn.send(head)
                    for p in pieces:
                        conn.s.sendall(p)
                else:
                    conn.send(b"POST /upload?id=%d HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n"
                              b"Content-Type: application/octet-stream\r\n\r\n" % (rid, size))
                    conn.s.sendall(body)
                r = conn.read_response()
                got_head = True
                backend = served_by(r)
                want = b"received %d\n" % size
                if r.status != 200 or r.body != want or r.header("x-body-bytes") != str(size):
                    raise Bad("status %d body %r X-Body-Bytes %r, want %r"
                              % (r.status, r.body[:80], r.header("x-body-bytes"), want))
                with self.lock:
                    self.bytes_up += size
                rec.ok(kind, rid, start, now(), backend)
                if r.closes():
                    conn.close()
                    conn = None
            except (OSError, Closed, Bad) as e:
                status = None
                rec.fail(kind, rid, start, now(), describe(e), backend=backend, got_head=got_head,
                         has_body=True, status=status)
                if conn:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn:
            conn.close()

    def download(self, rec, rng):
        conn = None
        while self.running():
            rid = next(self.ids)
            chunked = rng.random() < 0.4
            if chunked:
                size = rng.choice([4096, 16384, 65536])
                count = rng.randint(16, (8 << 20) // size)
                target = b"/?id=%d&chunks=%d&chunk_size=%d" % (rid, count, size)
                length = count * size
                kind = "download_chunked"
            else:
                length = rng.randint(1 << 20, 8 << 20)
                target = b"/?id=%d&bytes=%d" % (rid, length)
                kind = "download_length"
            start = now()
            backend = None
            got_head = False
            try:
                if conn is None:
                    conn = Conn(self.port)
                if conn.buf:
                    raise Bad("unexpected bytes after the previous response")
                conn.send(b"GET %s HTTP/1.1\r\nHost: soak\r\n\r\n" % target)
                r = conn.read_head()
                got_head = True
                backend = served_by(r)
                r = self.finish_body(conn, r)
                if r.status != 200 or len(r.body) != length or r.body.count(b"x") != length:
                    raise Bad("status %d, %d body bytes (want %d 'x')" % (r.status, len(r.body), length))
                with self.lock:
                    self.bytes_down += length
                rec.ok(kind, rid, start, now(), backend)
                if r.closes():
                    conn.close()
                    conn = None
            except (OSError, Closed, Bad) as e:
                rec.fail(kind, rid, start, now(), describe(e), backend=backend, got_head=got_head)
                if conn:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn:
            conn.close()

    @staticmethod
    def finish_body(conn, r, slow=None):
        te = r.headers.get("transfer-encoding")
        cl = r.headers.get("content-length")
        if te is not None:
            if te.lower() != "chunked" or cl is not None:
                raise Bad("bad response framing TE %r CL %r" % (te, cl))
            r.body = conn._read_chunked(slow)
        elif cl is not None and cl.isdigit():
            r.body = conn._read_exact(int(cl), slow)
        else:
            raise Bad("response without length: TE %r CL %r" % (te, cl))
        return r

    def websocket(self, rec, rng):
        while self.running():
            rid = next(self.ids)
            start = now()
            conn = None
            backend = None
            phase = "handshake"
            try:
                conn = Conn(self.port)
                key = base64.b64encode(os.urandom(16))
                conn.send(b"GET /ws?id=%d HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                          b"Sec-WebSocket-Version: 13\r\n\r\n" % (rid, key))
                r = conn.read_head()
                accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
                if r.status != 101 or r.header("sec-websocket-accept") != accept:
                    raise Bad("handshake: status %d, Sec-WebSocket-Accept %r (want %r)"
                              % (r.status, r.header("sec-websocket-accept"), accept))
                if "websocket" not in (r.header("upgrade") or "").lower():
                    raise Bad("handshake: Upgrade %r" % r.header("upgrade"))
                backend = r.header("x-backend")
                if backend not in BACKEND_INDEX:
                    raise Bad("101 without a known X-Backend: %r" % backend)
                sb = r.header("x-served-by")
                if sb is not None and sb != "%s/%s" % (COLOUR_OF[backend], backend):
                    raise Bad("X-Served-By %r does not match X-Backend %r" % (sb, backend))
                handshake_end = now()
                phase = "messages"
                messages = rng.randint(10, 40)
                for i in range(messages):
                    if not self.running():
                        break
                    size = rng.choice([0, 1, 125, 126, 1000, 65535, 65536, 100000]) \
                        if rng.random() < 0.3 else rng.randint(1, 4096)
                    if rng.random() < 0.5:
                        payload, opcode = os.urandom(size), 0x2
                    else:
                        payload, opcode = ("m%d-" % i).encode() * (size // 4 + 1), 0x1
                        payload = payload[:size]
                    conn.s.sendall(ws_frame(payload, opcode))
                    fin, op, got = ws_read_frame(conn)
                    if not fin or op != opcode or got != payload:
                        raise Bad("echo %d: opcode %d (want %d), %d bytes (want %d), equal %s"
                                  % (i, op, opcode, len(got), len(payload), got == payload))
                    with self.lock:
                        self.ws_messages += 1
                    time.sleep(rng.uniform(0.02, 0.25))
                phase = "close"
                conn.s.sendall(ws_frame(struct.pack("!H", 1000), 0x8))
                fin, op, got = ws_read_frame(conn)
                if op != 0x8:
                    raise Bad("close: got opcode %d" % op)
                # The handshake is the routed request: its interval is what the colour check uses.
                rec.ok("websocket", rid, start, handshake_end, backend)
            except (OSError, Closed, Bad) as e:
                rec.fail("websocket", rid, start, now(), "%s: %s" % (phase, describe(e)),
                         backend=backend, got_head=backend is not None)
                time.sleep(0.05)
            finally:
                if conn:
                    conn.close()

    def slow_header(self, rec, rng):
        while self.running():
            rid = next(self.ids)
            start = now()
            conn = None
            try:
                conn = Conn(self.port)
                head = (b"GET /?id=%d HTTP/1.1\r\nHost: soak\r\nUser-Agent: slow-header-client\r\n"
                        b"X-Slow-1: %s\r\nX-Slow-2: %s\r\nConnection: close\r\n\r\n"
                        % (rid, b"a" * 200, b"b" * 200))
                # About 3 s for the whole header (client_header = 10s): pieces every ~0.4 s.
                pieces = 8
                step = len(head) // pieces + 1
                for i in range(0, len(head), step):
                    conn.s.sendall(head[i:i + step])
                    time.sleep(0.4)
                r = conn.read_response()
                backend = served_by(r)
                if r.status != 200 or r.body != backend.encode() + b"\n":
                    raise Bad("status %d body %r" % (r.status, r.body[:80]))
                rec.ok("slow_header", rid, start, now(), backend)
            except (OSError, Closed, Bad) as e:
                rec.fail("slow_header", rid, start, now(), describe(e))
            finally:
                if conn:
                    conn.close()
            self.stop.wait(rng.uniform(0.5, 2.0))

    def slow_reader(self, rec, rng):
        while self.running():
            rid = next(self.ids)
            start = now()
            conn = None
            backend = None
            length = (4 << 20) if self.seconds >= 120 else (2 << 20)
            try:
                conn = Conn(self.port, timeout=30, rcvbuf=16384)
                conn.send(b"GET /?id=%d&bytes=%d HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n"
                          % (rid, length))
                r = conn.read_head()
                backend = served_by(r)
                # 16 KiB every 15 ms: about 1 MiB/s, a 4 MiB body in ~4 s.
                r = self.finish_body(conn, r, slow=(16384, 0.015))
                if r.status != 200 or len(r.body) != length or r.body.count(b"x") != length:
                    raise Bad("status %d, %d body bytes (want %d)" % (r.status, len(r.body), length))
                rec.ok("slow_reader", rid, start, now(), backend)
            except (OSError, Closed, Bad) as e:
                rec.fail("slow_reader", rid, start, now(), describe(e), backend=backend,
                         got_head=backend is not None)
            finally:
                if conn:
                    conn.close()
            self.stop.wait(rng.uniform(0.2, 1.0))

    def hostile_cases(self, hid):
        H = b"Host: soak\r\n"
        t = b"/hostile?id=%d" % hid
        post = b"POST " + t + b" HTTP/1.1\r\n" + H
        chunked = post + b"Transfer-Encoding: chunked\r\n\r\n"
        return [
            ("malformed request line", b"GET\r\n\r\n", 400),
            ("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40) + b"\r\n\r\n", 400),
            ("bad method token", b"G(T " + t + b" HTTP/1.1\r\n" + H + b"\r\n", 400),
            ("unreadable version", b"GET " + t + b" HTTP/1.x\r\n" + H + b"\r\n", 400),
            ("missing Host", b"GET " + t + b" HTTP/1.1\r\n\r\n", 400),
            ("two Hosts", b"GET " + t + b" HTTP/1.1\r\n" + H + b"Host: other\r\n\r\n", 400),
            ("CL and TE", post + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
            ("TE then CL", post + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
            ("TE not chunked", post + b"Transfer-Encoding: gzip\r\n\r\nhello", 400),
            ("two different CLs", post + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
            ("negative CL", post + b"Content-Length: -1\r\n\r\n", 400),
            ("obs-fold", b"GET " + t + b" HTTP/1.1\r\n" + H + b"X-A: 1\r\n  folded\r\n\r\n", 400),
            ("NUL in header", b"GET " + t + b" HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
            ("bare LF", b"GET " + t + b" HTTP/1.1\n" + H + b"\r\n", 400),
            ("URI too long", b"GET " + t + b"&" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
            ("header too large", b"GET " + t + b" HTTP/1.1\r\n" + H + b"X-Big: " + b"b" * 40000 + b"\r\n\r\n", 431),
            ("too many fields", b"GET " + t + b" HTTP/1.1\r\n" + H +
             b"".join(b"X-F%d: v\r\n" % i for i in range(150)) + b"\r\n", 431),
            ("chunk size not hex", chunked + b"zz\r\nhello\r\n0\r\n\r\n", 400),
            ("chunk longer than its size", chunked + b"5\r\nhelloEXTRA\r\n0\r\n\r\n", 400),
            ("chunk size overflow", chunked + b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400),
            ("chunk-size line too long", chunked + b"5;" + b"e" * 5000 + b"\r\nhello\r\n0\r\n\r\n", 400),
        ]

    def hostile_client(self, rec, rng):
        """Hostile inputs, each on its own connection: the expected 4xx, never a crash. Every
        few, a smuggling probe instead: 'Connection: content-length' (or transfer-encoding)
        with a request as the body, which must arrive as a body (checked in the backend logs)."""
        while self.running():
            hid = next(self.ids)
            if rng.random() < 0.2:
                self.smuggle_probe(rec, rng, hid)
            else:
                cases = self.hostile_cases(hid)
                name, data, expected = cases[rng.randrange(len(cases))]
                status = None
                try:
                    out = raw_exchange(self.port, data, timeout=8)
                    m = re.match(rb"HTTP/1\.[01] (\d{3})", out)
                    status = int(m.group(1)) if m else ("no answer" if not out else "garbage")
                except OSError as e:
                    status = "error " + type(e).__name__
                with self.lock:
                    self.hostile[(name, status)] += 1
                    if status != expected:
                        self.hostile_bad.append(dict(case=name, id=hid, at=now(), status=status,
                                                     expected=expected))
            self.stop.wait(rng.uniform(0.05, 0.4))

    def smuggle_probe(self, rec, rng, rid):
        token = rng.choice([b"content-length", b"Content-Length", b"close, content-length",
                            b"transfer-encoding", b"keep-alive, Content-Length, host"])
        chunked = rng.random() < 0.5
        smuggled = b"GET /smuggled?id=%d HTTP/1.1\r\nHost: soak\r\n\r\n" % rid
        if chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
        else:
            framing = b"Content-Length: %d\r\n" % len(smuggled)
            body = smuggled
        name = "smuggle: Connection: %s, %s" % (token.decode(), "chunked" if chunked else "CL")
        start = now()
        conn = None
        status = None
        try:
            conn = Conn(self.port, timeout=10)
            conn.send(b"POST /upload?id=%d HTTP/1.1\r\nHost: soak\r\nConnection: %s\r\n%s\r\n%s"
                      % (rid, token, framing, body))
            r = conn.read_response()
            status = r.status
            backend = served_by(r)
            if r.status != 200 or r.body != b"received %d\n" % len(smuggled):
                raise Bad("status %d body %r" % (r.status, r.body[:80]))
            rec.ok("smuggle_probe", rid, start, now(), backend)
            if not r.closes():
                # The next request on the connection must get its own, single answer.
                rid2 = next(self.ids)
                conn.send(b"GET /?id=%d HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n" % rid2)
                r2 = conn.read_response()
                b2 = served_by(r2)
                if r2.status != 200 or r2.body != b2.encode() + b"\n":
                    raise Bad("follow-up: status %d body %r (a smuggled answer?)" % (r2.status, r2.body[:80]))
                if conn.buf:
                    raise Bad("follow-up: stray bytes %r" % bytes(conn.buf[:80]))
            status = 200
        except (OSError, Closed, Bad) as e:
            rec.fail("smuggle_probe", rid, start, now(), describe(e), has_body=True, status=status)
            status = "failed"
        finally:
            if conn:
                conn.close()
        with self.lock:
            self.hostile[(name, status)] += 1

    CLIENTS = [("get_keepalive", 4), ("get_newconn", 2), ("post", 2), ("download", 1),
               ("websocket", 1), ("slow_header", 1), ("slow_reader", 1), ("hostile", 1)]

    def start_traffic(self):
        """SOAK_CLIENTS (for narrowing a problem down) picks some: "post,download"."""
        self.blob = os.urandom(2 << 20)
        only = [c for c in os.environ.get("SOAK_CLIENTS", "").split(",") if c]
        for name, count in self.CLIENTS:
            if only and name not in only:
                continue
            body = self.hostile_client if name == "hostile" else getattr(self, name)
            for _ in range(count):
                self.worker(name, body)

    # -- operations -----------------------------------------------------------------------

    def op(self, kind, *args):
        sent = now()
        try:
            r = self.bgctl("--json", kind, *args)
        except subprocess.TimeoutExpired:
            r = subprocess.CompletedProcess([], 124, "", "bgctl: no reply in 30 s")
        ack = now()
        record = dict(kind=kind, args=" ".join(args), sent=sent, ack=ack, rc=r.returncode,
                      reply=r.stdout.strip(), stderr=r.stderr.strip())
        try:
            reply = json.loads(r.stdout)
            record["version"] = reply.get("version")
            record["weights"] = reply.get("weights")
            record["ok"] = bool(reply.get("ok"))
            if reply.get("ok") and reply.get("weights"):
                with self.lock:
                    self.weights = dict(reply["weights"])
        except ValueError:
            record["ok"] = False
        self.ops.append(record)
        self.log_line("%s %s -> rc %d %s" % (kind, " ".join(args), r.returncode,
                                              (r.stdout or r.stderr).strip()[:200]))
        return record

    def log_line(self, text):
        line = "%8.3f %s" % (now() - self.t0, text)
        self.timeline.write(line + "\n")
        self.timeline.flush()
        if os.environ.get("SOAK_VERBOSE"):
            print(line, flush=True)

    def do_flip(self):
        self.op("flip")

    def do_set(self):
        with self.lock:
            current = self.weights.get("green")
        choices = [n for n in (0, 10, 25, 75, 90, 100) if n != current]
        self.op("set", "green=%d" % self.rng.choice(choices))

    def do_ramp(self):
        with self.lock:
            w = dict(self.weights)
        colour = "green" if w.get("green", 0) <= w.get("blue", 0) else "blue"
        rec = self.op("ramp", colour, "to=100", "step=25", "every=1s")
        if rec.get("ok"):
            with self.lock:
                self.ramp_until = rec["ack"] + 8.0  # cleared earlier by the watch at the end

    def do_reload(self, n):
        self.health_interval = "1s" if self.health_interval != "1s" else "1200ms"
        self.write_config()
        if n % 2 == 0:
            self.op("reload")
        else:
            sent = now()
            self.proxy.send_signal(signal.SIGHUP)
            self.ops.append(dict(kind="sighup", args="", sent=sent, ack=None, rc=0, ok=True))
            self.log_line("SIGHUP (health interval %s)" % self.health_interval)

    def do_kill(self, schedule):
        if any(not b.alive() for b in self.backends.values()):
            return  # one down at a time, at most
        # In turns: a backend of the colour taking (most of) the traffic, then one of the other;
        # within a colour, -1 and -2 in turns.
        with self.lock:
            w = dict(self.weights)
        busy = "green" if w.get("green", 0) > w.get("blue", 0) else "blue"
        colour = busy if len(self.kills) % 2 == 0 else ("blue" if busy == "green" else "green")
        self.kill_turn[colour] += 1
        name = "%s-%d" % (colour, 1 + self.kill_turn[colour] % 2)
        b = self.backends[name]
        pid = b.proc.pid
        at, gone = b.kill9()
        self.kills.append(dict(backend=name, pid=pid, killed_at=at, gone_at=gone, restarted_at=None,
                               weights=w))
        self.log_line("kill -9 %s (pid %d; weights blue %s, green %s)" % (
            name, pid, w.get("blue"), w.get("green")))
        heapq.heappush(schedule, (at + self.rng.uniform(3.0, 6.0), next(self.seq), "restart", name))

    def do_restart(self, name, schedule):
        b = self.backends[name]
        if b.alive():
            return
        try:
            at = b.start()
        except RuntimeError as e:
            if now() < self.t0 + self.seconds + 20:  # bounded, like everything else
                self.log_line("restart of %s failed, again in 1 s: %s" % (name, e))
                heapq.heappush(schedule, (now() + 1.0, next(self.seq), "restart", name))
            else:
                self.log_line("restart of %s failed, giving up: %s" % (name, e))
            return
        for k in reversed(self.kills):
            if k["backend"] == name:
                k["restarted_at"] = at
                break
        self.log_line("restarted %s on port %d (pid %d)" % (name, b.port, b.proc.pid))

    def sample(self):
        pid = self.proxy.pid
        rss = threads = None
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
                    elif line.startswith("Threads:"):
                        threads = int(line.split()[1])
            fds = len(os.listdir("/proc/%d/fd" % pid))
        except OSError:
            return
        done = sum(len(r.ids) for r in self.recorders)
        self.samples.append((now() - self.t0, rss, fds, threads, done))

    def check_proxy(self):
        if self.proxy.poll() is not None and self.proxy_died_at is None:
            self.proxy_died_at = now()
            self.log_line("bgproxy EXITED with %s" % self.proxy.returncode)
            return False
        return self.proxy_died_at is None

    def run(self):
        self.t0 = now()
        self.timeline = open(os.path.join(self.out, "timeline.log"), "w")
        self.log_line("start: bgproxy pid %d port %d admin %d; backends %s; %g s, seed %d" % (
            self.proxy.pid, self.port, self.admin_port,
            ", ".join("%s:%d" % (b.name, b.port) for b in self.backends.values()),
            self.seconds, self.seed))
        self.sample()  # the "start" figure: after start-up, before any traffic
        self.start_traffic()
        self.kill_turn = {"blue": 1, "green": 1}
        self.seq = itertools.count()
        end = self.t0 + self.seconds
        schedule = []
        plan = [("flip", 3.0, 4.0), ("set", 9.0, 29.0), ("reload", 11.0, 25.0),
                ("ramp", 16.0, 43.0), ("kill", 6.0, 20.0), ("sample", self.sample_every, self.sample_every)]
        # SOAK_OPS (for narrowing a problem down) picks some: "flip,kill" ("none": no operations).
        only = [o for o in os.environ.get("SOAK_OPS", "").split(",") if o]
        for name, first, every in plan:
            if only and name not in only and name != "sample":
                continue
            heapq.heappush(schedule, (self.t0 + first, next(self.seq), name, every))
        reloads = 0
        while schedule:
            at, _, name, arg = heapq.heappop(schedule)
            if at >= end and name != "restart":
                continue
            while now() < at:
                time.sleep(min(0.05, max(0.0, at - now())))
            if not self.check_proxy():
                break
            if name in ("flip", "set", "ramp"):
                with self.lock:
                    busy = self.ramp_until > now()
                if busy:  # a ramp is stepping: operate after it
                    heapq.heappush(schedule, (now() + 0.5, next(self.seq), name, arg))
                    continue
            if name == "flip":
                self.do_flip()
            elif name == "set":
                self.do_set()
            elif name == "ramp":
                self.do_ramp()
            elif name == "reload":
                self.do_reload(reloads)
                reloads += 1
            elif name == "kill":
                self.do_kill(schedule)
            elif name == "restart":
                self.do_restart(arg, schedule)
                continue
            elif name == "sample":
                self.sample()
            heapq.heappush(schedule, (at + arg, next(self.seq), name, arg))
        while now() < end and self.check_proxy():
            time.sleep(0.05)
        self.sample()
        self.log_line("end of the run: stopping the clients")
        self.stop.set()
        deadline = now() + 30
        for t in self.threads:
            t.join(max(0.1, deadline - now()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        if stuck:
            self.log_line("clients still busy after 30 s: %s" % stuck)
        self.stuck = stuck
        self.alive_at_end = self.check_proxy()
        self.admin_healthz = None
        if self.alive_at_end:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.admin_port, timeout=5) as r:
                    self.admin_healthz = r.status
                with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.admin_port, timeout=5) as r:
                    with open(os.path.join(self.out, "metrics.txt"), "wb") as f:
                        f.write(r.read())
            except OSError as e:
                self.admin_healthz = str(e)
        status = self.bgctl("--json", "status")
        with open(os.path.join(self.out, "status-end.json"), "w") as f:
            f.write(status.stdout)
        # Graceful stop: SIGTERM, in-flight finish, exit 0; the access log is complete after it.
        if self.proxy.poll() is None:
            self.proxy.send_signal(signal.SIGTERM)
            try:
                self.proxy_exit = self.proxy.wait(20)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy_exit = "killed after 20 s of SIGTERM"
        else:
            self.proxy_exit = self.proxy.returncode
        self.log_line("bgproxy exit: %s" % self.proxy_exit)
        with open(self.proxy_err) as f:
            self.proxy_stderr = f.read()
        if self.watch_thread:
            self.watch_thread.join(5)
        self.timeline.close()

    def cleanup(self):
        self.stop.set()
        procs = [b.proc for b in self.backends.values() if b.proc] + \
                [p for p in (self.proxy, self.watch) if p]
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass

    # -- saved state: the analysis can be run again later (soak.py --analyse DIR) ----------

    STATE = ["t0", "seconds", "seed", "strict", "failures", "hostile_bad", "ws_messages", "bytes_up",
             "bytes_down", "ops", "kills", "samples", "initial", "proxy_pid", "port", "admin_port",
             "alive_at_end", "proxy_died_at", "admin_healthz", "proxy_exit", "stuck", "max_id",
             "watch_events", "proxy_stderr"]
    RECORD_ARRAYS = ["ids", "starts", "ends", "backends", "kinds"]

    def save(self):
        self.max_id = next(self.ids)
        self.proxy_pid = self.proxy.pid
        merged = Recorder(None)
        for r in self.recorders:
            for name in self.RECORD_ARRAYS:
                getattr(merged, name).extend(getattr(r, name))
        with open(os.path.join(self.out, "records.bin"), "wb") as f:
            for name in self.RECORD_ARRAYS:
                getattr(merged, name).tofile(f)
        state = {k: getattr(self, k) for k in self.STATE}
        state["hostile"] = [[case, status, n] for (case, status), n in self.hostile.items()]
        state["records"] = len(merged.ids)
        with open(os.path.join(self.out, "state.json"), "w") as f:
            json.dump(state, f, default=str)

    @classmethod
    def load(cls, out):
        self = cls.__new__(cls)
        with open(os.path.join(out, "state.json")) as f:
            state = json.load(f)
        for k in cls.STATE:
            setattr(self, k, state[k])
        self.strict = os.environ.get("SOAK_STRICT", "1") != "0"
        self.out = out
        self.access_log = os.path.join(out, "access.log")
        self.lock = threading.Lock()
        self.hostile = collections.Counter({(case, status): n for case, status, n in state["hostile"]})
        self.samples = [tuple(x) for x in self.samples]
        self.watch_events = [tuple(x) for x in self.watch_events]
        rec = Recorder(None)
        with open(os.path.join(out, "records.bin"), "rb") as f:
            for name in cls.RECORD_ARRAYS:
                getattr(rec, name).fromfile(f, state["records"])
        self.recorders = [rec]
        return self

    # -- analysis -------------------------------------------------------------------------

    def read_access_log(self, max_id, wanted):
        versions = array("i", [-1]) * (max_id + 1)
        details = {}
        lines = dropped = 0
        try:
            f = open(self.access_log, "rb")
        except OSError:
            return versions, details, 0
        id_re = re.compile(rb'"path":"[^"]*[?&]id=(\d+)')
        ver_re = re.compile(rb'"version":(\d+)')
        with f:
            for line in f:
                lines += 1
                m = id_re.search(line)
                if not m:
                    continue
                rid = int(m.group(1))
                v = ver_re.search(line)
                if rid <= max_id and v:
                    versions[rid] = int(v.group(1))
                if rid in wanted:
                    try:
                        details[rid] = json.loads(line)
                    except ValueError:
                        pass
        return versions, details, lines

    def tunnel_closes(self):
        """(time, colour) of each "closed N tunnel(s) of COLOUR" the proxy logged."""
        closes = []
        pattern = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\].*closed \d+ tunnel\(s\) of (\w+)")
        with open(self.proxy_out) as f:  # the proxy logs to stdout
            for line in f:
                m = pattern.match(line)
                if m:
                    at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")  # local time
                    closes.append((time.mktime(at.timetuple()) + at.microsecond / 1e6, m.group(2)))
        return closes

    def analyse(self):
        res = {"seconds": self.seconds, "seed": self.seed, "out": self.out}
        kills = [(k["killed_at"], k["backend"], k.get("gone_at", k["killed_at"])) for k in self.kills]

        def kill_during(backend, start, end):
            """The backend was dying (signal sent, process not yet gone) during the request."""
            return [k for k in kills if k[1] == backend and k[0] - 0.001 <= end and start <= k[2] + 0.001]

        tunnel_closes = self.tunnel_closes()

        def tunnel_closed_by_proxy(backend, start, end):
            """The proxy closed its colour's tunnels (the colour lost its share: a revert's
            tunnel_drain_revert, or a planned change's tunnel_drain) while the tunnel was open."""
            return [t for t, colour in tunnel_closes
                    if colour == COLOUR_OF.get(backend) and start - 0.001 <= t <= end + 0.5]

        # ---- the routing timeline: one entry per state version.
        ops_by_version = {}
        for o in self.ops:
            if o.get("ok") and o.get("version") is not None and o["kind"] != "sighup":
                ops_by_version.setdefault(o["version"], o)
        switches = [(at, e) for at, e in self.watch_events if e.get("event") == "switch"]
        timeline = [dict(version=self.initial["version"], weights=self.initial["weights"],
                         begin=float("-inf"), certain=float("-inf"), kind="initial", by="")]
        gaps = []
        for at, e in sorted(switches, key=lambda x: x[1]["version"]):
            v = e["version"]
            if v != timeline[-1]["version"] + 1:
                gaps.append((timeline[-1]["version"], v))
            op = ops_by_version.get(v)
            if op:
                begin, certain = op["sent"], op["ack"]
            else:
                begin, certain = parse_iso(e["time"]) - 0.002, at
            timeline.append(dict(version=v, weights=e["weights"], begin=begin, certain=certain,
                                 kind=e.get("kind"), by=e.get("by", ""), reason=e.get("reason", "")))
        begins = [t["begin"] for t in timeline]
        certains = [t["certain"] for t in timeline]
        # The latest version certainly in effect at a time: every worker has it (acknowledged).
        cert_sorted = sorted((t["certain"], t["version"]) for t in timeline)
        cert_times = [c for c, _ in cert_sorted]
        cert_running_max = []
        m = -1
        for _, v in cert_sorted:
            m = max(m, v)
            cert_running_max.append(m)

        def possible_versions(start, end):
            hi = bisect.bisect_right(begins, end) - 1
            out = []
            i = hi
            while i >= 0:
                nxt_certain = certains[i + 1] if i + 1 < len(timeline) else float("inf")
                if nxt_certain > start:
                    out.append(timeline[i])
                elif timeline[i]["begin"] < start - 60:
                    break
                i -= 1
            return out

        # ---- which backends could serve: killed ones not (from the kill until they listen
        # again, whatever bgproxy believes meanwhile), nor those bgproxy has down or ejected (its
        # health and ejection events). Routing gives a colour with no backend able to serve no
        # share while the other can (documented), so a response from a weight-0 colour is
        # explained when the weighted one had none.
        #
        # One outlier tick applies returns before new ejections but reports the ejections
        # first, each with its own clock reading: an "ejected" event followed within 50 ms by
        # "returns" for the same backend is one re-ejection (the backend never came back).
        reejected = set()   # indexes into self.watch_events of the "returns" half of such pairs
        reejections = []
        pending = {}
        for i, (at, e) in enumerate(self.watch_events):
            if e.get("event") != "ejection":
                continue
            t = parse_iso(e["time"])
            if e.get("ejected"):
                pending[e["backend"]] = (t, i, e)
            elif e["backend"] in pending and t - pending[e["backend"]][0] <= 0.05:
                reejected.add(i)
                reejections.append(dict(backend=e["backend"], at=round(at - self.t0, 3),
                                        change=pending[e["backend"]][2]["change"]))
                del pending[e["backend"]]
        state_events = []
        for k in self.kills:
            state_events.append((k["killed_at"], k["killed_at"], k["backend"], "alive", False))
            if k["restarted_at"]:
                state_events.append((k["restarted_at"], k["restarted_at"], k["backend"], "alive", True))
        for i, (at, e) in enumerate(self.watch_events):
            if e.get("event") == "health":
                state_events.append((parse_iso(e["time"]), at, e["backend"], "healthy", bool(e["healthy"])))
            elif e.get("event") == "ejection" and i not in reejected:
                state_events.append((parse_iso(e["time"]), at, e["backend"], "ejected", bool(e["ejected"])))
        state_events.sort(key=lambda x: x[0])
        usable = {n: {"healthy": True, "ejected": False, "alive": True} for n in NAMES}
        empty_since = {"blue": None, "green": None}
        empty = {"blue": [], "green": []}  # (from, until): no backend able to serve in the colour
        for t, at, backend, field, value in state_events:
            if backend not in usable:
                continue
            usable[backend][field] = value
            colour = COLOUR_OF[backend]
            count = sum(1 for n in NAMES if COLOUR_OF[n] == colour and usable[n]["healthy"]
                        and not usable[n]["ejected"] and usable[n]["alive"])
            if count == 0 and empty_since[colour] is None:
                empty_since[colour] = t - (0.001 if field == "alive" else 0.05)
            elif count > 0 and empty_since[colour] is not None:
                empty[colour].append((empty_since[colour], at + 0.25))
                empty_since[colour] = None
        for colour in empty:
            if empty_since[colour] is not None:
                empty[colour].append((empty_since[colour], float("inf")))

        def colour_was_empty(colour, start, end):
            return any(a <= end and b >= start for a, b in empty[colour])

        # ---- merge the per-thread records.
        n = sum(len(r.ids) for r in self.recorders)
        by_kind = collections.Counter()
        by_colour = collections.Counter()
        wrong = []
        max_id = self.max_id
        for r in self.recorders:
            for i in range(len(r.ids)):
                kind = KINDS[r.kinds[i]]
                backend = NAMES[r.backends[i]]
                by_kind[kind] += 1
                colour = COLOUR_OF[backend]
                by_colour[colour] += 1
                start, end = r.starts[i], r.ends[i]
                possible = possible_versions(start, end)
                if possible and all(p["weights"].get(colour, 0) == 0 for p in possible):
                    wrong.append(dict(id=r.ids[i], kind=kind, backend=backend, start=start, end=end,
                                      versions=[p["version"] for p in possible]))

        wanted = set(f["id"] for f in self.failures) | set(w["id"] for w in wrong)
        versions, details, log_lines = self.read_access_log(max_id, wanted)

        # ---- check 2b: routed by a table older than one already acknowledged; and 2c: served
        # by a colour at weight 0 in the very table the request was routed by (access log),
        # when the other colour had a backend able to serve.
        stale = []
        routed_weight0 = []
        routed_weight0_fallback = 0
        weights_of = {t["version"]: t["weights"] for t in timeline}
        logged = 0
        for r in self.recorders:
            for i in range(len(r.ids)):
                v_log = versions[r.ids[i]]
                if v_log < 0:
                    continue
                logged += 1
                j = bisect.bisect_left(cert_times, r.starts[i]) - 1
                if j >= 0 and v_log < cert_running_max[j]:
                    stale.append(dict(id=r.ids[i], kind=KINDS[r.kinds[i]], backend=NAMES[r.backends[i]],
                                      start=r.starts[i], routed_version=v_log,
                                      acknowledged_version=cert_running_max[j]))
                colour = COLOUR_OF[NAMES[r.backends[i]]]
                w = weights_of.get(v_log)
                if w is not None and w.get(colour, 0) == 0:
                    other = "green" if colour == "blue" else "blue"
                    if colour_was_empty(other, r.starts[i], r.ends[i]):
                        routed_weight0_fallback += 1
                    else:
                        routed_weight0.append(dict(id=r.ids[i], kind=KINDS[r.kinds[i]],
                                                   backend=NAMES[r.backends[i]], start=r.starts[i],
                                                   end=r.ends[i], routed_version=v_log))

        fallback = []
        cross_retry = []
        violations = []
        for w in wrong:
            d = details.get(w["id"])
            if d:
                w["access_log"] = {k: d.get(k) for k in ("version", "colour", "backend", "retries", "status", "error")}
            weighted = "green" if COLOUR_OF[w["backend"]] == "blue" else "blue"
            if colour_was_empty(weighted, w["start"], w["end"]):
                w["explained"] = "%s had no live backend able to serve (killed, down or ejected)" % weighted
                fallback.append(w)
            elif d and (d.get("retries") or 0) > 0:
                w["explained"] = "retried across colours (access log: %d retries)" % d["retries"]
                cross_retry.append(w)
            else:
                violations.append(w)
        wrong_all, wrong = wrong, violations

        # ---- check 1: classify failures.
        counted = []
        excused = []
        for f in sorted(self.failures, key=lambda f: f["start"]):
            d = details.get(f["id"])
            f["access_log"] = ({k: d.get(k) for k in ("status", "colour", "backend", "retries", "error",
                                                       "version", "bytes_in", "bytes_out")}
                               if d else None)
            f["kills_during"] = [dict(backend=k[1], at=k[0] - self.t0, gone=k[2] - self.t0)
                                 for k in kills if k[0] - 0.001 <= f["end"] and f["start"] <= k[2] + 0.001]
            why = None
            if f["backend"] and f["got_head"] and kill_during(f["backend"], f["start"], f["end"]):
                why = "its backend %s was killed while the response was streaming" % f["backend"]
            elif f["has_body"] and d and d.get("backend") and \
                    kill_during(d["backend"], f["start"], f["end"]):
                # A POST is never sent twice once a byte of it was written (README: No
                # replays), its head alone included: a kill after the head left and before any
                # of the body was read (bytes_in 0) fails it as surely as one after.
                why = ("its backend %s was killed after the request reached it (a POST is not "
                       "replayed)" % d["backend"])
            elif f["kind"] == "websocket" and f["backend"] and f["got_head"] and \
                    tunnel_closed_by_proxy(f["backend"], f["start"], f["end"]):
                why = ("the proxy closed %s's tunnels: the colour lost its share (by design, "
                       "so clients reconnect onto the colour serving)" % COLOUR_OF[f["backend"]])
            if why:
                f["excused"] = why
                excused.append(f)
            else:
                counted.append(f)

        # ---- check 3: memory and descriptors.
        def growth(col):
            pts = [(t, s[col]) for s in self.samples for t in [s[0]] if s[col] is not None]
            if not pts:
                return {}
            d = self.seconds
            warm = [v for t, v in pts if 0.2 * d <= t <= 0.4 * d]
            last = [v for t, v in pts if t >= 0.8 * d]
            out = {"start": pts[0][1], "end": pts[-1][1], "max": max(v for _, v in pts)}
            if warm and last:
                w, l = statistics.mean(warm), statistics.mean(last)
                out.update(warm=round(w, 1), last=round(l, 1),
                           growth_pct=round(100.0 * (l - w) / w, 2) if w else None)
            return out

        rss = growth(1)
        fds = growth(2)
        with open(os.path.join(self.out, "samples.csv"), "w") as f:
            f.write("elapsed_s,rss_kb,fds,threads,requests_done\n")
            for s in self.samples:
                f.write("%.1f,%s,%s,%s,%s\n" % s)

        # ---- backend logs: what reached the backends.
        smuggled = reached = 0
        for name in NAMES:
            try:
                with open(os.path.join(self.out, "backend-%s.log" % name), "rb") as f:
                    for line in f:
                        if b"/smuggled" in line:
                            smuggled += 1
                        if b"/hostile" in line:
                            reached += 1
            except OSError:
                pass

        ops = collections.Counter()
        refused = []
        for o in self.ops:
            key = o["kind"] + ("" if o.get("ok") else "_refused")
            if o["kind"] == "ramp" and o.get("ok"):
                key = "ramp"
            ops[key] += 1
            if not o.get("ok"):
                refused.append(o)
        auto = collections.Counter(e.get("kind") for _, e in switches
                                   if e.get("kind") in ("auto_revert", "failover"))
        sighups_applied = sum(1 for _, e in switches if e.get("kind") == "reload"
                              and "pid %d" % self.proxy_pid in e.get("by", ""))
        health_events = collections.Counter(
            ("%s %s" % (e.get("backend"), "up" if e.get("healthy") else "down"))
            for _, e in self.watch_events if e.get("event") == "health")
        ejections = sum(1 for _, e in self.watch_events if e.get("event") == "ejection" and e.get("ejected"))

        metrics = {}
        try:
            with open(os.path.join(self.out, "metrics.txt")) as f:
                for line in f:
                    m = re.match(r"(bgproxy_(?:access_log_dropped_total|retries_total|ejections_total|"
                                 r"upstream_connect_failures_total|bad_requests_total|requests_total|"
                                 r"downstream_connections_total|upstream_broken_responses_total|"
                                 r"client_header_timeouts_total|upstream_timeouts_total)) (\S+)$", line)
                    if m:
                        metrics[m.group(1)[len("bgproxy_"):]] = float(m.group(2))
        except OSError:
            pass
        sanitizer = any(m in self.proxy_stderr for m in SANITIZER_MARKERS)
        crash_words = [w for w in ("Segmentation", "terminate called", "Aborted", "core dumped")
                       if w in self.proxy_stderr]
        hostile_total = sum(self.hostile.values())
        res.update({
            "requests": dict(by_kind), "requests_total": n, "requests_by_colour": dict(by_colour),
            "websocket_messages": self.ws_messages,
            "mib_uploaded": round(self.bytes_up / 1048576.0, 1),
            "mib_downloaded": round(self.bytes_down / 1048576.0, 1),
            "failed": len(counted), "failed_excused_by_kill": len(excused),
            "old_colour_after_ack": len(wrong), "stale_version_after_ack": len(stale),
            "weight0_in_routed_table": len(routed_weight0),
            "weight0_in_routed_table_fallback": routed_weight0_fallback,
            "weight0_colour_fallback": len(fallback), "weight0_colour_cross_retry": len(cross_retry),
            "colour_without_usable_backend": {c: [[round(a - self.t0, 3), round(b - self.t0, 3)]
                                                  for a, b in v] for c, v in empty.items()},
            "reejections": reejections,
            "access_log_lines": log_lines, "access_log_matched": logged,
            "timeline_versions": len(timeline), "timeline_gaps": gaps,
            "rss_kb": rss, "fds": fds, "samples": len(self.samples),
            "hostile_sent": hostile_total,
            "hostile_statuses": {"%s -> %s" % k: v for k, v in sorted(self.hostile.items(), key=str)},
            "hostile_unexpected": len(self.hostile_bad),
            "smuggled_reached_backend": smuggled, "hostile_reached_backend": reached,
            "ops": dict(ops), "auto_switches": dict(auto), "sighup_reloads_applied": sighups_applied,
            "kills": len(self.kills), "restarts": sum(1 for k in self.kills if k["restarted_at"]),
            "health_events": dict(health_events), "ejections": ejections, "metrics": metrics,
            "proxy_alive": self.alive_at_end and self.proxy_died_at is None,
            "proxy_exit": self.proxy_exit, "admin_healthz": self.admin_healthz,
            "sanitizer_report": sanitizer, "crash_markers": crash_words,
            "clients_stuck": self.stuck,
        })
        short = self.seconds < 120
        growth_ok = lambda g: g.get("growth_pct") is not None and g["growth_pct"] < 5.0
        res["goals"] = {
            "1_no_failed_requests": len(counted) == 0,
            "2_no_old_colour_after_ack": len(wrong) == 0 and len(stale) == 0 and not routed_weight0
            and not gaps,
            "3_rss_growth_under_5pct": growth_ok(rss) or short,
            "3_fd_growth_under_5pct": growth_ok(fds) or short,
            "4_hostile_answered_as_expected": not self.hostile_bad and smuggled == 0 and reached == 0,
            "5_proxy_alive_and_clean_exit": res["proxy_alive"] and self.proxy_exit == 0
            and not sanitizer and not crash_words and self.admin_healthz == 200,
        }
        res["growth_goal_evaluated"] = not short
        res["pass"] = all(res["goals"].values())

        # ---- files.
        with open(os.path.join(self.out, "failures.txt"), "w") as f:
            f.write(self.failure_text(counted, excused))
        with open(os.path.join(self.out, "wrong_colour.json"), "w") as f:
            json.dump({"old_colour_after_ack": wrong[:1000], "stale_version_after_ack": stale[:1000],
                       "weight0_in_routed_table": routed_weight0[:1000],
                       "explained_fallback": fallback[:1000], "explained_cross_retry": cross_retry[:1000]},
                      f, indent=1)
        with open(os.path.join(self.out, "ops.json"), "w") as f:
            json.dump({"t0": self.t0, "ops": self.ops, "kills": self.kills, "timeline": timeline},
                      f, indent=1, default=str)
        with open(os.path.join(self.out, "hostile_unexpected.json"), "w") as f:
            json.dump(self.hostile_bad, f, indent=1)
        self.counted, self.excused, self.wrong, self.stale = counted, excused, wrong, stale
        return res

    def failure_text(self, counted, excused):
        t0 = self.t0
        lines = ["Kill timeline (seconds from start):"]
        for k in self.kills:
            lines.append("  %8.3f kill -9 %-8s gone %8.3f restarted %s" % (
                k["killed_at"] - t0, k["backend"], k.get("gone_at", k["killed_at"]) - t0,
                "%8.3f" % (k["restarted_at"] - t0) if k["restarted_at"] else "never"))
        for title, items in (("COUNTED failures (goal 1)", counted),
                             ("Excused failures (a killed backend, or tunnels the proxy closed)", excused)):
            lines.append("")
            lines.append("%s: %d" % (title, len(items)))
            for f in items:
                lines.append("  %8.3f..%8.3f %-16s id=%d %s" % (
                    f["start"] - t0, f["end"] - t0, f["kind"], f["id"], f["reason"]))
                if f.get("excused"):
                    lines.append("      excused: %s" % f["excused"])
                if f.get("access_log"):
                    lines.append("      access log: %s" % json.dumps(f["access_log"]))
                if f.get("kills_during"):
                    lines.append("      kills during it: %s" % ", ".join(
                        "%s at %.3f (gone at %.3f)" % (k["backend"], k["at"], k["gone"])
                        for k in f["kills_during"]))
        return "\n".join(lines) + "\n"

    def report(self, res):
        t0 = self.t0
        summary = open(os.path.join(self.out, "summary.txt"), "w")

        def P(s=""):
            print(s, flush=True)
            summary.write(s + "\n")
        P()
        P("bgproxy soak: %g s, seed %d, output in %s" % (self.seconds, self.seed, self.out))
        P()
        P("%-22s %10s" % ("requests", "count"))
        for k in KINDS:
            if res["requests"].get(k):
                P("  %-20s %10d" % (k, res["requests"][k]))
        P("  %-20s %10d   (blue %d, green %d)" % ("total ok", res["requests_total"],
                                                 res["requests_by_colour"].get("blue", 0),
                                                 res["requests_by_colour"].get("green", 0)))
        P("  %-20s %10d" % ("websocket messages", res["websocket_messages"]))
        P("  %-20s %10s" % ("MiB up / down", "%s / %s" % (res["mib_uploaded"], res["mib_downloaded"])))
        P("  %-20s %10d   (%d answered otherwise than expected)" % (
            "hostile inputs", res["hostile_sent"], res["hostile_unexpected"]))
        by_status = collections.Counter()
        for (case, status), c in self.hostile.items():
            by_status[str(status)] += c
        P("  %-20s %s" % ("hostile statuses", ", ".join("%s: %d" % kv for kv in sorted(by_status.items()))))
        o = res["ops"]
        P("  %-20s flips %d, sets %d, ramps %d, reloads %d (bgctl) + %d (SIGHUP, %d applied), "
          "kills %d, restarts %d; refused %d; automatic switches %s"
          % ("operations", o.get("flip", 0), o.get("set", 0), o.get("ramp", 0), o.get("reload", 0),
             o.get("sighup", 0), res["sighup_reloads_applied"], res["kills"], res["restarts"],
             sum(v for k, v in o.items() if k.endswith("_refused")), res["auto_switches"] or "none"))
        P()
        rss, fds = res["rss_kb"], res["fds"]
        P("%-24s %10s %12s %10s %10s %9s" % ("bgproxy", "start", "warm(20-40%)", "last 20%", "max", "growth"))
        for label, g in (("RSS (KiB)", rss), ("open descriptors", fds)):
            P("%-24s %10s %12s %10s %10s %8s%%" % (label, g.get("start"), g.get("warm"), g.get("last"),
                                                  g.get("max"), g.get("growth_pct")))
        P("curve: %s/samples.csv (%d samples)" % (self.out, res["samples"]))
        P()
        P("%-58s %8s  %s" % ("goal", "value", "result"))
        rows = [
            ("1 failed well-formed requests (excused: %d: a killed backend, or a closed tunnel)"
             % res["failed_excused_by_kill"], res["failed"], "1_no_failed_requests"),
            ("2 responses from a weight-0 colour after the ack", res["old_colour_after_ack"],
             "2_no_old_colour_after_ack"),
            ("2b requests routed by a table older than the acked one", res["stale_version_after_ack"],
             None),
            ("2c served by a colour at weight 0 in its own routing table", res["weight0_in_routed_table"],
             None),
            ("3 RSS growth after warm-up (%)", rss.get("growth_pct"), "3_rss_growth_under_5pct"),
            ("3 descriptor growth after warm-up (%)", fds.get("growth_pct"), "3_fd_growth_under_5pct"),
            ("4 hostile inputs not answered as expected / smuggled", "%d/%d" % (
                res["hostile_unexpected"], res["smuggled_reached_backend"] + res["hostile_reached_backend"]),
             "4_hostile_answered_as_expected"),
            ("5 bgproxy alive, /healthz 200, SIGTERM exit", res["proxy_exit"], "5_proxy_alive_and_clean_exit"),
        ]
        for label, value, goal in rows:
            if goal is None:
                verdict = "ok" if not value else "MISSED"
            else:
                verdict = "ok" if res["goals"][goal] else "MISSED"
            if goal and goal.startswith("3_") and not res["growth_goal_evaluated"]:
                verdict = "not judged (run < 120 s)"
            P("%-58s %8s  %s" % (label, value, verdict))
        if res["weight0_colour_fallback"] or res["weight0_colour_cross_retry"]:
            P("   not counted in 2: %d responses from the weight-0 colour while the weighted one had no"
              % res["weight0_colour_fallback"])
            P("   live backend able to serve (killed, or down/ejected by bgproxy's own events), %d retried"
              % res["weight0_colour_cross_retry"])
            P("   across colours (access log); windows without a usable backend: %s" % json.dumps(
                {c: v for c, v in res["colour_without_usable_backend"].items() if v}))
        if res["reejections"]:
            P("NOTE: %d ejections ended and began again in the same outlier tick (the backend never "
              "came back):" % len(res["reejections"]))
            for r in res["reejections"][:6]:
                P("   %8.3f %s" % (r["at"], r["change"]))
        if res["timeline_gaps"]:
            P("WARNING: versions missing from the watch stream: %s" % res["timeline_gaps"])
        if self.counted:
            P()
            P("Counted failures (first 15; all in failures.txt, with the kill timeline):")
            for f in self.counted[:15]:
                P("  %8.3f %-16s id=%d %s %s" % (f["start"] - t0, f["kind"], f["id"], f["reason"][:150],
                                                  ("| access log: %s" % json.dumps(f["access_log"]))
                                                  if f.get("access_log") else ""))
        if self.wrong or self.stale:
            P()
            P("Old-colour / stale-table responses (first 10; all in wrong_colour.json):")
            for w in self.wrong[:10]:
                P("  %8.3f %-16s id=%d %s versions %s %s" % (w["start"] - t0, w["kind"], w["id"], w["backend"],
                                                             w["versions"], w.get("access_log", "")))
            for w in self.stale[:10]:
                P("  %8.3f %-16s id=%d %s routed by v%d after v%d was acknowledged" % (
                    w["start"] - t0, w["kind"], w["id"], w["backend"], w["routed_version"],
                    w["acknowledged_version"]))
        if self.hostile_bad:
            P()
            P("Hostile inputs answered otherwise (first 10):")
            for h in self.hostile_bad[:10]:
                P("  %8.3f %s: got %s, want %s" % (h["at"] - t0, h["case"], h["status"], h["expected"]))
        P()
        P("PASS" if res["pass"] else ("FAIL" if self.strict else "FAIL (SOAK_STRICT=0: reported only)"))
        with open(os.path.join(self.out, "result.json"), "w") as f:
            json.dump(res, f, indent=1, default=str)
        P("SOAK_RESULT " + json.dumps(res, default=str, separators=(",", ":")))
        summary.close()


def describe(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    return "%s: %s" % (type(e).__name__, e) if not isinstance(e, (Closed, Bad)) else str(e)


def raw_exchange(port, data, timeout=5.0):
    """Sends raw bytes; returns everything received until the server closes or the timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before we finished sending: read what came
        chunks = []
        deadline = now() + timeout
        while now() < deadline:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def main():
    def on_signal(signum, frame):
        raise Interrupted("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if sys.argv[1:2] == ["--analyse"] and len(sys.argv) == 3:
        # The checks again, on a finished run's directory (state.json, records.bin, the logs).
        soak = Soak.load(os.path.abspath(sys.argv[2]))
        res = soak.analyse()
        soak.report(res)
        return 0 if res["pass"] or not soak.strict else 1
    soak = Soak()
    try:
        soak.setup()
        soak.run()
        soak.cleanup()
        soak.save()
        res = soak.analyse()
        soak.report(res)
        return 0 if res["pass"] or not soak.strict else 1
    except Interrupted as e:
        print("soak interrupted (%s): processes stopped, partial output in %s" % (e, soak.out),
              file=sys.stderr, flush=True)
        return 130
    except Exception:
        traceback.print_exc()
        print("soak could not run; output in %s" % soak.out, file=sys.stderr, flush=True)
        return 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        soak.cleanup()


if __name__ == "__main__":
    sys.exit(main())
