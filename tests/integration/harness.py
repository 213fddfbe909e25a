"""Shared fixtures for integration tests: real bgproxy and bg-backend processes on 127.0.0.1.

Every process is started by the test, on port 0 (the kernel picks a free port, which the
process prints), and killed when the test ends. Nothing is mocked.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BGPROXY = os.environ.get("BGPROXY", os.path.join(_ROOT, "build/proxy/bgproxy"))
BG_BACKEND = os.environ.get("BG_BACKEND", os.path.join(_ROOT, "build/bench/bg-backend"))
BGCTL = os.environ.get("BGCTL", os.path.join(_ROOT, "build/control/bgctl"))


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "WARNING: ThreadSanitizer", "runtime error:",
                     "ERROR: LeakSanitizer")


def _wait_for_line(proc, pattern, timeout=10.0, seen=None):
    """Reads the process's stdout until a line matches; returns the match. Lines read go to
    `seen`, so a caller can look for others printed before it."""
    deadline = time.time() + timeout
    seen = [] if seen is None else seen
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise RuntimeError("process did not print %r; output: %s; stderr: %s" %
                       (pattern, "".join(seen), proc.stderr.read() if proc.poll() is not None else ""))


class Process:
    def __init__(self, args, pattern, env=None, preexec_fn=None):
        self.args = args
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, preexec_fn=preexec_fn)
        self.lines = []
        self.match = _wait_for_line(self.proc, pattern, seen=self.lines)

    @property
    def pid(self):
        return self.proc.pid

    def follow(self):
        """Keeps reading stdout in the background (into self.lines), so a chatty process never
        blocks on a full pipe."""
        def reader():
            try:
                for line in self.proc.stdout:
                    self.lines.append(line)
            except (ValueError, OSError):
                pass  # closed by stop()
        threading.Thread(target=reader, daemon=True).start()
        return self

    def rss_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        return self.proc.wait(timeout)

    def stop(self):
        """Kills the process if it still runs; returns what it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        errors = ""
        if self.proc.stderr and not self.proc.stderr.closed:
            errors = self.proc.stderr.read()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        return errors


class Backend(Process):
    def __init__(self, name, log=None, threads=1):
        args = [BG_BACKEND, "--listen", "127.0.0.1:0", "--name", name, "--threads", str(threads)]
        if log:
            args += ["--log", log]
        super().__init__(args, r"listening on ([\d.]+):(\d+)")
        self.name = name
        self.port = int(self.match.group(2))
        self.address = "127.0.0.1:%d" % self.port


_LISTENING = r"listening on (https?)://([\d.]+|\[[0-9a-f:]+\]):(\d+)"


class Proxy(Process):
    """bgproxy from a config text (with {placeholders} already filled) or from flags."""

    def __init__(self, config_text=None, flags=None, workers=2, state_dir=None, env=None,
                 preexec_fn=None):
        """state_dir keeps the control socket, state file and audit log; a fresh temporary one
        by default, so no test sees another's state. Pass the same one to restart a proxy."""
        args = [BGPROXY]
        self.owns_dir = state_dir is None
        self.dir = state_dir or tempfile.mkdtemp(prefix="bgproxy-test-")
        self.config_path = None
        if config_text is not None:
            self.config_path = os.path.join(self.dir, "bgproxy.toml")
            with open(self.config_path, "w") as f:
                f.write(config_text)
            args += ["--config", self.config_path]
        args += flags or []
        self.socket = os.path.join(self.dir, "control.sock")
        self.state_file = os.path.join(self.dir, "state.json")
        self.audit_log = os.path.join(self.dir, "audit.log")
        for flag, value in (("--control-socket", self.socket), ("--state-file", self.state_file),
                            ("--audit-log", self.audit_log), ("--workers", str(workers)),
                            ("--admin", "127.0.0.1:0")):
            if flag not in args:
                args += [flag, value]
        super().__init__(args, _LISTENING, env=env, preexec_fn=preexec_fn)
        self.port = int(self.match.group(3))
        # One line per [[listener]], in config order, printed together: `ports` has them all
        # (ports[0] == port), `schemes` says which are "https".
        self.ports = [self.port]
        self.schemes = [self.match.group(1)]
        while True:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(_LISTENING, line)
            if not m:
                break
            self.ports.append(int(m.group(3)))
            self.schemes.append(m.group(1))
        admin = [m for m in (re.search(r"admin on http://[\d.]+:(\d+)", l) for l in self.lines) if m]
        self.admin_port = int(admin[0].group(1)) if admin else None

    def bgctl(self, *args, user=None, timeout=30):
        """Runs the real bgctl against this proxy; returns the CompletedProcess."""
        cmd = [BGCTL, "--socket", self.socket] + list(args)
        if user is not None:
            cmd = ["setpriv", "--reuid=%d" % user, "--regid=%d" % user, "--clear-groups"] + cmd
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def status(self):
        r = self.bgctl("--json", "status")
        if r.returncode != 0:
            raise RuntimeError("bgctl status failed: %s %s" % (r.stdout, r.stderr))
        return json.loads(r.stdout)

    def stop(self):
        errors = super().stop()
        if self.owns_dir and os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)
        return errors


