"""Shared fixtures for integration tests: real bgproxy and bg-backend processes on 127.0.0.1.

Every process is started by the test, on port 0 (the kernel picks a free port, which the
process prints), and killed when the test ends. Nothing is mocked.
"""
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import unittest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BGPROXY = os.environ.get("BGPROXY", os.path.join(_ROOT, "build/proxy/bgproxy"))
BG_BACKEND = os.environ.get("BG_BACKEND", os.path.join(_ROOT, "build/bench/bg-backend"))


def _wait_for_line(proc, pattern, timeout=10.0):
    """Reads the process's stdout until a line matches; returns the match."""
    deadline = time.time() + timeout
    seen = []
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
        self.match = _wait_for_line(self.proc, pattern)

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
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


class Backend(Process):
    def __init__(self, name, log=None, threads=1):
        args = [BG_BACKEND, "--listen", "127.0.0.1:0", "--name", name, "--threads", str(threads)]
        if log:
            args += ["--log", log]
        super().__init__(args, r"listening on ([\d.]+):(\d+)")
        self.name = name
        self.port = int(self.match.group(2))
        self.address = "127.0.0.1:%d" % self.port


class Proxy(Process):
    """bgproxy from a config text (with {placeholders} already filled) or from flags."""

    def __init__(self, config_text=None, flags=None, workers=2):
        args = [BGPROXY]
        self.config_file = None
        if config_text is not None:
            self.config_file = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
            self.config_file.write(config_text)
            self.config_file.close()
            args += ["--config", self.config_file.name]
        args += flags or []
        if "--workers" not in args:
            args += ["--workers", str(workers)]
        super().__init__(args, r"listening on http://([\d.]+):(\d+)")
        self.port = int(self.match.group(2))

    def stop(self):
        super().stop()
        if self.config_file:
            os.unlink(self.config_file.name)


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
        for p in reversed(self.processes):
            p.stop()

    def start(self, process):
        self.processes.append(process)
        return process

    def backend(self, name, **kw):
        return self.start(Backend(name, **kw))

    def proxy(self, *a, **kw):
        return self.start(Proxy(*a, **kw))
