"""Active health checks and the rollout guard, with real processes."""
import http.client
import json
import os
import resource
import signal
import socket
import time
import unittest
import urllib.request

from harness import ConnectionServer, ProcessTestCase, config, metric

HEALTH = """
[health]
interval = "500ms"
fast_interval = "200ms"
jitter = "0ms"
timeout = "300ms"
rise = 2
fall = 3
"""


def set_health(backend, status):
    with urllib.request.urlopen("http://%s/admin/health?status=%d" % (backend.address, status), timeout=5) as r:
        r.read()


def metrics(proxy):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % proxy.admin_port, timeout=5) as r:
        return r.read().decode()


def get(port, path="/"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, r.getheader("X-Backend"), body


class HealthTest(ProcessTestCase):
    def setUp(self):
        super().setUp()
        self.blue = [self.backend("blue-1"), self.backend("blue-2")]
        self.green = [self.backend("green-1"), self.backend("green-2")]
        self.proxy_ = self.proxy(config(self.blue, self.green, extra=HEALTH))

    def wait_for(self, predicate, timeout):
        start = time.time()
        while time.time() - start < timeout:
            s = self.proxy_.status()
            if predicate(s):
                return time.time() - start, s
            time.sleep(0.02)
        self.fail("condition not reached in %.1f s: %s" % (timeout, json.dumps(self.proxy_.status())))

    def test_failing_green_after_a_flip_reverts_to_blue_and_is_marked_failed(self):
        self.assertEqual(self.proxy_.bgctl("flip").returncode, 0)
        self.assertTrue(get(self.proxy_.port)[1].startswith("green"))
        start = time.time()
        for b in self.green:
            set_health(b, 503)
        elapsed, s = self.wait_for(lambda s: s["colours"]["blue"]["weight"] == 100, 10)
        bound = 3 * 0.5 + 0.5  # fall x interval + one interval
        print("green failing its checks: reverted to blue %.2f s later (bound %.1f s)" % (elapsed, bound))
        self.assertLess(time.time() - start, bound)
        self.assertEqual(s["colours"]["green"]["role"], "failed")
        self.assertEqual(s["changed_by"], "rollout guard")
        self.assertTrue(get(self.proxy_.port)[1].startswith("blue"))
        with open(self.proxy_.audit_log) as f:
            last = json.loads(f.read().splitlines()[-1])
        self.assertEqual(last["result"], "applied")
        self.assertIn("green failed", last["note"])
        m = metrics(self.proxy_)
        self.assertIn('bgproxy_switches_total{kind="auto_revert"} 1', m)
        self.assertIn('bgproxy_colour_failed{colour="green"} 1', m)
        # Recovery does not move traffic back by itself...
        for b in self.green:
            set_health(b, 200)
        time.sleep(1.5)
        s = self.proxy_.status()
        self.assertEqual(s["colours"]["blue"]["weight"], 100)
        self.assertEqual(s["colours"]["green"]["healthy"], 2)
        # `clear` lifts the mark without moving traffic...
        self.assertEqual(self.proxy_.bgctl("clear").returncode, 0)
        s = self.proxy_.status()
        self.assertEqual(s["colours"]["green"]["role"], "idle")
        self.assertEqual(s["colours"]["blue"]["weight"], 100)
        self.assertEqual(self.proxy_.bgctl("clear").returncode, 1)  # nothing left to clear
        # ...an operator's flip moves it.
        self.assertEqual(self.proxy_.bgctl("flip").returncode, 0)
        s = self.proxy_.status()
        self.assertEqual(s["colours"]["green"]["role"], "candidate")
        self.assertEqual(s["colours"]["green"]["weight"], 100)

    def test_both_colours_down_is_panic_mode_and_still_serves(self):
        # Green (idle) first, then blue: with green already down there is nowhere to fail over.
        for b in self.green:
            set_health(b, 503)
        self.wait_for(lambda s: s["colours"]["green"]["healthy"] == 0, 10)
        for b in self.blue:
            set_health(b, 503)
        elapsed, s = self.wait_for(lambda s: s["panic"], 10)
        print("both colours failing their checks: panic after %.2f s" % elapsed)
        status, backend, _ = get(self.proxy_.port)
        self.assertEqual(status, 200)
        self.assertIn("bgproxy_panic 1", metrics(self.proxy_))
        # The guard changed no routing: blue (stable) keeps its weight, nobody is marked.
        self.assertEqual(s["colours"]["blue"]["weight"], 100)
        for b in self.blue + self.green:
            set_health(b, 200)
        self.wait_for(lambda s: not s["panic"], 10)

    def test_leaving_a_panic_the_idle_colour_first_holds_traffic_no_longer_than_that(self):
        """Found by an outside probe: both colours down, then up again, green's checks passing
        0.3 s before blue's: a failover to green (at 0%, maybe an unvetted release), held for
        failback_hold (30 s). Begun as both left a panic, its failback waits no longer than the
        failover had lasted."""
        # Green down first: blue's fall is then a panic, not a failover of its own.
        for b in self.green:
            set_health(b, 503)
        self.wait_for(lambda s: s["colours"]["green"]["healthy"] == 0, 10)
        for b in self.blue:
            set_health(b, 503)
        self.wait_for(lambda s: s["panic"], 10)
        for b in self.green:
            set_health(b, 200)
        _, s = self.wait_for(lambda s: s["failover"] is not None, 10)
        for b in self.blue:
            set_health(b, 200)
        elapsed, s = self.wait_for(lambda s: s["failover"] is None, 10)
        print("leaving a panic, green first: failed back %.2f s after blue's checks were "
              "turned back" % elapsed)
        self.assertEqual(s["colours"]["blue"]["weight"], 100)
        self.assertEqual(s["colours"]["green"]["weight"], 0)
        self.assertNotEqual(s["colours"]["green"]["role"], "failed")

    def test_an_unhealthy_backend_gets_no_requests(self):
        set_health(self.blue[0], 503)
        self.wait_for(lambda s: s["colours"]["blue"]["healthy"] == 1, 10)
        seen = {get(self.proxy_.port)[1] for _ in range(20)}
        self.assertEqual(seen, {"blue-2"})



class ReloadedBackendsTest(ProcessTestCase):
    """Backends a reload adds serve only once their first check passes (as Envoy's new hosts),
    and that first check runs at once, not an interval later."""

    SLOW_CHECKS = HEALTH.replace('interval = "500ms"', 'interval = "5s"')

    def reload_with(self, proxy, blue, green):
        with open(proxy.config_path, "w") as f:
            f.write(config(blue, green, extra=self.SLOW_CHECKS))
        r = proxy.bgctl("reload")
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def backend_status(self, proxy, colour, name):
        return [b for b in proxy.status()["colours"][colour]["backends"] if b["name"] == name][0]

    def test_a_blackhole_added_by_a_reload_gets_no_request(self):
        blue = [self.backend("blue-1")]
        green = [self.backend("green-1")]
        proxy = self.proxy(config(blue, green, extra=self.SLOW_CHECKS))
        # Accepts connections (the kernel's backlog) and never answers.
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        self.addCleanup(hole.close)

        class Hole:
            name = "blue-hole"
            address = "127.0.0.1:%d" % hole.getsockname()[1]

        said = self.reload_with(proxy, blue + [Hole], green)
        slowest = 0
        for _ in range(20):
            start = time.time()
            status, backend, _ = get(proxy.port)
            slowest = max(slowest, time.time() - start)
            self.assertEqual((status, backend), (200, "blue-1"))
        print("20 GETs right after the reload added a blackhole: slowest %.3f s" % slowest)
        self.assertLess(slowest, 1.0)
        self.assertIn("first health check passes: blue-hole", said)
        deadline = time.time() + 3
        while "first check failed" not in self.backend_status(proxy, "blue", "blue-hole").get("check", ""):
            self.assertLess(time.time(), deadline, json.dumps(proxy.status()))
            time.sleep(0.05)
        self.assertEqual(proxy.status()["colours"]["blue"]["weight"], 100)

    def test_a_good_backend_added_by_a_reload_serves_after_its_first_check(self):
        blue = [self.backend("blue-1")]
        green = [self.backend("green-1")]
        proxy = self.proxy(config(blue, green, extra=self.SLOW_CHECKS))
        added = self.backend("blue-2")
        self.reload_with(proxy, blue + [added], green)
        start = time.time()
        while not self.backend_status(proxy, "blue", "blue-2")["healthy"]:
            self.assertLess(time.time() - start, 2.0, "no first check within 2 s (interval 5 s)")
            time.sleep(0.02)
        print("a good backend added by a reload served %.2f s later" % (time.time() - start))
        seen = {get(proxy.port)[1] for _ in range(20)}
        self.assertEqual(seen, {"blue-1", "blue-2"})

    def test_replacing_the_live_colours_backends_does_not_trip_the_guard(self):
        blue = [self.backend("blue-1")]
        green = [self.backend("green-1")]
        proxy = self.proxy(config(blue, green, extra=self.SLOW_CHECKS))
        fresh = [self.backend("blue-9")]
        self.reload_with(proxy, fresh, green)
        for _ in range(10):
            self.assertEqual(get(proxy.port)[:2], (200, "blue-9"))
        s = proxy.status()
        self.assertEqual((s["colours"]["blue"]["weight"], s["colours"]["blue"]["role"]), (100, "stable"))


@unittest.skipIf(os.environ.get("BGPROXY_SANITIZE"),
                 "sanitizer runtimes need descriptors of their own (UBSan's vptr check opens a "
                 "pipe): out of descriptors they report errors that are not the proxy's")
class DescriptorFloodTest(ProcessTestCase):
    """A connection flood takes no backend down by its checks (failed before 92c1249: the checks'
    EMFILE took every backend down, and with a canary it reverted a good release; then a check
    that could not run was not counted, but the flood still starved them). Newcomers near the
    descriptor limit are now turned away, and the checks keep the descriptors they need."""

    def test_a_connection_flood_starves_no_check(self):
        def low_limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        blue = [self.backend("blue-1")]
        green = [self.backend("green-1")]
        fast = HEALTH.replace('interval = "500ms"', 'interval = "100ms"').replace(
            'fast_interval = "200ms"', 'fast_interval = "100ms"')
        proxy = self.proxy(config(blue, green, extra=fast), workers=1, preexec_fn=low_limit)
        self.assertEqual(proxy.bgctl("set", "green=50").returncode, 0)
        flood = []
        for _ in range(80):
            try:
                flood.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=2))
            except OSError:
                break
        time.sleep(1.5)  # fall (3) x interval, several times over
        for s in flood:
            s.close()
        time.sleep(0.5)
        s = proxy.status()
        proxy.proc.kill()
        log = proxy.proc.stdout.read() + proxy.proc.stderr.read()
        self.assertNotIn("not run (not counted)", log)  # the flood starved no check
        self.assertNotIn(" down: ", log)
        self.assertEqual(s["colours"]["green"]["weight"], 50)
        self.assertTrue(all(b["healthy"] for c in ("blue", "green") for b in s["colours"][c]["backends"]))


