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
    def __init__(self, args, pattern, env=None):
        self.args = args
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.lines = []
        self.match = _wait_for_line(self.proc, pattern, seen=self.lines)

    @property
    def pid(self):
        return self.proc.pid

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


_LISTENING = r"listening on (https?)://([\d.]+):(\d+)"


class Proxy(Process):
    """bgproxy from a config text (with {placeholders} already filled) or from flags."""

    def __init__(self, config_text=None, flags=None, workers=2, state_dir=None, env=None):
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
        super().__init__(args, _LISTENING, env=env)
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
