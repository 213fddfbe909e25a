"""Retries and the automatic revert under real failures: killed and frozen backends."""
import collections
import datetime
import http.client
import json
import os
import signal
import tempfile
import threading
import time
import unittest
import urllib.request

from harness import (ConnectionServer, ProcessTestCase, backend_admin, config, raw_exchange,
                     status_of)
from test_control import Load, hang

FAST = """
[health]
interval = "500ms"
fast_interval = "200ms"
jitter = "0ms"
timeout = "300ms"
fall = 3
[timeouts]
upstream_response = "1s"
upstream_try = "500ms"
"""


class RetryTest(ProcessTestCase):
    def test_kill_9_of_every_green_backend_under_load_fails_no_request(self):
        blue = [self.backend("blue-1"), self.backend("blue-2")]
        green = [self.backend("green-1"), self.backend("green-2")]
        proxy = self.proxy(config(blue, green, weights=(50, 50), extra=FAST))
        load = Load(proxy.port, connections=32)
        time.sleep(1.0)
        killed_at = time.time()
        for b in green:
            b.signal(signal.SIGKILL)
        deadline = time.time() + 10
        while time.time() < deadline and proxy.status()["colours"]["blue"]["weight"] != 100:
            time.sleep(0.05)
        time.sleep(0.5)
        records = load.stop()
        with open(proxy.audit_log) as f:
            # The rollout guard (health checks) or canary analysis (green's failed connects
            # against blue's none), whichever sees it first.
            revert = [json.loads(l) for l in f
                      if '"auto_revert"' in l or "green failed" in l or "canary analysis" in l]
        self.assertTrue(revert, "no automatic revert in the audit log")
        reverted_at = datetime.datetime.strptime(revert[0]["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        failed = [r for r in records if r[2] is None]
        after = [r for r in records if r[0] > killed_at]
        print("kill -9 of both green backends at 50/50 under 32 connections: %d requests "
              "(%d after the kill), %d failed; revert %.2f s after the kill (audit log)"
              % (len(records), len(after), len(failed), reverted_at - killed_at))
        self.assertEqual(len(failed), 0)
        self.assertGreater(len(after), 500)
        # At the latest by the active checks: within fall x interval + one interval.
        self.assertLess(reverted_at - killed_at, 3 * 0.5 + 0.5)
        s = proxy.status()
        self.assertEqual(s["colours"]["green"]["role"], "failed")

    def test_a_release_resetting_on_every_backend_spends_one_try_not_all(self):
        # Four green backends reset every request (as a release dying backend by backend does),
        # their checks still passing. A GET sent to green is retried on blue at once: before,
        # its two retries went to two more green backends and it got a 502.
        blue = [self.backend("blue-1"), self.backend("blue-2")]
        green = [self.backend("green-%d" % i) for i in range(1, 5)]
        for b in green:
            backend_admin(b, "/admin/reset?reset=1")
        proxy = self.proxy(config(blue, green, weights=(50, 50), extra=FAST))
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        served = []
        for _ in range(12):
            conn.request("GET", "/")
            r = conn.getresponse()
            served.append((r.status, r.read()))
        self.assertTrue(all(status == 200 and body.startswith(b"blue") for status, body in served),
                        served)

    def test_a_failing_stable_backend_retries_in_its_colour_not_onto_the_candidate(self):
        # From a review: a retry crossing from the stable colour piled a failing blue backend's
        # requests onto a 10% canary (35% of requests served by it).
        blue = [self.backend("blue-%d" % i) for i in range(1, 4)]
        green = [self.backend("green-1")]
        backend_admin(blue[0], "/admin/reset?reset=1")
        proxy = self.proxy(config(blue, green, weights=(90, 10), extra=FAST))
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        served = collections.Counter()
        for _ in range(60):
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
            served[r.getheader("X-Backend")] += 1
        print("90/10, blue-1 resetting every request: served %s" % dict(served))
        self.assertLessEqual(served["green-1"], 15)

    def test_tries_timing_out_on_a_reverted_colour_are_all_retried(self):
        # Green hangs every request and fails its checks: the guard reverts it before the hung
        # tries time out (upstream_try), and every one of them is retried on blue, whatever the
        # retry budget (3 here, of 24 requests): the budget guards peers of an overloaded
        # backend, not a colour taken out of the routing.
        blue = [self.backend("blue-1"), self.backend("blue-2")]
        green = [self.backend("green-1"), self.backend("green-2")]
        proxy = self.proxy(config(blue, green, weights=(50, 50), extra="""
[health]
interval = "100ms"
fast_interval = "100ms"
jitter = "0ms"
timeout = "100ms"
fall = 2
[timeouts]
upstream_try = "1500ms"
upstream_response = "5s"
[outlier]
stalled_after = "10s"
stalled_alone_after = "10s"
"""))
        for b in green:
            hang(b)
            backend_admin(b, "/admin/health?status=500")
        for b in blue:
            # The retries stay in flight together: the budget would let only 3 of them go.
            backend_admin(b, "/admin/delay?delay=300")
        results = []
        lock = threading.Lock()

        def client():
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            conn.request("GET", "/")
            r = conn.getresponse()
            with lock:
                results.append((r.status, r.read()))

        threads = [threading.Thread(target=client) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print("green hung and failing its checks at 50/50: %d of 24 GETs got 200"
              % sum(1 for status, _ in results if status == 200))
        self.assertEqual(proxy.status()["colours"]["green"]["role"], "failed")
        self.assertEqual([status for status, _ in results], [200] * 24, results)

    def test_a_hanging_backend_has_its_requests_retried_elsewhere(self):
        blue = [self.backend("blue-1"), self.backend("blue-2")]
        green = [self.backend("green-1")]
        proxy = self.proxy(config(blue, green, extra=FAST))
        blue[0].signal(signal.SIGSTOP)  # accepts (the kernel does), never answers
        self.addCleanup(lambda: blue[0].signal(signal.SIGCONT))
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        slow = 0
        for _ in range(10):
            start = time.time()
            conn.request("GET", "/")
            r = conn.getresponse()
            self.assertEqual((r.status, r.read()), (200, b"blue-2\n"))
            slow += 1 if time.time() - start > 0.4 else 0
        # And it is taken out: no longer healthy in the table, so no request waits on it.
        deadline = time.time() + 10
        while time.time() < deadline:
            backends = {b["name"]: b["healthy"] for b in proxy.status()["colours"]["blue"]["backends"]}
            if not backends["blue-1"]:
                break
            time.sleep(0.1)
        self.assertFalse(backends["blue-1"], "the frozen backend is still taking requests")
        start = time.time()
        conn.request("GET", "/")
        self.assertEqual(conn.getresponse().read(), b"blue-2\n")
        self.assertLess(time.time() - start, 0.4)
        print("backend frozen with SIGSTOP: 10 of 10 GETs served by the other one, %d after a "
              "0.5 s timeout and a retry; then taken out" % slow)
        blue[0].signal(signal.SIGCONT)

    def test_a_retry_that_reaches_a_hanging_backend_still_times_out(self):
        # blue-1 resets every request; the retry crosses to green-1, which is frozen. The retry's
        # connection must be under the upstream_response deadline like the first one (it once
        # was not: the request hung as long as the backend did).
        blue = [self.backend("blue-1")]
        green = [self.backend("green-1")]
        proxy = self.proxy(config(blue, green, extra=FAST.replace("[health]", "[health]\nenabled = false")))
        green[0].signal(signal.SIGSTOP)
        self.addCleanup(lambda: green[0].signal(signal.SIGCONT))
        start = time.time()
        out = raw_exchange(proxy.port, b"GET /?reset=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                           timeout=8)
        elapsed = time.time() - start
        self.assertEqual(status_of(out), 504, out)
        self.assertLess(elapsed, 3.0)
        green[0].signal(signal.SIGCONT)

    def test_a_post_that_reached_a_dying_backend_is_not_retried(self):
        log = tempfile.NamedTemporaryFile(delete=False).name
        self.addCleanup(os.unlink, log)
        blue = [self.backend("blue-1", log=log), self.backend("blue-2", log=log)]
        green = [self.backend("green-1", log=log)]
        proxy = self.proxy(config(blue, green))
        out = raw_exchange(proxy.port, b"POST /?reset=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                           b"Connection: close\r\n\r\nhello")
        self.assertEqual(status_of(out), 502)
        with open(log) as f:
            lines = [l for l in f.read().splitlines() if l.startswith("POST")]
        self.assertEqual(len(lines), 1, lines)
        # The same failure on a GET is retried (on the other blue backend, then green).
        out = raw_exchange(proxy.port, b"GET /?reset=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(status_of(out), 502)
        with open(log) as f:
            gets = [l for l in f.read().splitlines() if l.startswith("GET /?reset=1")]
        self.assertEqual(len(gets), 3, gets)  # the first try and attempts = 2 retries

    def test_a_response_head_broken_off_is_a_502_and_not_retried(self):
        """Found by an outside probe: a GET or DELETE whose backend wrote half a head (or
        junk) and closed was run again on the other colour and answered 200 there: the
        backend had the request, and its crash was hidden."""
        class HalfHead(ConnectionServer):
            requests = []

            def serve(self, conn):
                with conn:
                    head = self.read_head(conn)
                    if head is not None:
                        HalfHead.requests.append(head.split(b"\r\n", 1)[0])
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")

        broken = HalfHead("blue-1")
        self.addCleanup(broken.server.close)
        green = self.backend("green-1")
        proxy = self.proxy(config([broken], [green], weights=(100, 0)))
        for method in (b"GET", b"DELETE"):
            out = raw_exchange(proxy.port, method + b" /x HTTP/1.1\r\nHost: x\r\n"
                               b"Connection: close\r\n\r\n")
            self.assertEqual(status_of(out), 502, out[:200])
            self.assertIn(b"mid-head", out)
        self.assertEqual(HalfHead.requests, [b"GET /x HTTP/1.1", b"DELETE /x HTTP/1.1"])



class ErrorRateTest(ProcessTestCase):
    def test_green_failing_20_percent_during_a_ramp_aborts_it_and_reverts(self):
        blue = [self.backend("blue-1"), self.backend("blue-2")]
        green = [self.backend("green-1"), self.backend("green-2")]
        proxy = self.proxy(config(blue, green, extra="""
[outlier]
error_rate = 0.1
min_requests = 100
window = "5s"
consecutive_failures = 0
[retries]
attempts = 0
"""))
        for b in green:
            with urllib.request.urlopen("http://%s/admin/fail?fail_rate=0.2" % b.address, timeout=5) as r:
                r.read()
        proxy.bgctl("ramp", "green", "to=100", "step=20", "every=1s")
        started = time.time()
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        green_errors = 0
        sent = 0
        deadline = time.time() + 20
        reverted = None
        while time.time() < deadline:
            # Green fails one request in five (bg-backend's fail_rate); blue never does.
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            backend = r.getheader("X-Backend") or ""
            if r.status == 500 and backend.startswith("green"):
                green_errors += 1
            sent += 1
            if sent % 25 == 0:
                s = proxy.status()
                if s["colours"]["green"]["role"] == "failed":
                    reverted = time.time() - started
                    break
        self.assertIsNotNone(reverted, "no revert: %s" % proxy.status())
        s = proxy.status()
        print("green at 20%% errors during a ramp: reverted %.2f s after the ramp started, after "
              "%d green errors" % (reverted, green_errors))
        self.assertEqual(s["colours"]["blue"]["weight"], 100)
        self.assertIsNone(s["ramp"])
        with open(proxy.audit_log) as f:
            last = json.loads(f.read().splitlines()[-1])
        self.assertIn("green error rate", last["note"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
