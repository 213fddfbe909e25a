"""The short soak: bench/soak.sh for 45 s (2 blue + 2 green bg-backends, one bgproxy with 2
workers; keep-alive and one-shot GETs, uploads, large downloads, WebSocket echo, slow clients and
hostile inputs, while flips, sets, a ramp, reloads by bgctl and SIGHUP, and kill -9 / restart of
backends go on). Every well-formed request gets a complete, correct answer unless its own
backend was killed under it, no request started after an acknowledged switch is served by a
colour that switch set to 0, and bgproxy stays up and stops cleanly."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

from harness import BG_BACKEND, BGCTL, BGPROXY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECONDS = 45


class SoakTest(unittest.TestCase):
    def test_short_soak(self):
        out = tempfile.mkdtemp(prefix="bgproxy-soak-test-")
        env = dict(os.environ, SOAK_SECONDS=str(SECONDS), SOAK_STRICT="0", SOAK_OUT=out,
                   BGPROXY=BGPROXY, BG_BACKEND=BG_BACKEND, BGCTL=BGCTL)
        passed = False
        try:
            run = subprocess.run([os.path.join(ROOT, "bench", "soak.sh")], env=env,
                                 capture_output=True, text=True, timeout=SECONDS + 120)
            lines = run.stdout.splitlines()
            print("\n".join(l for l in lines if not l.startswith("SOAK_RESULT ")))
            results = [l for l in lines if l.startswith("SOAK_RESULT ")]
            self.assertTrue(results, "no SOAK_RESULT line; exit %d; stderr:\n%s"
                            % (run.returncode, run.stderr[-4000:]))
            res = json.loads(results[-1][len("SOAK_RESULT "):])
            failures = ""
            if os.path.exists(os.path.join(out, "failures.txt")):
                with open(os.path.join(out, "failures.txt")) as f:
                    failures = f.read()

            # The soak really ran: traffic of every kind, and the operations.
            self.assertGreater(res["requests_total"], 2000)
            for kind in ("get_keepalive", "get_newconn", "download_length", "websocket",
                         "slow_header", "slow_reader"):
                self.assertGreater(res["requests"].get(kind, 0), 0, kind)
            self.assertGreater(res["requests"].get("post_length", 0) +
                               res["requests"].get("post_chunked", 0), 0)
            self.assertGreater(res["hostile_sent"], 20)
            self.assertGreaterEqual(res["ops"].get("flip", 0), 5)
            self.assertGreaterEqual(res["kills"], 2)
            self.assertGreaterEqual(res["ops"].get("reload", 0) + res["ops"].get("sighup", 0), 1)

            # Goal 1: no failed well-formed request (bar those on a backend killed under them).
            self.assertEqual(res["failed"], 0, failures[-6000:])
            # Goal 2: nothing from a colour at weight 0 after the acknowledgement, and nothing
            # routed by a table older than the acknowledged one.
            self.assertEqual(res["old_colour_after_ack"], 0)
            self.assertEqual(res["stale_version_after_ack"], 0)
            self.assertEqual(res["weight0_in_routed_table"], 0)
            self.assertEqual(res["timeline_gaps"], [])
            # bgproxy stayed up all along and stopped cleanly on SIGTERM.
            self.assertTrue(res["proxy_alive"])
            self.assertEqual(res["admin_healthz"], 200)
            self.assertEqual(res["proxy_exit"], 0)
            self.assertFalse(res["sanitizer_report"])
            self.assertEqual(res["crash_markers"], [])
            passed = True
        finally:
            if passed:
                shutil.rmtree(out, ignore_errors=True)
            else:
                print("soak output kept in %s" % out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