class PreviewStickyTest(ProcessTestCase):
    def test_preview_header_from_an_allowed_network_reaches_green_at_weight_0(self):
        blue = [self.backend("blue-1")]
        green = [self.backend("green-1")]
        proxy = self.proxy(config(blue, green, extra="""
[preview]
header = "X-BG-Color"
allowed_networks = ["127.0.0.0/8"]
"""))
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        for _ in range(5):
            conn.request("GET", "/", headers={"X-BG-Color": "green"})
            r = conn.getresponse()
            self.assertEqual(r.read(), b"green-1\n")
        # From a network not in the list, the header is ignored.
        other = self.proxy(config(blue, green, extra="""
[preview]
header = "X-BG-Color"
allowed_networks = ["10.0.0.0/8"]
"""))
        conn = http.client.HTTPConnection("127.0.0.1", other.port, timeout=5)
        conn.request("GET", "/", headers={"X-BG-Color": "green"})
        self.assertEqual(conn.getresponse().read(), b"blue-1\n")

    def test_behind_a_trusted_balancer_the_preview_is_judged_on_the_client_it_forwards_for(self):
        """Found by an outside probe: behind HAProxy (trusted, inside the allowed network) any
        client reached the idle colour with the header: the balancer's address was judged."""
        blue = [self.backend("blue-1")]
        green = [self.backend("green-1")]
        proxy = self.proxy(config(blue, green, extra="""
[server]
trusted_proxies = ["127.0.0.1"]
[preview]
header = "X-BG-Color"
allowed_networks = ["127.0.0.0/8", "10.0.0.0/8"]
"""))
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        for forwarded, served in (("203.0.113.9", b"blue-1\n"), ("10.2.3.4", b"green-1\n"),
                                  ("10.2.3.4, 203.0.113.9", b"blue-1\n"), ("junk", b"blue-1\n")):
            conn.request("GET", "/", headers={"X-BG-Color": "green", "X-Forwarded-For": forwarded})
            self.assertEqual(conn.getresponse().read(), served, forwarded)

    def test_sticky_clients_keep_their_colour_through_a_ramp_step(self):
        blue = [self.backend("blue-1")]
        green = [self.backend("green-1")]
        proxy = self.proxy(config(blue, green, weights=(50, 50), extra='[sticky]\ncookie = "bg"\n'))
        clients = []
        for _ in range(40):
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
            conn.request("GET", "/")
            r = conn.getresponse()
            body = r.read().decode().strip()
            cookie = r.getheader("Set-Cookie")
            # The colour and the split it was given in (the config's: version 1).
            self.assertTrue(cookie.startswith("bg=%s.1;" % body.split("-")[0]), cookie)
            clients.append((cookie.split(";")[0], body))
        self.assertEqual({b for _, b in clients}, {"blue-1", "green-1"})
        self.assertEqual(proxy.bgctl("set", "green=70").returncode, 0)  # a ramp step
        for cookie, first in clients:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
            conn.request("GET", "/", headers={"Cookie": cookie})
            r = conn.getresponse()
            self.assertEqual(r.read().decode().strip(), first)
            self.assertIsNone(r.getheader("Set-Cookie"))
        # At weight 0 the cookie no longer holds.
        self.assertEqual(proxy.bgctl("set", "green=0").returncode, 0)
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        conn.request("GET", "/", headers={"Cookie": "bg=green"})
        self.assertEqual(conn.getresponse().read(), b"blue-1\n")
        # Nor in the next split, a rollout of its own: its weights place every client afresh
        # (failed on dea94dc: a cookie from the split before pinned its client to green, half of
        # the returning clients on a 10% canary in an outside probe).
        self.assertEqual(proxy.bgctl("set", "green=10").returncode, 0)
        since = proxy.status()["version"]  # the split begins with this change
        on_green = 0
        for cookie, first in clients:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
            conn.request("GET", "/", headers={"Cookie": cookie})
            r = conn.getresponse()
            on_green += r.read() == b"green-1\n"
            fresh = r.getheader("Set-Cookie") or ""
            self.assertTrue(fresh.startswith("bg=") and (".%d;" % since) in fresh,
                            "%s kept its client (%r)" % (cookie, fresh))
        self.assertLess(on_green, 12, "the returning clients were not placed by the 10% weight")