def end_process(proc, grace=5):
    """Stops a peer process (HAProxy, nginx, Prometheus...): SIGTERM, then SIGKILL after `grace`
    seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(blue, green, weights=(100, 0), extra=""):
    """A config text for backends (lists of Backend) listening on a port-0 listener."""
    def pool(backends):
        return ", ".join('{ name = "%s", address = "%s" }' % (b.name, b.address) for b in backends)
    return """
[[listener]]
address = "127.0.0.1:0"
[routing]
blue = %s
green = %s
[pools.blue]
backends = [%s]
[pools.green]
backends = [%s]
%s
""" % (weights[0], weights[1], pool(blue), pool(green), extra)


def raw_exchange(port, data, timeout=5.0, shutdown_write=False):
    """Sends raw bytes and returns everything received until the server closes or the timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if shutdown_write:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def read_until(sock, done):
    """Bytes from `sock` until done(bytes so far) or the peer closes."""
    data = b""
    while not done(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_to_end(sock):
    """Everything the peer sends until it closes (the socket's own timeout bounds each wait)."""
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def status_of(response_bytes):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", response_bytes)
    return int(m.group(1)) if m else None


class ProcessTestCase(unittest.TestCase):
    """Stops every process a test started, whatever happened."""

    def setUp(self):
        self.processes = []

    def tearDown(self):
        reports = []
        for p in reversed(self.processes):
            errors = p.stop() or ""
            # Sanitizer builds report and carry on (TSan) or abort (ASan): either way the
            # test fails with the report.
            if any(marker in errors for marker in SANITIZER_MARKERS):
                reports.append("%s:\n%s" % (p.args[0], errors[-6000:]))
        self.processes = []
        if reports:
            self.fail("sanitizer report:\n" + "\n".join(reports))

    def start(self, process):
        self.processes.append(process)
        return process

    def backend(self, name, **kw):
        return self.start(Backend(name, **kw))

    def proxy(self, *a, **kw):
        return self.start(Proxy(*a, **kw))

    def wait_on_gate(self, proxy, n=1):
        """Until n gated commands wait on their gates (status answering at once meanwhile)."""
        deadline = time.time() + 5
        while time.time() < deadline:
            started = time.time()
            waiting = proxy.status()["waiting"]["on_gate"]
            self.assertLess(time.time() - started, 1.0, "status waited behind the gate")
            if waiting == n:
                return
            time.sleep(0.02)
        self.fail("the gated command never started its gate")


class ConnectionServer:
    """A raw backend on a port of its own: each connection is served by the subclass's
    serve(conn) on a thread of its own. `name` and `address` as a Backend's, for config()."""

    def __init__(self, name):
        self.name = name
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.address = "127.0.0.1:%d" % self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    @staticmethod
    def read_head(conn, piece=65536):
        """What a connection sent up to a head's end and behind it, or None if it closed
        first."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(piece)
            if not chunk:
                return None
            data += chunk
        return data

    def stop(self):
        self.server.close()
        return ""


def admin_get(proxy, path):
    """GET on the proxy's admin listener: (status, body bytes)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=5)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def backend_admin(backend, path):
    """GET on a bg-backend's own /admin/... (fault switches): the body."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", int(backend.address.rsplit(":", 1)[1]), timeout=5)
    conn.request("GET", path)
    body = conn.getresponse().read()
    conn.close()
    return body


def metric(proxy, name, labels=""):
    """One sample of /metrics (0 when absent): name as written, labels like 'limit="trailer"'."""
    _, body = admin_get(proxy, "/metrics")
    want = name + ("{" + labels + "}" if labels else "")
    for line in body.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


class Incomplete(Exception):
    pass


def parse_request(data):
    """A strict RFC 9112 reading of one request at the start of `data`, independent of the
    proxy's parser: (method, target, version, [(name, value)], body, bytes used). Raises
    Incomplete when more bytes are needed, ValueError when the bytes are not a request."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise Incomplete()
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not re.fullmatch(rb"HTTP/1\.[01]", parts[2]):
        raise ValueError("bad request line %r" % lines[0])
    fields = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not re.fullmatch(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise ValueError("bad field line %r" % line)
        fields.append((name.decode().lower(), value.strip(b" \t").decode("latin-1")))
    names = [n for n, _ in fields]
    pos = end + 4
    if "transfer-encoding" in names:
        if "content-length" in names or [v for n, v in fields if n == "transfer-encoding"] != ["chunked"]:
            raise ValueError("ambiguous framing %r" % fields)
        body = b""
        while True:
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                raise Incomplete()
            size = int(data[pos:eol].split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                trailer_end = data.find(b"\r\n", pos)
                while trailer_end != pos:  # trailer fields until the empty line
                    if trailer_end < 0:
                        raise Incomplete()
                    pos = trailer_end + 2
                    trailer_end = data.find(b"\r\n", pos)
                return parts[0], parts[1], parts[2], fields, body, pos + 2
            if len(data) < pos + size + 2:
                raise Incomplete()
            body += data[pos:pos + size]
            if data[pos + size:pos + size + 2] != b"\r\n":
                raise ValueError("chunk data longer than its size")
            pos += size + 2
    lengths = [v for n, v in fields if n == "content-length"]
    if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
        raise ValueError("bad Content-Length %r" % lengths)
    size = int(lengths[0]) if lengths else 0
    if len(data) < pos + size:
        raise Incomplete()
    return parts[0], parts[1], parts[2], fields, data[pos:pos + size], pos + size


class ScriptedBackend:
    """A backend written in raw bytes, for what bg-backend will not do: answer with exactly the
    bytes a test gives (malformed, smuggling, half-sent, never), and record exactly what the proxy
    sent. `answer(request, index, conn)` gets each parsed request (see parse_request) and its
    number on the connection (from 0); it returns bytes to send, (bytes,) to send them and
    close, or None to close without a word. Each connection's requests, raw bytes and end (time and how) are kept in `connections`."""

    def __init__(self, answer, name="scripted"):
        import threading
        self.answer = answer
        self.name = name
        self.args = ["scripted backend " + name]
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.connections = []
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        import threading
        while not self.closed:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            record = {"raw": b"", "requests": [], "end": None, "ended_at": None, "errors": []}
            with self.lock:
                self.connections.append(record)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _serve(self, conn, record):
        pending = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    record["end"] = "eof"
                    break
                record["raw"] += chunk
                pending += chunk
                if len(record["raw"]) == len(chunk):  # the connection's first bytes
                    pending = self._take_proxy_header(pending, record)
                while True:
                    try:
                        request = parse_request(pending)
                    except Incomplete:
                        break
                    except ValueError as e:
                        record["errors"].append(str(e))
                        pending = b""
                        break
                    pending = pending[request[5]:]
                    record["requests"].append(request)
                    reply = self.answer(request, len(record["requests"]) - 1, conn)
                    close = reply is None or isinstance(reply, tuple)
                    if isinstance(reply, tuple):
                        reply = reply[0]
                    if reply:
                        conn.sendall(reply)
                    if close:
                        record["end"] = "closed by backend"
                        return
        except OSError as e:
            record["end"] = "error: %s" % e
        finally:
            record["ended_at"] = time.time()
            conn.close()

    @staticmethod
    def _take_proxy_header(data, record):
        """A PROXY v2 header opening a connection (send_proxy_protocol) is kept in
        record["proxy_header"] rather than parsed as a request (assumed whole in the first read:
        it is 16 bytes and an address block, sent before the request)."""
        signature = b"\r\n\r\n\x00\r\nQUIT\n"
        if not data.startswith(signature) or len(data) < 16:
            return data
        end = 16 + int.from_bytes(data[14:16], "big")
        record["proxy_header"] = data[:end]
        return data[end:]

    def requests(self):
        with self.lock:
            return [r for c in self.connections for r in c["requests"]]

    def stop(self):
        self.closed = True
        self.server.close()
        return ""


def ok_response(body=b"ok", extra=b""):
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def read_response(sock, timeout=5.0, pending=b""):
    """Reads one HTTP/1.1 response (Content-Length, chunked or until close) from a socket:
    (status, [(name, value)], body, leftover bytes). Interim 1xx responses are returned too,
    each as its own response. Raises Incomplete if the connection ends first. `pending`: bytes
    already received (the leftover of the previous response, when responses were pipelined)."""
    sock.settimeout(timeout)
    data = pending
    def more():
        nonlocal data
        chunk = sock.recv(65536)
        if not chunk:
            raise Incomplete()
        data += chunk
    while b"\r\n\r\n" not in data:
        more()
    end = data.index(b"\r\n\r\n")
    lines = data[:end].split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    fields = [(n.strip().lower().decode(), v.strip().decode("latin-1"))
              for n, _, v in (l.partition(b":") for l in lines[1:])]
    names = dict(fields)
    pos = end + 4
    if 100 <= status < 200 or status in (204, 304):
        return status, fields, b"", data[pos:]
    if names.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while data.find(b"\r\n", pos) < 0:
                more()
            eol = data.index(b"\r\n", pos)
            size = int(data[pos:eol].split(b";")[0], 16)
            pos = eol + 2
            while len(data) < pos + size + 2:
                more()
            body += data[pos:pos + size]
            pos += size + 2
            if size == 0:
                return status, fields, body, data[pos:]
    if "content-length" in names:
        size = int(names["content-length"])
        while len(data) < pos + size:
            more()
        return status, fields, data[pos:pos + size], data[pos + size:]
    while True:
        try:
            more()
        except Incomplete:
            return status, fields, data[pos:], b""


class TcpRelay:
    """A TCP relay on 127.0.0.1 to one port, for a network fault a test controls: cut() closes
    every relayed connection and turns new ones away (closed at once), restore() relays again;
    pause() holds every byte until resume();
    lose_answer(*markers) lets the next request holding every marker through, and closes its
    connection once the answer comes, the answer unsent (a peer that failed mid-request)."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.cut_off = False
        self.open = []
        self.lock = threading.Lock()
        self.losing = None  # the markers of the request whose answer is lost next
        self.answers_lost = 0
        self.flowing = threading.Event()  # cleared: bytes are held (a hung peer), not relayed
        self.flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.cut_off:
                client.close()
                continue
            client.settimeout(None)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.open += [client, upstream]
            lost = threading.Event()  # this connection's answer is lost
            threading.Thread(target=self._pump, args=(client, upstream, lost, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, lost, False),
                             daemon=True).start()

    def lose_answer(self, *markers, forward=True):
        """forward=False: the request is lost too (closed before etcd or any peer has it)."""
        self.losing = (markers, forward)

    def _pump(self, src, dst, lost, request_side):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if request_side:
                    with self.lock:
                        if self.losing and all(m in data for m in self.losing[0]):
                            forward = self.losing[1]
                            self.losing = None
                            self.answers_lost += 1
                            lost.set()
                            if not forward:
                                break
                elif lost.is_set():
                    break  # the answer came: dropped, and the connection with it
                self.flowing.wait(60)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        src.close()  # each socket is the source of one pump: closed once

    def cut(self):
        self.cut_off = True
        with self.lock:
            for s in self.open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.open = []

    def restore(self):
        self.cut_off = False

    def pause(self):
        """A hang: connections are taken and bytes held, in both directions, until resume()."""
        self.flowing.clear()

    def resume(self):
        self.flowing.set()

    def close(self):
        self.cut()
        self.listener.close()
