"""Admin endpoints and the access log, with real processes."""
import http.client
import json
import os
import signal
import socket
import struct
import threading
import time
import unittest

from harness import ProcessTestCase, config, metric, raw_exchange


def admin_get(proxy, path, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=5)
    conn.request(method, path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


class AccessLogTest(ProcessTestCase):
    def test_one_json_line_per_request_with_the_state_version_and_reopen_on_sigusr1(self):
        blue = [self.backend("blue-1")]
        green = [self.backend("green-1")]
        log = os.path.join(self.start_dir(), "access.log")
        proxy = self.proxy(config(blue, green, extra='[access_log]\ntarget = "%s"\n' % log))
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("POST", "/upload?x=1", body=b"hello")
        conn.getresponse().read()
        self.assertEqual(proxy.bgctl("flip").returncode, 0)
        conn.request("GET", "/after-flip")
        conn.getresponse().read()
        raw_exchange(proxy.port, b"GET / HTTP/1.1\r\n\r\n")  # no Host: 400
        # Lines from different workers are written in the order the writer drains their queues,
        # not request order (each carries its own time): find them by content.
        lines = self.read_lines(log, 3)
        by_path = {(l["method"], l["path"]): l for l in lines}
        first = by_path[("POST", "/upload?x=1")]
        second = by_path[("GET", "/after-flip")]
        bad = by_path[("GET", "/")]
        self.assertEqual((first["method"], first["path"], first["status"]), ("POST", "/upload?x=1", 200))
        self.assertEqual((first["bytes_in"], first["colour"], first["backend"]), (5, "blue", "blue-1"))
        self.assertEqual(first["client"], "127.0.0.1")
        self.assertGreater(first["bytes_out"], 0)
        self.assertGreater(first["duration_ms"], 0)
        self.assertEqual((second["colour"], second["version"]), ("green", first["version"] + 1))
        self.assertEqual(second["version"], proxy.status()["version"])
        self.assertEqual((bad["status"], bad["error"]), (400, "missing Host"))
        os.rename(log, log + ".1")
        proxy.signal(signal.SIGUSR1)
        time.sleep(0.2)
        conn.request("GET", "/rotated")
        conn.getresponse().read()
        rotated = self.read_lines(log, 1)
        self.assertEqual(rotated[0]["path"], "/rotated")

    def test_a_client_that_leaves_mid_upload_is_logged_as_499(self):
        """It was logged with status 0 and no error, as if nothing had been answered for no
        reason (an outside probe); nginx logs 499."""
        log = os.path.join(self.start_dir(), "access.log")
        proxy = self.proxy(config([self.backend("blue-1")], [self.backend("green-1")],
                                  extra='[access_log]\ntarget = "%s"\n' % log))
        for reset in (False, True):
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            s.sendall(b"POST /upload?n=%d HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
                      % reset + b"x" * 65536)
            time.sleep(0.3)  # the body is on its way to the backend
            if reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        lines = self.read_lines(log, 2)
        for line in lines:
            self.assertEqual(line["status"], 499, line)
            self.assertTrue(line["error"], line)
        self.assertGreaterEqual(metric(proxy, "bgproxy_client_aborts_total"), 2)

    def read_lines(self, path, n, timeout=5):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.exists(path):
                with open(path) as f:
                    lines = [json.loads(l) for l in f if l.strip()]
                if len(lines) >= n:
                    return lines
            time.sleep(0.05)
        self.fail("fewer than %d lines in %s" % (n, path))

    def start_dir(self):
        import shutil, tempfile
        d = tempfile.mkdtemp(prefix="bgproxy-log-")
        self.addCleanup(shutil.rmtree, d, True)
        return d


class AdminTest(ProcessTestCase):
    def test_status_healthz_and_read_only(self):
        proxy = self.proxy(config([self.backend("blue-1")], [self.backend("green-1")]))
        self.assertEqual(admin_get(proxy, "/healthz"), (200, b"ok\n"))
        self.assertEqual(admin_get(proxy, "/readyz")[0], 200)
        status, body = admin_get(proxy, "/status")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["version"], proxy.status()["version"])
        self.assertEqual(admin_get(proxy, "/status", method="POST")[0], 405)
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        for _ in range(3):
            conn.request("GET", "/")
            conn.getresponse().read()
        # A request is counted just after its last byte is written: a scrape racing the client
        # may see it a moment later, so look again for a bounded time.
        counted = 'bgproxy_http_responses_total{backend="blue-1",code="2xx",colour="blue",method="GET"} 3'
        deadline = time.time() + 2
        while True:
            status, body = admin_get(proxy, "/metrics")
            text = body.decode()
            if counted in text or time.time() > deadline:
                break
            time.sleep(0.02)
        self.assertEqual(status, 200)
        self.assertIn('bgproxy_colour_weight_ratio{colour="blue"} 1', text)
        self.assertIn('bgproxy_backend_requests_total{backend="blue-1",colour="blue"} 3', text)
        self.assertIn('bgproxy_http_responses_total{backend="blue-1",code="2xx",colour="blue",method="GET"} 3', text)
        for line in text.splitlines():
            if line and not line.startswith("#"):
                self.assertRegex(line, r"^bgproxy_[a-z_]+(\{[^}]*\})? [-0-9.e+]+$")
        self.assertEqual(admin_get(proxy, "/nope")[0], 404)

    def test_hostile_admin_clients_are_bounded(self):
        """Found by an outside probe: the admin listener kept every connection (a flood ran the
        proxy out of descriptors), gave a trickled head client_keepalive, held ~1 MiB of body a
        connection, sent HEAD bodies and closed bad requests without a word."""
        proxy = self.proxy(config([self.backend("blue-1")], [self.backend("green-1")],
                                  extra='[server]\nadmin_max_connections = 8\n'
                                        '[timeouts]\nclient_header = "1s"\n'))
        address = ("127.0.0.1", proxy.admin_port)
        idle = [socket.create_connection(address, timeout=5) for _ in range(20)]
        self.addCleanup(lambda: [s.close() for s in idle])
        time.sleep(0.3)
        start = time.time()
        self.assertEqual(admin_get(proxy, "/readyz")[0], 200)  # a probe always gets in
        self.assertLess(time.time() - start, 0.5)
        closed = 0
        for s in idle:
            s.settimeout(0.05)
            try:
                closed += s.recv(1) == b""
            except (socket.timeout, ConnectionError):
                closed += 0
        self.assertGreaterEqual(closed, 12, "only admin_max_connections stay")
        # A head trickled past client_header is cut there.
        slow = socket.create_connection(address, timeout=5)
        self.addCleanup(slow.close)
        start = time.time()
        cut = None
        for piece in [b"GET /status HTTP/1.1\r\n"] + [b"X-A: b\r\n"] * 30:
            try:
                slow.sendall(piece)
                time.sleep(0.1)
            except OSError:
                cut = time.time() - start
                break
        self.assertIsNotNone(cut, "a trickled head outlived client_header")
        self.assertLess(cut, 2.5)

        def exchange(data):
            with socket.create_connection(address, timeout=5) as s:
                s.sendall(data)
                out = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        return out
                    out += chunk
        # No body is read: refused at the head.
        out = exchange(b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 1048000\r\n\r\n" + b"x" * 1000)
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "), out[:100])
        # HEAD: the length a GET gets, no body, and the next response right after it.
        out = exchange(b"HEAD /status HTTP/1.1\r\nHost: a\r\n\r\n"
                       b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        head, rest = out.split(b"\r\n\r\n", 1)
        self.assertIn(b"Content-Length: ", head)
        self.assertNotIn(b"Content-Length: 0\r", head + b"\r")
        self.assertTrue(rest.startswith(b"HTTP/1.1 200 "), rest[:100])
        self.assertTrue(rest.endswith(b"\r\n\r\nok\n"), rest[-50:])
        # Absolute-form is accepted; bad requests get a status, not a silent close.
        self.assertTrue(exchange(b"GET http://x/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .startswith(b"HTTP/1.1 200 "))
        self.assertTrue(exchange(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 100000 + b"\r\n\r\n")
                        .startswith(b"HTTP/1.1 431 "))
        self.assertTrue(exchange(b"GET /he\x01 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 "))
        # Host: one, on HTTP/1.1 (RFC 9112 3.2; an outside probe found it answered without).
        for bad in (b"GET /healthz HTTP/1.1\r\n\r\n",
                    b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                    b"GET /healthz HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"):
            self.assertIn(b" 400 ", exchange(bad).split(b"\r\n")[0], bad)
        self.assertTrue(exchange(b"GET /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 "))
        self.assertEqual(admin_get(proxy, "/healthz"), (200, b"ok\n"))

    def test_clients_that_never_read_their_answers_do_not_lock_out_a_probe(self):
        """Every admin slot held by a client pipelining requests it never reads: the answer
        waiting on its client held the slot busy, and /readyz was closed unanswered (found by
        a review, 523726c). And while the flood's answers are rendered every slot is busy: a
        probe then was closed unanswered too (found by CI under ASan); it now waits its turn."""
        proxy = self.proxy(config([self.backend("blue-1")], [self.backend("green-1")],
                                  extra='[server]\nadmin_max_connections = 8\n'))
        address = ("127.0.0.1", proxy.admin_port)
        flood = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n" * 4000
        stuck = []
        self.addCleanup(lambda: [s.close() for s in stuck])
        for _ in range(8):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(address)
            s.setblocking(False)
            try:
                s.send(flood)  # as much as the kernel takes (answers of ~10 KiB each); never read
            except BlockingIOError:
                pass
            stuck.append(s)
        # Probed while the answers are rendered (every slot busy: on 7a139da the probe was
        # turned away) and once each answer waits on its client, its socket full.
        for _ in range(10):
            self.assertEqual(admin_get(proxy, "/readyz")[0], 200)
            time.sleep(0.1)

    def test_a_readiness_probe_is_answered_while_every_slot_renders_an_answer(self):
        """A scrape storm: every admin slot held by a client pipelining /metrics and reading
        the answers as fast as they come, so each slot is busy rendering nearly all the time.
        On 7a139da a readiness probe arriving then was closed unanswered (found by CI under
        ASan, where rendering is slow); it now waits its turn, for the first slot to go idle.
        A scraper whose slot a probe took connects again 0.05 s later, as a scraper's next
        scrape would, and the probes come 0.15 s apart, each into a full house: a scraper
        reconnecting at once, before the probe's request had come, could close the probe's
        new connection, then the one idle longest (1 probe in 20, in two full-suite runs; left
        so: waiting for a newcomer's request instead would let a flood of silent connections
        keep the house)."""
        proxy = self.proxy(config([self.backend("blue-1")], [self.backend("green-1")],
                                  extra='[server]\nadmin_max_connections = 4\n'))
        address = ("127.0.0.1", proxy.admin_port)
        stop = threading.Event()

        def scrape_storm():
            deadline = time.time() + 20  # bounded even if never stopped
            while not stop.is_set() and time.time() < deadline:
                try:  # a scraper whose slot a probe took connects again
                    with socket.create_connection(address, timeout=2) as s:
                        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n" * 3000)
                        while not stop.is_set() and s.recv(65536):
                            pass  # read as fast as answers come, until closed or stopped
                except OSError:
                    pass
                stop.wait(0.05)

        storm = [threading.Thread(target=scrape_storm) for _ in range(4)]
        for t in storm:
            t.start()
        self.addCleanup(lambda: [stop.set()] + [t.join(10) for t in storm])
        time.sleep(0.2)
        answered, failures = 0, []
        for _ in range(20):
            started = time.time()
            try:
                answered += admin_get(proxy, "/readyz")[0] == 200
            except (OSError, http.client.HTTPException) as e:
                failures.append("%r after %.2f s" % (e, time.time() - started))
            time.sleep(0.15)
        print("readiness probes answered during the scrape storm: %d of 20" % answered)
        self.assertEqual(answered, 20, failures)

    def test_clients_sending_half_a_head_hold_no_slot_against_a_probe(self):
        """Every admin slot held by a client that sent half a head and stalled: the one that
        has waited longest gives way to a probe at once. (29c768b counted any byte waiting
        as a request come, and the probe waited for client_header; found by review.)"""
        proxy = self.proxy(config([self.backend("blue-1")], [self.backend("green-1")],
                                  extra='[server]\nadmin_max_connections = 4\n'))
        stalled = []
        self.addCleanup(lambda: [s.close() for s in stalled])
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", proxy.admin_port), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHo")
            stalled.append(s)
        time.sleep(0.3)
        started = time.time()
        conn = http.client.HTTPConnection("127.0.0.1", proxy.admin_port, timeout=3)
        conn.request("GET", "/readyz")
        self.assertEqual(conn.getresponse().status, 200)
        conn.close()
        self.assertLess(time.time() - started, 2.0)

    def test_readyz_turns_503_before_the_listener_closes_on_sigterm(self):
        proxy = self.proxy(config([self.backend("blue-1")], [self.backend("green-1")],
                                  extra='[timeouts]\nshutdown_ready_delay = "1s"\n'))
        self.assertEqual(admin_get(proxy, "/readyz")[0], 200)
        proxy.signal(signal.SIGTERM)
        start = time.time()
        not_ready = listener_closed = None
        # Bounded: sanitizer builds are slow, so the window is generous; the order and the gap
        # are what is checked.
        while time.time() - start < 15 and listener_closed is None:
            now = time.time() - start
            if not_ready is None:
                try:
                    if admin_get(proxy, "/readyz")[0] == 503:
                        not_ready = now
                except (OSError, http.client.HTTPException):
                    pass
            try:
                socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5).close()
            except OSError:
                listener_closed = now
            time.sleep(0.01)
        self.assertIsNotNone(not_ready, "/readyz never answered 503")
        self.assertIsNotNone(listener_closed, "the listener never closed")
        print("SIGTERM: /readyz 503 after %.3f s, listener closed after %.3f s (delay 1 s)"
              % (not_ready, listener_closed))
        self.assertLess(not_ready, listener_closed)
        self.assertGreater(listener_closed - not_ready, 0.8)
        self.assertEqual(proxy.wait(20), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