class GateTest(ProcessTestCase):
    def test_a_flip_to_a_colour_failing_its_smoke_check_is_refused_and_changes_nothing(self):
        blue = [self.backend("blue-1")]
        green = [self.backend("green-1"), self.backend("green-2")]
        proxy = self.proxy(config(blue, green, extra="""
[health]
enabled = false
[[gate]]
name = "checkout page"
path = "/checkout?status=200"
expect = 200
body_contains = "green"
[[gate]]
name = "health endpoint"
path = "/healthz"
expect = [200, 204]
"""))
        with urllib.request.urlopen("http://%s/admin/health?status=500" % green[1].address, timeout=5) as r:
            r.read()
        before = proxy.status()
        r = proxy.bgctl("flip")
        self.assertEqual(r.returncode, 1)
        self.assertIn("smoke check 'health endpoint' failed on green-2: status 500", r.stderr)
        self.assertEqual(proxy.status()["version"], before["version"])
        self.assertEqual(proxy.bgctl("ramp", "green", "to=100", "step=10", "every=1s").returncode, 1)
        self.assertEqual(proxy.bgctl("set", "green=5").returncode, 1)
        # Skipping the gate is possible and audited.
        r = proxy.bgctl("flip", "--skip-gate")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(proxy.audit_log) as f:
            last = json.loads(f.read().splitlines()[-1])
        self.assertEqual(last["command"], "flip --skip-gate")
        # With green healthy again the gate passes; rollback is never gated.
        self.assertEqual(proxy.bgctl("rollback").returncode, 0)
        with urllib.request.urlopen("http://%s/admin/health?status=200" % green[1].address, timeout=5) as r:
            r.read()
        r = proxy.bgctl("flip")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_a_reload_that_changes_nothing_lets_a_flip_on_its_gate_through(self):
        """A reload applied while a flip's gate ran refused the flip ("the routing state changed
        while the gate ran"), even one that changed nothing: a config management run's SIGHUP
        could fail every gated flip it met. A reload that moves the gaining colour's backends
        or changes the gate's checks, or a drain, still does."""
        import concurrent.futures
        blue = [self.backend("blue-1")]
        green = [self.backend("green-1"), self.backend("green-2")]
        slow_gate = """
[health]
enabled = false
[[gate]]
name = "slow page"
path = "/?delay=2000"
expect = 200
timeout = "10s"
"""
        proxy = self.proxy(config(blue, green, extra=slow_gate))
        with open(proxy.config_path) as f:
            text = f.read()
        pool = concurrent.futures.ThreadPoolExecutor(1)
        self.addCleanup(pool.shutdown)

        def flip_meeting(during_gate):
            flip = pool.submit(proxy.bgctl, "flip")
            self.wait_on_gate(proxy)  # 2 s per backend from here
            during_gate()
            return flip.result()

        def applied_reloads():
            return metric(proxy, "bgproxy_config_reloads_total", 'result="applied"')

        def sighup():
            before = applied_reloads()
            os.kill(proxy.proc.pid, signal.SIGHUP)
            deadline = time.time() + 5
            while applied_reloads() == before:
                self.assertLess(time.time(), deadline, "SIGHUP never reloaded")
                time.sleep(0.02)

        def reload(new_text=None):
            if new_text is not None:
                with open(proxy.config_path, "w") as f:
                    f.write(new_text)
            r = proxy.bgctl("reload")
            self.assertEqual(r.returncode, 0, r.stderr)

        def weights():
            colours = proxy.status()["colours"]
            return colours["blue"]["weight"], colours["green"]["weight"]

        r = flip_meeting(lambda: reload())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(weights(), (0, 100))
        r = flip_meeting(sighup)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(weights(), (100, 0))
        # Green gains the next flip: a reload moving a green backend refuses it.
        moved = text.replace('address = "%s"' % green[1].address,
                             'address = "%s"' % blue[0].address)
        self.assertNotEqual(moved, text)
        stricter = text.replace('timeout = "10s"', 'timeout = "9s"')
        self.assertNotEqual(stricter, text)
        for changed in (moved, stricter):
            r = flip_meeting(lambda: reload(changed))
            self.assertEqual(r.returncode, 1, r.stdout)
            self.assertIn("a reload changed the green backends, their TLS or PROXY settings or "
                          "the gate's checks while the gate ran", r.stderr)
            reload(text)
        r = flip_meeting(lambda: self.assertEqual(proxy.bgctl("drain", "green-2").returncode, 0))
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("the routing state changed while the gate ran", r.stderr)
        self.assertEqual(weights(), (100, 0))


