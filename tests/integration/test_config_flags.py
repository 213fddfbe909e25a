"""Flags given at start override the config file, at start and after every reload (bgctl reload
and SIGHUP); a file may leave out what the flags give."""
import http.client
import os
import signal
import subprocess
import time
import unittest

from harness import BGPROXY, ProcessTestCase, admin_get, config, free_port, metric


def served_by(port, n=20):
    """The X-Backend values of n GETs on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    seen = set()
    for _ in range(n):
        conn.request("GET", "/")
        r = conn.getresponse()
        r.read()
        seen.add(r.getheader("X-Backend") if r.status == 200 else r.status)
    conn.close()
    return seen


class FlagsOverFileTest(ProcessTestCase):
    def start_with_flags(self):
        self.file_blue = self.backend("file-blue")
        self.file_green = self.backend("file-green")
        self.flag_blue = self.backend("flag-blue")
        self.flag_green = self.backend("flag-green")
        self.port = free_port()
        text = config([self.file_blue], [self.file_green], weights=(100, 0))
        proxy = self.proxy(text, flags=[
            "--listen", "127.0.0.1:%d" % self.port,
            "--blue", self.flag_blue.address, "--green", self.flag_green.address,
            "--weights", "blue=0,green=100", "--metrics", "false"])
        return proxy

    def check_flags(self, proxy, when):
        with self.subTest(flag="--listen", when=when):
            self.assertEqual(proxy.port, self.port)
            self.assertEqual(served_by(self.port), {"flag-green"})
        with self.subTest(flag="--green", when=when):
            green = [b["address"] for b in proxy.status()["colours"]["green"]["backends"]]
            self.assertEqual(green, [self.flag_green.address])
        with self.subTest(flag="--blue", when=when):
            blue = [b["address"] for b in proxy.status()["colours"]["blue"]["backends"]]
            self.assertEqual(blue, [self.flag_blue.address])
        with self.subTest(flag="--weights", when=when):
            # The flag's weights, not the file's 100/0 (weights in a config apply at a first
            # start; the state keeps them after).
            self.assertEqual(proxy.status()["colours"]["green"]["weight"], 100)
        with self.subTest(flag="--metrics", when=when):
            served_by(self.port, 10)
            self.assertEqual(
                metric(proxy, "bgproxy_request_duration_seconds_count", 'colour="green"'), 0)
        with self.subTest(flag="--admin --control-socket --state-file --audit-log", when=when):
            self.assertEqual(admin_get(proxy, "/healthz")[0], 200)
            self.assertEqual(proxy.bgctl("status").returncode, 0)
            self.assertTrue(os.path.exists(proxy.state_file))
            with open(proxy.audit_log) as f:
                audited = f.read()
            if when != "start":
                self.assertIn('"command":"reload"', audited)

    def test_each_flag_holds_at_start_and_after_reload_and_sighup(self):
        proxy = self.start_with_flags()
        self.check_flags(proxy, "start")
        r = proxy.bgctl("reload")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.check_flags(proxy, "reload")
        version = proxy.status()["version"]
        proxy.signal(signal.SIGHUP)
        deadline = time.time() + 5
        while time.time() < deadline and proxy.status()["version"] == version:
            time.sleep(0.05)
        self.assertGreater(proxy.status()["version"], version, "SIGHUP reload not applied")
        self.check_flags(proxy, "sighup")

    def test_a_file_may_leave_out_what_the_flags_give(self):
        blue = self.backend("blue-1")
        green = self.backend("green-1")
        gate_only = """
[[gate]]
name = "root answers"
path = "/"
expect = 200
"""
        flags = ["--listen", "127.0.0.1:0", "--blue", blue.address, "--green", green.address]
        proxy = self.proxy(gate_only, flags=flags)
        self.assertEqual(served_by(proxy.port), {"blue-1"})
        r = proxy.bgctl("flip")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)  # the file's gate ran and passed
        self.assertEqual(served_by(proxy.port), {"green-1"})
        self.assertEqual(proxy.bgctl("reload").returncode, 0)
        self.assertEqual(served_by(proxy.port), {"green-1"})
        # Without the flags the same file is refused, saying what is missing.
        check = subprocess.run([BGPROXY, "--check", proxy.config_path], capture_output=True,
                               text=True, timeout=30)
        self.assertEqual(check.returncode, 1)
        self.assertIn("no listener", check.stderr)
        with_flags = subprocess.run([BGPROXY, "--check", proxy.config_path] + flags,
                                    capture_output=True, text=True, timeout=30)
        self.assertEqual(with_flags.returncode, 0, with_flags.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
