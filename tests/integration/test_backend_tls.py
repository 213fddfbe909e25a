"""TLS and the PROXY protocol towards the backends (issue #5): a real nginx with `ssl` and
`proxy_protocol` on its listeners is the green pool, and tells in each response what it saw:
the SNI name, whether the TLS session was resumed, the client address from the PROXY header and
X-Forwarded-For. Certificates come from a throwaway CA made with the openssl CLI."""
import hashlib
import http.client
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

from certificates import TestAuthority
from harness import ProcessTestCase, end_process, free_port, read_response

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# What nginx answers: one line naming what it saw of the connection and the request.
SEEN = ('"sni=$ssl_server_name reused=$ssl_session_reused proto=$ssl_protocol cipher=$ssl_cipher '
        'conn=$connection '
        'client=$proxy_protocol_addr:$proxy_protocol_port xff=$http_x_forwarded_for\\n"')


class Nginx:
    """nginx in the foreground on two TLS + PROXY listeners: `fresh_port` closes the connection
    after each response (every request is a new handshake), `keepalive_port` keeps it."""

    def __init__(self, pem, key, protocols="TLSv1.2 TLSv1.3"):
        self.dir = tempfile.mkdtemp(prefix="bgproxy-nginx-")
        self.fresh_port = free_port()
        self.keepalive_port = free_port()
        server = """
    server {
        listen 127.0.0.1:%%d ssl proxy_protocol;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols %s;
        ssl_session_cache shared:tls:1m;
        keepalive_timeout %%s;
        location = /healthz { return 200 "ok\\n"; }
        location / { return 200 %s; }
    }""" % (pem, key, protocols, SEEN)
        d = self.dir
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write("""
daemon off;
master_process off;
worker_processes 1;
pid %s/nginx.pid;
error_log %s/error.log info;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path %s/body;
    proxy_temp_path %s/proxy;
    fastcgi_temp_path %s/fastcgi;
    uwsgi_temp_path %s/uwsgi;
    scgi_temp_path %s/scgi;
    default_type text/plain;
    %s
    %s
}
""" % (d, d, d, d, d, d, d, server % (self.fresh_port, "0"), server % (self.keepalive_port, "60s")))
        self.proc = subprocess.Popen([NGINX, "-p", d, "-c", os.path.join(d, "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.keepalive_port), timeout=1).close()
                socket.create_connection(("127.0.0.1", self.fresh_port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError("nginx did not start: %s" % self.log())

    def log(self):
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        end_process(self.proc)
        self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return ""


def server_context(pem, key):
    """A TLS server context with the certificate `pem` and its `key`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem, key)
    return context


class ThreadedTlsBackend:
    """A TLS backend in Python threads, one per connection. A subclass's `answer(s, head,
    pending)` gets each request's head and what came behind it, and returns what is still
    unread behind the request (None: close). `context` is the server's; `receive_buffer`, if
    given, its SO_RCVBUF."""

    def __init__(self, context, receive_buffer=None):
        self.context = context
        self.listener = socket.socket()
        if receive_buffer:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.handshake, args=(conn,), daemon=True).start()

    def handshake(self, raw):
        try:
            with self.context.wrap_socket(raw, server_side=True) as s:
                s.settimeout(20)
                self.serve(s)
        except (OSError, ssl.SSLError):
            return

    def serve(self, s):
        pending = b""
        while not self.stopping and pending is not None:
            while b"\r\n\r\n" not in pending:
                data = s.recv(65536)
                if not data:
                    return
                pending += data
            head, pending = pending.split(b"\r\n\r\n", 1)
            pending = self.answer(s, head, pending)

    def stop(self):
        self.stopping = True
        self.listener.close()
        return ""


class SlowCbcBackend(ThreadedTlsBackend):
    """A TLS backend that reads request bodies slowly, over TLS 1.2 with a CBC cipher and no
    encrypt-then-MAC: the kind of peer with which OpenSSL writes several records in one call
    (its multiblock ciphers), and the proxy's writes to it fill the socket and must be resumed.
    It answers each request with the body's length and SHA-256."""

    def __init__(self, pem, key):
        context = server_context(pem, key)
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA")
        context.options |= 0x80000  # SSL_OP_NO_ENCRYPT_THEN_MAC (not in the ssl module)
        super().__init__(context, receive_buffer=32768)  # fills soon

    def answer(self, s, head, pending):
        match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        left = int(match.group(1)) if match else 0
        digest = hashlib.sha256(pending[:left])
        received = min(left, len(pending))
        while received < left:
            data = s.recv(min(8192, left - received))
            if not data:
                return None
            digest.update(data)
            received += len(data)
            time.sleep(0.001)
        body = b"%d %s\n" % (received, digest.hexdigest().encode())
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return pending[left:]


class PausingTlsBackend(ThreadedTlsBackend):
    """A TLS backend whose answer to GET /pause is a head, after 0.1 s one full TLS record of
    body (16384 bytes), after 1.5 s the rest (1000 bytes); to anything else (health checks) an
    empty 200 at once."""
    piece, rest = 16384, 1000

    def __init__(self, pem, key):
        super().__init__(server_context(pem, key))

    def answer(self, s, head, pending):
        if not head.startswith(b"GET /pause "):
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return pending
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (self.piece + self.rest))
        time.sleep(0.1)
        s.sendall(b"a" * self.piece)
        time.sleep(1.5)
        s.sendall(b"b" * self.rest)
        return pending


class RefusingTlsBackend(ThreadedTlsBackend):
    """A TLS backend that refuses every upload (413) once it has read its head and the first N
    bytes of its body (POST /up?read=N&pause=MS), and closes MS later: with the rest of the
    body unread, the kernel resets the connection, as a backend refusing an upload usually
    does. Health checks (GET) get an empty 200."""
    REFUSAL = (b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n"
               b"Connection: close\r\n\r\ntoo large")

    def __init__(self, pem, key):
        super().__init__(server_context(pem, key))

    def answer(self, s, head, pending):
        if not head.startswith(b"POST "):
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return pending
        taken = len(pending)
        asked = re.match(rb"POST /up\?read=(\d+)&pause=(\d+) ", head)
        read_first, pause = int(asked.group(1)), int(asked.group(2)) / 1000
        while taken < read_first:
            data = s.recv(65536)
            if not data:
                return None
            taken += len(data)
        # Sent at once: with Nagle on, an answer behind a segment not yet acknowledged (the
        # session tickets) waits in the kernel, and the reset of the close throws it away, so
        # it never reaches the proxy (a 502 in one try in four when the reset came with it).
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(self.REFUSAL)
        time.sleep(pause)  # the body keeps coming meanwhile, unread
        return None


class UpgradeTlsBackend(ThreadedTlsBackend):
    """A TLS backend that switches every GET /ws to a tunnel (101), then reads it to its end
    and notes how the end came: "close_notify", or "bare end" (a FIN alone)."""

    def __init__(self, pem, key):
        self.ends = []
        super().__init__(server_context(pem, key))

    def handshake(self, raw):
        try:  # suppress_ragged_eofs off: a FIN without close_notify raises SSLEOFError
            with self.context.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False) as s:
                s.settimeout(20)
                self.serve(s)
        except (OSError, ssl.SSLError):
            return

    def answer(self, s, head, pending):
        if not head.startswith(b"GET /ws "):
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return pending
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n\r\n")
        try:
            while s.recv(65536):
                pass
            self.ends.append("close_notify")
        except ssl.SSLEOFError:
            self.ends.append("bare end")
        return None


CA = None


def setUpModule():
    global CA
    CA = TestAuthority("bgproxy backend test CA")
    CA.leaf("backend", "backend.test", ["backend.test"], 5001)


def tearDownModule():
    CA.remove()


def parse_seen(body):
    fields = dict(item.split("=", 1) for item in body.strip().split(" "))
    return fields


def backend_config(blue, green_ports, tls, green_weight=100, extra=""):
    """Blue: bg-backends in plain HTTP; green: nginx ports, reached with the given [pools.green.tls]
    text and a PROXY header; checks every 100 ms."""
    green = ", ".join('{ name = "green-%d", address = "127.0.0.1:%d" }' % (i + 1, p)
                      for i, p in enumerate(green_ports))
    return """
[[listener]]
address = "127.0.0.1:0"
[server]
served_by_header = "X-Served-By"
[routing]
blue = %d
green = %d
[health]
interval = "100ms"
fast_interval = "100ms"
timeout = "1s"
jitter = "0ms"
rise = 1
fall = 2
[pools.blue]
backends = [%s]
[pools.green]
backends = [%s]
send_proxy_protocol = true
[pools.green.tls]
%s
%s
""" % (100 - green_weight, green_weight,
       ", ".join('{ name = "%s", address = "%s" }' % (b.name, b.address) for b in blue), green, tls,
       extra)


def tls_blue_config(backend, extra=""):
    """Blue: the one TLS `backend` (verified as backend.test), at 100%; green: a port where
    nothing listens. `extra`: more TOML tables."""
    return """
[[listener]]
address = "127.0.0.1:0"
[routing]
blue = 100
green = 0
[pools.blue]
backends = [{ name = "blue-1", address = "127.0.0.1:%d" }]
[pools.blue.tls]
ca_file = "%s"
server_name = "backend.test"
[pools.green]
backends = [{ name = "green-1", address = "127.0.0.1:%d" }]
%s""" % (backend.port, CA.ca_file, free_port(), extra)


def get(port, path="/", source="127.0.0.1", conn=None, headers=None):
    """One GET; returns (status, headers dict, body, connection, local port of the client)."""
    if conn is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
        conn.connect()
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read().decode()
    return r.status, dict(r.getheaders()), body, conn, conn.sock.getsockname()[1]


def green_backends(proxy):
    return {b["name"]: b for b in proxy.status()["colours"]["green"]["backends"]}


def wait_for_check(proxy, backend, text, healthy=None, timeout=5):
    """The backend's entry in `bgctl status` once its health check result contains `text` (and,
    when `healthy` is given, the backend is marked so: the verdict reaches the routing state a
    moment after the check result, more than a moment on a loaded sanitizer build)."""
    deadline = time.time() + timeout
    while True:
        entry = green_backends(proxy)[backend]
        done = text in entry.get("check", "") and (healthy is None or entry["healthy"] == healthy)
        if done or time.time() > deadline:
            return entry
        time.sleep(0.05)


def metric(proxy, name):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % proxy.admin_port, timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class BackendTlsTest(ProcessTestCase):
    def nginx(self, **kw):
        pem = os.path.join(CA.dir, "backend.pem")
        key = os.path.join(CA.dir, "backend.key")
        return self.start(Nginx(pem, key, **kw))

    def test_tls_with_sni_verification_and_the_client_in_a_proxy_header(self):
        nginx = self.nginx()
        blue = self.backend("blue-1")
        tls = 'ca_file = "%s"\nserver_name = "backend.test"' % CA.ca_file
        proxy = self.proxy(backend_config([blue], [nginx.keepalive_port], tls))
        # Two clients from their own addresses, on keep-alive connections, taking turns: each
        # response names its own client, never the other (a connection that opened with one
        # client's PROXY header is never lent to another).
        conns = {}
        for round_ in range(5):
            for source in ("127.0.0.7", "127.0.0.8"):
                status, headers, body, conns[source], port = get(proxy.port, source=source,
                                                                 conn=conns.get(source))
                self.assertEqual(status, 200, body)
                self.assertEqual(headers.get("X-Served-By"), "green/green-1")
                seen = parse_seen(body)
                self.assertEqual(seen["sni"], "backend.test")
                self.assertEqual(seen["proto"], "TLSv1.3")
                self.assertEqual(seen["client"], "%s:%d" % (source, port), body)
                self.assertEqual(seen["xff"], source)
        # Each client keeps its own backend connection, and /metrics counts both (a connection
        # is kept just after the response's last byte: look again for a bounded time).
        series = 'bgproxy_upstream_connections{backend="green-1",colour="green"}'
        deadline = time.time() + 2
        while metric(proxy, series) != 2 and time.time() < deadline:
            time.sleep(0.02)
        self.assertEqual(metric(proxy, series), 2)
        for conn in conns.values():
            conn.close()
        # Health checks reach it through TLS and a PROXY (LOCAL) header too: still healthy after
        # many check intervals.
        time.sleep(0.6)
        backends = green_backends(proxy)
        self.assertTrue(backends["green-1"]["healthy"], backends["green-1"])
        self.assertEqual(metric(proxy, "bgproxy_upstream_tls_failures_total"), 0)

    def test_a_tunnels_end_reaches_a_tls_backend_as_the_client_ended_it(self):
        """A TLS client's close_notify goes on to the backend as one; its FIN alone goes on as
        a FIN alone (the listener reads both as an end: the first is an end, the second may
        be a cut, and the backend can tell them apart, RFC 8446 6.1). Found by review."""
        backend = UpgradeTlsBackend(*CA.leaf("tunnel", "backend.test", ["backend.test"], 5003))
        self.processes.append(backend)
        listener_pem, listener_key = CA.leaf("front", "front.test", ["front.test"], 5004)
        proxy = self.proxy(tls_blue_config(backend).replace(
            '[[listener]]\naddress = "127.0.0.1:0"\n',
            '[[listener]]\naddress = "127.0.0.1:0"\n[listener.tls]\n'
            'certificates = [{ cert = "%s", key = "%s" }]\n' % (listener_pem, listener_key), 1))
        client = ssl.create_default_context(cafile=CA.ca_file)
        for polite, end in ((True, "close_notify"), (False, "bare end")):
            with self.subTest(end=end):
                raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
                s = client.wrap_socket(raw, server_hostname="front.test")
                s.sendall(b"GET /ws HTTP/1.1\r\nHost: front.test\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(4096)
                self.assertTrue(head.startswith(b"HTTP/1.1 101"), head[:100])
                s.sendall(b"data")
                if polite:
                    s.settimeout(0.5)
                    try:
                        s.unwrap()  # sends close_notify, then waits for the proxy's
                    except (OSError, ssl.SSLError):
                        pass
                s.close()  # Python's close sends no close_notify
                deadline = time.time() + 5
                while len(backend.ends) < (1 if polite else 2) and time.time() < deadline:
                    time.sleep(0.02)
                self.assertEqual(backend.ends[-1:], [end])

    def test_sessions_are_resumed_on_new_connections(self):
        for protocol in ("TLSv1.2", "TLSv1.3"):
            with self.subTest(protocol=protocol):
                nginx = self.nginx(protocols=protocol)
                blue = self.backend("blue-1")
                tls = 'ca_file = "%s"\nserver_name = "backend.test"' % CA.ca_file
                # One worker: sessions are kept per worker, per backend.
                proxy = self.proxy(backend_config([blue], [nginx.fresh_port], tls), workers=1)
                reused = []
                for _ in range(4):
                    status, _, body, conn, _ = get(proxy.port)
                    conn.close()
                    self.assertEqual(status, 200, body)
                    seen = parse_seen(body)
                    self.assertEqual(seen["proto"], protocol)
                    reused.append(seen["reused"])
                # The first handshake is full; later ones resume (health checks, which never
                # resume, make full handshakes of their own in between).
                self.assertEqual(reused[0], ".")
                self.assertEqual(reused[1:], ["r", "r", "r"], reused)
                self.stop_all()

    def test_a_reload_keeps_backend_tls_connections_unless_the_files_change(self):
        nginx = self.nginx()
        blue = self.backend("blue-1")
        work = tempfile.mkdtemp(prefix="bgproxy-backend-ca-")
        self.addCleanup(shutil.rmtree, work, True)
        ca = shutil.copy(CA.ca_file, os.path.join(work, "ca.pem"))
        tls = 'ca_file = "%s"\nserver_name = "backend.test"' % ca
        proxy = self.proxy(backend_config([blue], [nginx.keepalive_port], tls), workers=1)
        status, _, body, conn, _ = get(proxy.port)
        self.assertEqual(status, 200, body)
        first = parse_seen(body)["conn"]  # nginx's serial number of the backend connection
        # A reload that changes nothing of the pool's TLS keeps its connection.
        self.assertEqual(proxy.bgctl("reload").returncode, 0)
        status, _, body, conn, _ = get(proxy.port, conn=conn)
        self.assertEqual((status, parse_seen(body)["conn"]), (200, first), body)
        # A CA file that changed (here: its modification time) makes a new context, and the
        # connections of the old one are not reused.
        st = os.stat(ca)
        os.utime(ca, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
        self.assertEqual(proxy.bgctl("reload").returncode, 0)
        status, _, body, conn, _ = get(proxy.port, conn=conn)
        self.assertEqual(status, 200, body)
        self.assertNotEqual(parse_seen(body)["conn"], first, body)
        conn.close()

    def test_a_certificate_for_another_name_is_refused_and_the_request_served_elsewhere(self):
        nginx = self.nginx()
        blue = self.backend("blue-1")
        tls = 'ca_file = "%s"\nserver_name = "other.test"' % CA.ca_file
        # Green at 0%, reached by the preview header: its TLS fails, the request crosses to blue.
        proxy = self.proxy(backend_config([blue], [nginx.keepalive_port], tls, green_weight=0,
                                          extra='[preview]\nallowed_networks = ["127.0.0.0/8"]'))
        status, headers, body, conn, _ = get(proxy.port, headers={"X-BG-Color": "green"})
        conn.close()
        self.assertEqual(status, 200, body)
        self.assertEqual(headers.get("X-Served-By"), "blue/blue-1")
        self.assertGreaterEqual(metric(proxy, "bgproxy_upstream_tls_failures_total"), 1)
        # The health checks see the same and take green-1 out, saying why.
        why = "2 checks failed, last: tls: certificate verify failed: hostname mismatch"
        entry = wait_for_check(proxy, "green-1", why, healthy=False)
        self.assertEqual(entry.get("check"), why)
        self.assertFalse(entry["healthy"])
        # bgctl status says it to the operator too.
        self.assertIn("check: " + why, proxy.bgctl("status").stdout)

    def test_an_unknown_authority_is_refused(self):
        nginx = self.nginx()
        blue = self.backend("blue-1")
        other = TestAuthority("another CA")
        self.addCleanup(other.remove)
        access_log = os.path.join(other.dir, "access.log")
        tls = 'ca_file = "%s"\nserver_name = "backend.test"' % other.ca_file
        proxy = self.proxy(backend_config([blue], [nginx.keepalive_port], tls, green_weight=0,
                                          extra='[preview]\nallowed_networks = ["127.0.0.0/8"]\n'
                                                '[retries]\ncross_colour = false\n'
                                                '[access_log]\ntarget = "%s"' % access_log))
        status, headers, body, conn, _ = get(proxy.port, headers={"X-BG-Color": "green"})
        conn.close()
        self.assertEqual(status, 502, body)
        self.assertNotIn("certificate", body)  # the reason is for the operator, not the client
        why = "certificate verify failed: unable to get local issuer certificate"
        self.assertIn(why, wait_for_check(proxy, "green-1", why).get("check", ""))
        # The access log line of the 502 names it too.
        deadline = time.time() + 5
        line = ""
        while why not in line and time.time() < deadline:
            time.sleep(0.05)
            with open(access_log) as f:
                line = f.read()
        self.assertIn('"error":"no backend reachable (TLS to green-1: %s)"' % why, line)

    def test_uploads_to_a_slow_tls_backend_resume_every_record(self):
        # Request bodies of large pieces (buffer_size 128 KiB) to a backend that reads them
        # slowly over a CBC cipher: every write that fills the socket is resumed with the record
        # OpenSSL holds. A write tried at once with more than a record left OpenSSL holding
        # several, which the asynchronous write (64 KiB at most) could not offer again: the
        # upload failed (a review).
        backend = self.start(SlowCbcBackend(os.path.join(CA.dir, "backend.pem"),
                                            os.path.join(CA.dir, "backend.key")))
        proxy = self.proxy(tls_blue_config(backend, extra="""
[server]
buffer_size = 131072
[health]
interval = "60s"
"""))
        payload = os.urandom(4 * 1048576 + 5)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as s:
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
                      % len(payload) + payload)
            answer = b""
            while not answer.endswith(b"\n") or b"\r\n\r\n" not in answer:
                data = s.recv(65536)
                if not data:
                    break
                answer += data
        expected = b"%d %s\n" % (len(payload), hashlib.sha256(payload).hexdigest().encode())
        why = (answer[:300], proxy.status()["colours"]["blue"])
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), why)
        self.assertTrue(answer.endswith(expected), why)
        self.assertEqual(metric(proxy, "bgproxy_upstream_tls_failures_total"), 0)

    def test_a_tls_backends_early_refusal_reaches_the_client_through_its_reset(self):
        # A 413 a TLS backend sent before it reset the connection under an upload it did not
        # read is the answer (RFC 9112 9.5), as from a plain backend (EarlyResponseTest in
        # test_hostile_peers.py): the upload's failed write must not cost the read its record.
        backend = self.start(RefusingTlsBackend(os.path.join(CA.dir, "backend.pem"),
                                                os.path.join(CA.dir, "backend.key")))
        proxy = self.proxy(tls_blue_config(backend))
        size, piece = 64 << 20, b"x" * 65536
        outcomes = []
        # Refused at once, or with the proxy's write of the body under way; the reset comes
        # with the answer, or 50 ms after it.
        cases = [(read, pause) for read in (0, 1 << 20) for pause in (0, 50)] * 3
        for read_first, pause in cases:
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            self.addCleanup(s.close)
            s.sendall(b"POST /up?read=%d&pause=%d HTTP/1.1\r\nHost: a\r\n"
                      b"Content-Length: %d\r\n\r\n" % (read_first, pause, size))

            def send_body(s=s):
                try:
                    for _ in range(size // len(piece)):
                        s.sendall(piece)
                except OSError:
                    pass  # the proxy closed after answering: expected
            sender = threading.Thread(target=send_body, daemon=True)
            sender.start()
            try:
                status, _, body, _ = read_response(s, timeout=10)
            except OSError as e:
                status, body = None, repr(e).encode()
            s.close()
            sender.join(10)
            outcomes.append((status, body[:60]))
        self.assertEqual(outcomes, [(413, b"too large")] * len(cases))
        self.assertEqual(metric(proxy, "bgproxy_backend_failures_total"), 0)

    def test_a_pause_in_a_body_from_a_tls_backend_holds_back_nothing_before_it(self):
        # A piece of a body decrypted from a TLS backend that fills a whole read (buffer_size,
        # 16384 by default) reaches the client at once when the backend then pauses. Held for a
        # fuller segment (MSG_MORE, as a plain body's full pieces are) and not pushed before the
        # relay waited, it came 0.31 s after the request (the kernel's own limit on a held
        # segment), against 0.10 s (0.1 s of it the backend's own wait).
        backend = self.start(PausingTlsBackend(os.path.join(CA.dir, "backend.pem"),
                                               os.path.join(CA.dir, "backend.key")))
        proxy = self.proxy(tls_blue_config(backend))
        piece, rest = PausingTlsBackend.piece, PausingTlsBackend.rest
        self.assertEqual(get(proxy.port, "/warm")[0], 200)  # the backend connection, handshaken

        def received(s):
            data = s.recv(65536)
            if not data:
                raise AssertionError("the proxy closed the connection mid-response")
            return data

        for attempt in range(2):  # both on the kept backend connection
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(b"GET /pause HTTP/1.1\r\nHost: a\r\n\r\n")
                start = time.monotonic()  # the first piece leaves the backend 0.1 s on
                data = b""
                while b"\r\n\r\n" not in data:
                    data += received(s)
                body = len(data) - data.index(b"\r\n\r\n") - 4
                while body < piece:
                    body += len(received(s))
                before_pause = time.monotonic() - start
                while body < piece + rest:
                    body += len(received(s))
            print("the %d bytes before the backend's pause after %.3f s" % (piece, before_pause))
            self.assertLess(before_pause, 0.25)
            self.assertEqual(body, piece + rest)

    def test_the_suites_offered_are_aes128_first_or_as_configured(self):
        # nginx takes the client's order (ssl_prefer_server_ciphers off), as OpenSSL does:
        # the first suite bgproxy offers that it shares is the one used.
        tls = 'ca_file = "%s"\nserver_name = "backend.test"\n' % CA.ca_file
        cases = [
            ("TLSv1.3", "", "TLS_AES_128_GCM_SHA256"),
            ("TLSv1.3", 'ciphersuites = "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"',
             "TLS_CHACHA20_POLY1305_SHA256"),
            ("TLSv1.2", 'ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"',
             "ECDHE-ECDSA-AES128-GCM-SHA256"),
            ("TLSv1.2", 'ciphers = "ECDHE-ECDSA-CHACHA20-POLY1305"', "ECDHE-ECDSA-CHACHA20-POLY1305"),
        ]
        for protocol, setting, expected in cases:
            with self.subTest(protocol=protocol, setting=setting):
                self.stop_all()
                blue = self.backend("blue-1")
                nginx = self.nginx(protocols=protocol)
                proxy = self.proxy(backend_config([blue], [nginx.keepalive_port], tls + setting))
                status, _, body, conn, _ = get(proxy.port)
                conn.close()
                self.assertEqual(status, 200, body)
                seen = parse_seen(body)
                self.assertEqual((seen["proto"], seen["cipher"]), (protocol, expected), body)

    def test_broken_tls_settings_are_config_errors(self):
        blue = self.backend("blue-1")
        cases = [
            ('ca_file = "/nonexistent/ca.pem"', r":\d+:\d+: pools\.green\.tls: cannot use CA file"),
            ('cert = "%s"' % CA.ca_file, r"cert and key go together"),
            ('verify = false\nca_file = "%s"' % CA.ca_file, r"ca_file is set but verify = false"),
            ('min_version = "1.1"', r"min_version must be"),
            ('sni = "x"', r"unknown key|sni"),
            ('ciphersuites = "TLS_AES_128_GCM_SHA256:TLS_FOO"',
             r"pools\.green\.tls\.ciphersuites has 'TLS_FOO', which is no TLS 1\.3 suite"),
            ('ciphersuites = ""', r"ciphersuites must name at least one TLS 1\.3 suite"),
            ('ciphers = "NO-SUCH-CIPHER"',
             r"pools\.green\.tls: ciphers 'NO-SUCH-CIPHER'.*no cipher match"),
            ('ciphers = "TLS_AES_128_GCM_SHA256"', r"ciphers 'TLS_AES_128_GCM_SHA256'.*no cipher match"),
            ('ciphersuites = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"',
             r"ciphersuites has 'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256', which is no TLS 1\.3"),
        ]
        for tls, expected in cases:
            with self.subTest(tls=tls):
                work = tempfile.mkdtemp(prefix="bgproxy-tls-config-")
                self.addCleanup(shutil.rmtree, work, True)
                path = os.path.join(work, "bad.toml")
                with open(path, "w") as f:
                    f.write(backend_config([blue], [free_port()], tls))
                from harness import BGPROXY
                r = subprocess.run([BGPROXY, "--check", path], capture_output=True, text=True,
                                   timeout=30)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assertRegex(r.stdout + r.stderr, re.escape(path) + ".*" + expected)

    def stop_all(self):
        for p in reversed(self.processes):
            p.stop()
        self.processes = []


if __name__ == "__main__":
    unittest.main()