class RawBackend(ConnectionServer):
    """A backend that answers every connection with the bytes `answer(request)` yields, then
    closes: misbehaviour bg-backend does not have."""

    def __init__(self, name, answer):
        self.answer = answer
        self.connections = 0
        super().__init__(name)

    def serve(self, conn):
        self.connections += 1
        try:
            request = conn.recv(65536)
            for chunk in self.answer(request):
                conn.sendall(chunk)
        except OSError:
            pass
        finally:
            conn.close()


def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class HostileProbeTest(ProcessTestCase):
    """Health checks and smoke checks against backends that misbehave."""

    def assert_green_stays_healthy(self, proxy):
        deadline = time.time() + 3  # fall = 3 checks of 500 ms
        while time.time() < deadline:
            green = proxy.status()["colours"]["green"]["backends"][0]
            self.assertTrue(green["healthy"], green)
            time.sleep(0.1)

    def test_an_interim_response_before_the_answer_is_not_a_failure(self):
        """On 5b33ff4 a 103 Early Hints before the 200 was taken as the answer (status 103):
        the backend was marked down."""
        early = RawBackend("green-1", lambda request: [
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"])
        self.processes.append(early)
        proxy = self.proxy(config([self.backend("blue-1")], [early], extra=HEALTH))
        self.assert_green_stays_healthy(proxy)
        self.assertGreaterEqual(early.connections, 3)

    def test_a_large_but_valid_answer_head_is_not_a_failure(self):
        """A 200 whose head is 9.3 KB (30 fields of 300 bytes: a big CSP or cookies), which the
        data path relays: on c77f2fc the check refused it past Beast's 8 KiB header limit and
        marked the backend down (an outside probe: the stable colour failed over)."""
        fields = b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 300) for i in range(30))
        big = RawBackend("green-1", lambda request: [
            b"HTTP/1.1 200 OK\r\n" + fields +
            b"Content-Length: 2\r\nConnection: close\r\n\r\nok"])
        self.processes.append(big)
        proxy = self.proxy(config([self.backend("blue-1")], [big], extra=HEALTH))
        self.assert_green_stays_healthy(proxy)
        self.assertGreaterEqual(big.connections, 3)

    def test_an_endless_chunk_line_does_not_grow_the_proxy(self):
        """A smoke check reading a body (body_contains) from a backend that sends a chunk-size
        line without end: on 5b33ff4 the buffer grew with it (256 MiB sent, 512 MiB held)."""
        def endless_chunk_line(request):
            yield b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;"
            for _ in range(4096):  # 256 MiB at most, then the backend closes
                yield b"x" * 65536
        flood = RawBackend("green-1", endless_chunk_line)
        self.processes.append(flood)
        proxy = self.proxy(config([self.backend("blue-1")], [flood], extra="""
[health]
enabled = false
[[gate]]
name = "page"
path = "/"
expect = 200
body_contains = "green"
timeout = "5s"
"""))
        before = vm_hwm_kib(proxy.proc.pid)
        r = proxy.bgctl("flip", timeout=20)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("smoke check 'page' failed on green-1", r.stderr)
        grown = vm_hwm_kib(proxy.proc.pid) - before
        print("peak RSS grew by %d KiB during the check" % grown)
        self.assertLess(grown, 64 * 1024)


if __name__ == "__main__":
    unittest.main(verbosity=2)
