"""The control plane end to end: the real bgproxy, bg-backends and bgctl."""
import collections
import http.client
import datetime
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import unittest

from harness import BGCTL, ProcessTestCase, backend_admin, config, metric, read_until


class Load:
    """`connections` keep-alive clients sending GETs until stopped; records every request."""

    def __init__(self, port, connections=32):
        self.port = port
        self.records = []  # (start, end, backend or None when it failed)
        self.lock = threading.Lock()
        self.running = True
        self.threads = [threading.Thread(target=self.client) for _ in range(connections)]
        for t in self.threads:
            t.start()

    def client(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        local = []
        deadline = time.time() + 120  # bounded whatever happens
        while self.running and time.time() < deadline:
            start = time.time()
            try:
                conn.request("GET", "/")
                r = conn.getresponse()
                body = r.read()
                backend = r.getheader("X-Backend") if r.status == 200 else None
                if backend is None:
                    print("failed request: %d %r" % (r.status, body[:200]))
            except (OSError, http.client.HTTPException) as e:
                print("failed request: %r" % e)
                backend = None
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            local.append((start, time.time(), backend))
        conn.close()
        with self.lock:
            self.records.extend(local)

    def stop(self):
        self.running = False
        for t in self.threads:
            t.join()
        return sorted(self.records)


class ControlTest(ProcessTestCase):
    def two_by_two(self, weights=(100, 0), extra=""):
        self.blue = [self.backend("blue-1"), self.backend("blue-2")]
        self.green = [self.backend("green-1"), self.backend("green-2")]
        return config(self.blue, self.green, weights=weights, extra=extra)

    def test_20_flips_under_load_fail_nothing_and_switch_at_the_ack(self):
        proxy = self.proxy(self.two_by_two())
        load = Load(proxy.port, connections=32)
        time.sleep(0.5)
        flips = []  # (sent, acknowledged, colour now taking traffic)
        colour = "blue"
        for _ in range(20):
            sent = time.time()
            r = proxy.bgctl("flip")
            acked = time.time()
            self.assertEqual(r.returncode, 0, r.stderr)
            colour = "green" if colour == "blue" else "blue"
            flips.append((sent, acked, colour))
            time.sleep(0.15)
        time.sleep(0.3)
        records = load.stop()
        failed = [r for r in records if r[2] is None]
        wrong = 0
        checked = 0
        for start, end, backend in records:
            if backend is None:
                continue
            # A request that started after flip i was acknowledged and was over before flip i+1
            # was sent can only have been routed by flip i's table.
            for i, (sent, acked, col) in enumerate(flips):
                next_sent = flips[i + 1][0] if i + 1 < len(flips) else float("inf")
                if acked < start and end < next_sent:
                    checked += 1
                    if not backend.startswith(col):
                        wrong += 1
                        print("wrong: flip %d acked %.4f s before the request started; got %s"
                              % (i, start - acked, backend))
                    break
        print("20 flips under 32 connections: %d requests, %d failed, %d checked after an ack, "
              "%d on the old colour" % (len(records), len(failed), checked, wrong))
        self.assertEqual(len(failed), 0)
        self.assertGreater(checked, 200)  # sanitizer builds serve far fewer requests
        self.assertEqual(wrong, 0)

    def test_changes_that_leave_a_ramp_where_it_stands_do_not_hold_back_its_step(self):
        """Found by an outside probe: every applied change re-armed the ramp's timer for a full
        interval, so a reload every 2 s kept a 3 s ramp at its first step for good."""
        proxy = self.proxy(self.two_by_two())
        r = proxy.bgctl("ramp", "green", "to=50", "step=25", "every=2s")
        self.assertEqual(r.returncode, 0, r.stderr)
        started = time.time()
        toggles = 0
        while time.time() - started < 3.5:
            r = proxy.bgctl("drain" if toggles % 2 == 0 else "ready", "blue-2")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            toggles += 1
            if time.time() - started > 3.0:
                break
            time.sleep(0.4)
        green = proxy.status()["colours"]["green"]["weight"]
        self.assertEqual(green, 50, "%d changes in 3 s held the 2 s step back" % toggles)

    def test_a_ramp_that_replaces_a_ramp_in_progress_says_so(self):
        """Found by an outside probe: a second ramp answered as a first one would (the change
        named only the weights' step)."""
        proxy = self.proxy(self.two_by_two())
        r = proxy.bgctl("ramp", "green", "to=100", "step=10", "every=30s")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("replace", r.stdout)
        r = proxy.bgctl("ramp", "green", "to=50", "step=5", "every=10s")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("replaces the ramp in progress", r.stdout)
        self.assertIn("ramp replaced: green to 50% by 5% every 10000ms", r.stdout)
        ramp = proxy.status()["ramp"]
        self.assertEqual((ramp["to"], ramp["step"]), (50, 5), ramp)

    def test_ramp_0_to_100_in_10_steps_matches_each_step(self):
        proxy = self.proxy(self.two_by_two())
        watch = subprocess.Popen([BGCTL, "--socket", proxy.socket, "--json", "watch"],
                                 stdout=subprocess.PIPE, text=True)
        self.assertIn('"watching":true', watch.stdout.readline())
        events = []  # (applied at, green weight)

        def read_events():
            for line in watch.stdout:
                e = json.loads(line)
                # The change's own time, not when the watcher got it: a watcher delayed under
                # load once put 0.7 s of the next step's requests in this one (42% for 40).
                applied = datetime.datetime.strptime(e["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                    tzinfo=datetime.timezone.utc).timestamp()
                events.append((applied, e["weights"]["green"]))

        reader = threading.Thread(target=read_events)
        reader.start()
        load = Load(proxy.port, connections=8)
        time.sleep(0.3)
        r = proxy.bgctl("ramp", "green", "to=100", "step=10", "every=1500ms")
        self.assertEqual(r.returncode, 0, r.stderr)
        deadline = time.time() + 30
        while time.time() < deadline and proxy.status()["ramp"] is not None:
            time.sleep(0.2)
        time.sleep(0.5)
        records = load.stop()
        watch.terminate()
        watch.wait(5)
        reader.join()
        watch.stdout.close()
        self.assertEqual([w for _, w in events], [10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
        for i, (at, target) in enumerate(events[:-1]):
            until = events[i + 1][0]
            window = [b for s, _, b in records if at + 0.02 < s < until - 0.05 and b]
            share = 100.0 * sum(1 for b in window if b.startswith("green")) / len(window)
            print("step %d: target %d%%, measured %.2f%% over %d requests" % (i + 1, target, share, len(window)))
            self.assertGreater(len(window), 100)
            self.assertAlmostEqual(share, target, delta=2.0)
        self.assertFalse([r for r in records if r[2] is None])

    def test_state_survives_kill_9_right_after_the_ack_20_times(self):
        text = self.two_by_two()
        state_dir = os.path.join(self.start_dir(), "")
        proxy = self.proxy(text, state_dir=state_dir)
        rng = random.Random(7)
        for round_ in range(20):
            green = rng.choice([0, 5, 12.5, 33, 50, 75.25, 90, 100])
            # blue-1 and green-1 stay ready: a colour with none would be refused traffic, or
            # reverted after the ack, by the rollout guard (test_rollout_safety covers that).
            backend = rng.choice(["blue-2", "green-2"])
            admin = rng.choice(["drain", "maint", "ready"])
            self.assertEqual(proxy.bgctl("set", "green=%s" % green).returncode, 0)
            self.assertEqual(proxy.bgctl(admin, backend).returncode, 0)
            proxy.signal(signal.SIGKILL)
            proxy.wait(5)
            proxy.stop()
            self.processes.remove(proxy)
            proxy = self.proxy(text, state_dir=state_dir)
            s = proxy.status()
            self.assertEqual(s["colours"]["green"]["weight"], green, "round %d" % round_)
            admins = {b["name"]: b["admin"] for c in ("blue", "green") for b in s["colours"][c]["backends"]}
            self.assertEqual(admins[backend], admin, "round %d" % round_)
        print("20 rounds of kill -9 after acknowledged commands: state kept every time")

    def start_dir(self):
        import tempfile, shutil
        d = tempfile.mkdtemp(prefix="bgproxy-state-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def raw_command(self, proxy, data, timeout=5):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(proxy.socket)
            try:
                s.sendall(data)
            except BrokenPipeError:
                pass  # an over-long line: the proxy replied and closed before we finished
            out = b""
            while not out.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
            return json.loads(out.decode())

    def test_malformed_commands_get_clear_errors_and_change_nothing(self):
        proxy = self.proxy(self.two_by_two())
        before = proxy.status()["version"]
        cases = [
            (b"frobnicate\n", "unknown command"),
            (b"set blue=60 green=30\n", "sum to 100"),
            (b"drain no-such-backend\n", "unknown backend"),
            (b"\x00\xff\x13garbage\n", "non-printable"),
            (b"ramp green to=100\n", "usage"),
            (b"set " + b"g" * (1024 * 1024) + b"\n", "longer than"),
        ]
        for data, expected in cases:
            with self.subTest(data[:30]):
                reply = self.raw_command(proxy, data)
                self.assertFalse(reply["ok"])
                self.assertIn(expected, reply["error"])
                self.assertIn("nothing changed", reply["error"])
        # A command the proxy cannot read is a usage error (2) as one bgctl's parser finds (an
        # outside probe: 1, as a refusal); one it reads and refuses is a refusal (1).
        for args, expected, code in ((["set", "green=abc"], "percentage", 2),
                                     (["ramp", "green", "to=abc"], "to=abc: a percentage", 2),
                                     (["drain", "blue-1", "blue-2"], "At Most 1", 2),
                                     (["ready", "nope"], "unknown backend", 1),
                                     (["history", "--id=no-such-id"], "no record", 1)):
            r = proxy.bgctl(*args)
            self.assertEqual(r.returncode, code, r)
            self.assertIn(expected, r.stderr)
        self.assertEqual(proxy.bgctl("no-such-verb").returncode, 2)
        self.assertEqual(proxy.status()["version"], before)

    @unittest.skipUnless(os.geteuid() == 0, "needs root to run bgctl as another uid (setpriv)")
    def test_a_uid_outside_the_allow_list_may_read_but_not_change(self):
        proxy = self.proxy(self.two_by_two(extra='[control]\nsocket_mode = "0666"\n'))
        os.chmod(proxy.dir, 0o755)
        nobody = 65534
        r = proxy.bgctl("status", user=nobody)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = proxy.bgctl("flip", user=nobody)
        self.assertEqual(r.returncode, 1)
        self.assertIn("needs the operate role", r.stderr)
        self.assertEqual(proxy.status()["colours"]["blue"]["weight"], 100)
        with open(proxy.audit_log) as f:
            last = json.loads(f.read().splitlines()[-1])
        self.assertEqual((last["uid"], last["result"], last["command"]), (nobody, "refused", "flip"))
        # The socket's mode is the first gate: 0660 keeps others out entirely.
        proxy2 = self.proxy(self.two_by_two())
        os.chmod(proxy2.dir, 0o755)
        self.assertEqual(proxy2.bgctl("status", user=nobody).returncode, 3)

    def test_reload_refuses_a_broken_config_and_applies_a_valid_one(self):
        proxy = self.proxy(self.two_by_two())
        before = proxy.status()
        with open(proxy.config_path) as f:
            good = f.read()
        with open(proxy.config_path, "w") as f:
            f.write(good + "\n[limits]\nmax_request_line = 1\n")
        r = proxy.bgctl("reload")
        self.assertEqual(r.returncode, 1)
        self.assertIn("bgproxy.toml:", r.stderr)
        self.assertEqual(proxy.status()["version"], before["version"])
        # A dry run is no reload: not counted (an outside probe: counted as refused when its
        # config was broken, and not at all when it would have applied).
        self.assertEqual(proxy.bgctl("reload", "--dry-run").returncode, 1)
        self.assertEqual(metric(proxy, "bgproxy_config_reloads_total", 'result="refused"'), 1)
        # A file that cannot be read says why.
        os.rename(proxy.config_path, proxy.config_path + ".away")
        r = proxy.bgctl("reload")
        os.rename(proxy.config_path + ".away", proxy.config_path)
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot read config file: No such file or directory", r.stderr)
        # --local is for commands a fleet shares; reload is not one, and its help does not offer it.
        self.assertNotIn("--local", proxy.bgctl("reload", "--help").stdout)
        self.assertIn("--local", proxy.bgctl("flip", "--help").stdout)
        extra = self.backend("green-3")
        with open(proxy.config_path, "w") as f:
            f.write(good.replace('{ name = "green-2"', '{ name = "green-3", address = "%s" }, { name = "green-2"' % extra.address))
        # A dry run of a reload that adds a backend says the config changes (it said "no change").
        r = proxy.bgctl("reload", "--dry-run")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("dry run: config reloaded", r.stdout)
        self.assertEqual(len(proxy.status()["colours"]["green"]["backends"]), 2)
        r = proxy.bgctl("reload")
        self.assertEqual(r.returncode, 0, r.stderr)
        # Said so (an outside probe: "no change", as a reload that read nothing new).
        self.assertIn("config reloaded", r.stdout)
        names = [b["name"] for b in proxy.status()["colours"]["green"]["backends"]]
        self.assertEqual(names, ["green-1", "green-3", "green-2"])
        # SIGHUP does the same.
        with open(proxy.config_path, "w") as f:
            f.write(good)
        proxy.signal(signal.SIGHUP)
        deadline = time.time() + 5
        while time.time() < deadline and len(proxy.status()["colours"]["green"]["backends"]) != 2:
            time.sleep(0.1)
        self.assertEqual(len(proxy.status()["colours"]["green"]["backends"]), 2)

    def test_a_reload_that_turns_checks_off_drops_their_verdicts(self):
        """Found by review: a backend the checks had marked down stayed down for good once a
        reload turned its pool's checks off (nothing would ever clear the verdict)."""
        proxy = self.proxy(self.two_by_two(extra="""
[health]
interval = "100ms"
fast_interval = "100ms"
fall = 1
rise = 1
"""))
        self.blue[0].stop()

        def blue_1_healthy():
            return [b["healthy"] for b in proxy.status()["colours"]["blue"]["backends"]
                    if b["name"] == "blue-1"][0]

        deadline = time.time() + 5
        while time.time() < deadline and blue_1_healthy():
            time.sleep(0.05)
        self.assertFalse(blue_1_healthy())
        with open(proxy.config_path) as f:
            text = f.read()
        with open(proxy.config_path, "w") as f:
            f.write(text + "\n[pools.blue.health]\nenabled = false\n")
        r = proxy.bgctl("reload")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        deadline = time.time() + 2
        while time.time() < deadline and not blue_1_healthy():
            time.sleep(0.05)
        self.assertTrue(blue_1_healthy())  # no checks, no verdict: as at a start without them

    def test_a_reload_that_changes_what_is_read_at_start_is_refused_not_dropped(self):
        """Found by review: a reload replaced [control] (roles!), workers, the admin listener and
        the access log with the running values in silence and answered "ok": an operator
        removed from the admin role stayed admin."""
        proxy = self.proxy(self.two_by_two())
        with open(proxy.config_path) as f:
            good = f.read()
        for extra, named in (("[control.roles]\nadmin = { uids = [12345] }\n", "[control]"),
                             ("[access_log]\ntarget = \"stdout\"\n", "[access_log]"),
                             ("[control]\nidle_timeout = \"5s\"\n", "[control]")):
            with open(proxy.config_path, "w") as f:
                f.write(good + "\n" + extra)
            r = proxy.bgctl("reload")
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn(named, r.stderr)
            self.assertIn("need a restart", r.stderr)
        # A listener changed is named by its place (two swapped were refused naming none: an
        # outside probe).
        with open(proxy.config_path, "w") as f:
            f.write(good.replace('address = "127.0.0.1:0"', 'address = "127.0.0.1:1"', 1))
        r = proxy.bgctl("reload")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("[[listener]] 1, 127.0.0.1:1, was 127.0.0.1:0", r.stderr)
        with open(proxy.config_path, "w") as f:
            f.write(good)
        self.assertEqual(proxy.bgctl("reload").returncode, 0)

    @staticmethod
    def backends_answering(proxy, requests):
        """How many of `requests` GETs, each on a new connection, each backend answered."""
        seen = collections.Counter()
        for _ in range(requests):
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            seen[r.getheader("X-Backend")] += 1
            conn.close()
        return seen

    def test_a_reload_that_moves_a_backend_leaves_no_pooled_connection_to_its_old_address(self):
        # No health checks: nothing holds the moved backend out until a check passes, so only
        # the pool's own sweep keeps requests off the old address.
        proxy = self.proxy(self.two_by_two(extra="[health]\nenabled = false\n"))
        for _ in range(40):  # both workers pool connections to blue-1 and blue-2
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
            conn.request("GET", "/")
            self.assertEqual(conn.getresponse().status, 200)
            conn.close()
        moved = self.backend("blue-1-moved")
        with open(proxy.config_path) as f:
            text = f.read()
        with open(proxy.config_path, "w") as f:
            f.write(text.replace(self.blue[0].address, moved.address))
        r = proxy.bgctl("reload")
        self.assertEqual(r.returncode, 0, r.stderr)
        seen = self.backends_answering(proxy, 40)
        self.assertNotIn("blue-1", seen)  # the old address, still up, gets nothing
        self.assertIn("blue-1-moved", seen)

    def test_connections_in_flight_across_a_move_are_not_pooled_for_the_new_address(self):
        """Requests to blue-1 in flight when a reload moves it: their connections, done, are
        not reused for the moved backend (on c80a3f8 they went back to the pool by the
        backend's id, and later requests kept reaching the old address)."""
        proxy = self.proxy(self.two_by_two(extra="[health]\nenabled = false\n"))
        answers = []

        def slow():
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            conn.request("GET", "/?delay=1500")
            r = conn.getresponse()
            r.read()
            answers.append(r.getheader("X-Backend"))
            conn.close()

        threads = [threading.Thread(target=slow) for _ in range(12)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # all sent, none answered
        moved = self.backend("blue-1-moved")
        with open(proxy.config_path) as f:
            text = f.read()
        with open(proxy.config_path, "w") as f:
            f.write(text.replace(self.blue[0].address, moved.address))
        self.assertEqual(proxy.bgctl("reload").returncode, 0)
        for t in threads:
            t.join(10)
        self.assertIn("blue-1", answers)  # some were in flight to the old address
        seen = self.backends_answering(proxy, 60)
        print("in flight across the move: %s; after it: %s" % (collections.Counter(answers), seen))
        self.assertNotIn("blue-1", seen)
        self.assertIn("blue-1-moved", seen)


def hang(backend, on=True):
    """Makes a bg-backend read requests and never answer (its /healthz still does)."""
    backend_admin(backend, "/admin/hang?hang=%d" % (1 if on else 0))


class ControlNeverStuckTest(ProcessTestCase):
    """A hanging gate holds only its own command; clients that leave cancel what they asked;
    connections are limited and idle ones closed."""

    def test_a_reload_on_a_stalled_config_file_holds_only_itself(self):
        """On 6f6830d a reload read its files on the control thread: a config file that did not
        answer (a FIFO no one writes, as on a hung mount) stopped every command, status and
        rollback included."""
        proxy = self.proxy(config([self.backend("blue-1")], [self.backend("green-1")],
                                  extra='[control]\ndisk_timeout = "1s"\n'))
        real = proxy.config_path + ".real"
        os.rename(proxy.config_path, real)
        os.mkfifo(proxy.config_path)
        reload = subprocess.Popen([BGCTL, "--socket", proxy.socket, "reload"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(reload.kill)
        time.sleep(0.2)
        started = time.time()
        r = proxy.bgctl("set", "green=10", timeout=10)
        self.assertEqual(r.returncode, 0, r)  # the line moved on
        self.assertLess(time.time() - started, 0.9)
        self.assertEqual(proxy.status()["colours"]["green"]["weight"], 10)
        _, err = reload.communicate(timeout=10)
        self.assertEqual(reload.returncode, 1, err)
        self.assertIn("not read within control.disk_timeout", err)
        r = proxy.bgctl("reload", timeout=10)  # refused at once while the read is stuck
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("has not returned", r.stderr)
        # The file answers at last: the stuck read ends, and reloads work again.
        with open(proxy.config_path, "w") as fifo, open(real) as text:
            fifo.write(text.read())
        os.unlink(proxy.config_path)
        os.rename(real, proxy.config_path)
        deadline = time.time() + 5
        while True:
            r = proxy.bgctl("reload", timeout=10)
            if r.returncode == 0 or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(proxy.status()["colours"]["green"]["weight"], 10)

    def test_reloads_whose_reads_return_out_of_order_leave_the_newest_file(self):
        """A read held up (here a FIFO that answers late) returns after a later reload's: on
        66a5a0a the older file was applied last and won."""
        blue, green, green2 = (self.backend(n) for n in ("blue-1", "green-1", "green-2"))
        proxy = self.proxy(config([blue], [green], extra='[control]\ndisk_timeout = "5s"\n'))
        old_text = open(proxy.config_path).read()
        new_text = config([blue], [green, green2], extra='[control]\ndisk_timeout = "5s"\n')
        os.unlink(proxy.config_path)
        os.mkfifo(proxy.config_path)
        first = subprocess.Popen([BGCTL, "--socket", proxy.socket, "reload"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(first.kill)
        time.sleep(0.3)
        # The first read is in the FIFO now: it gets the old text, but no end of file yet.
        writer = os.open(proxy.config_path, os.O_WRONLY | os.O_NONBLOCK)
        os.write(writer, old_text.encode())
        os.unlink(proxy.config_path)
        with open(proxy.config_path, "w") as f:
            f.write(new_text)
        r = proxy.bgctl("reload", timeout=10)
        self.assertEqual(r.returncode, 0, r)
        os.close(writer)  # the first read returns now, with the older file
        _, err = first.communicate(timeout=10)
        self.assertEqual(first.returncode, 1, err)
        self.assertIn("a later reload", err)
        names = [b["name"] for b in proxy.status()["colours"]["green"]["backends"]]
        self.assertEqual(names, ["green-1", "green-2"])

    def test_a_client_that_leaves_during_a_reload_read_cancels_it(self):
        """Cancelled, and its read still known stuck after disk_timeout (a caller that gives up
        and tries again does not start one stuck thread after another)."""
        proxy = self.proxy(config([self.backend("blue-1")], [self.backend("green-1")],
                                  extra='[control]\ndisk_timeout = "1s"\n'))
        started = time.time()
        os.rename(proxy.config_path, proxy.config_path + ".real")
        os.mkfifo(proxy.config_path)
        s = socket.socket(socket.AF_UNIX)
        s.connect(proxy.socket)
        s.sendall(b"reload --id=leaving\n")
        time.sleep(0.3)
        s.close()
        deadline = time.time() + 5
        record = None
        while time.time() < deadline and record is None:
            r = proxy.bgctl("--json", "history", "--id=leaving")
            records = json.loads(r.stdout)["history"] if r.returncode == 0 else []
            record = records[0] if records else None
            time.sleep(0.05)
        self.assertIsNotNone(record)
        self.assertEqual(record["result"], "cancelled")
        time.sleep(max(0, started + 1.5 - time.time()))
        r = proxy.bgctl("reload", timeout=10)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("has not returned", r.stderr)

    HANGING_GATE = """
[[gate]]
name = "root"
path = "/"
expect = 200
timeout = "30s"
"""

    def gated_proxy(self, extra=""):
        self.blue = self.backend("blue-1")
        self.green = self.backend("green-1")
        proxy = self.proxy(config([self.blue], [self.green], extra=self.HANGING_GATE + extra))
        hang(self.green)
        return proxy

    def test_rollback_goes_through_a_hanging_gate_and_cancels_it(self):
        proxy = self.gated_proxy()
        flip = subprocess.Popen([BGCTL, "--socket", proxy.socket, "flip"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            self.wait_on_gate(proxy)
            started = time.time()
            r = proxy.bgctl("rollback")
            took = time.time() - started
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertLess(took, 2.0)
            out, err = flip.communicate(timeout=10)
        finally:
            if flip.poll() is None:
                flip.kill()
        print("rollback with a gate hanging: acked in %.3f s; the flip: %s" % (took, err.strip()))
        self.assertEqual(flip.returncode, 1, out + err)
        self.assertIn("cancelled", err)
        status = proxy.status()
        self.assertEqual(status["colours"]["blue"]["weight"], 100)
        self.assertEqual(status["waiting"], {"queued": 0, "on_gate": 0})
        flips = [json.loads(l) for l in open(proxy.audit_log) if '"command":"flip"' in l]
        self.assertEqual([f["result"] for f in flips], ["cancelled"])

    def slow_gate_proxy(self, delay_ms):
        """A proxy whose gate's one check takes delay_ms to pass."""
        return self.proxy(config([self.backend("blue-1")], [self.backend("green-1")], extra="""
[[gate]]
name = "slow root"
path = "/?delay=%d"
expect = 200
timeout = "10s"
""" % delay_ms))

    def test_a_client_that_half_closes_after_its_command_still_gets_its_answer(self):
        """`echo flip | socat - UNIX-CONNECT:...` shuts its writing side and waits for the
        reply, as scripts do with HAProxy's runtime API: no hang-up (found by review: the
        end of its input cancelled the gated flip)."""
        proxy = self.slow_gate_proxy(1500)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(s.close)
        s.connect(proxy.socket)
        s.sendall(b"flip\n")
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        reply = read_until(s, lambda data: data.endswith(b"\n"))
        self.assertTrue(json.loads(reply)["ok"], reply)
        self.assertEqual(proxy.status()["colours"]["green"]["weight"], 100)

    def test_a_command_cancelled_on_its_gate_does_not_answer_a_new_one_with_its_id(self):
        """Ids are the client's: `flip --id=x` left on its gate (its client hung up) and sent
        again was answered by the first gate run's verdict, before its own checks had run
        (c24a842; found by review)."""
        proxy = self.slow_gate_proxy(2000)
        first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        first.connect(proxy.socket)
        first.sendall(b"flip --id=same\n")
        self.wait_on_gate(proxy)
        gated = time.time()
        first.close()  # hangs up: the command is cancelled, its gate run goes on
        deadline = time.time() + 5
        while proxy.status()["waiting"]["on_gate"] != 0 and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(max(0, gated + 1.0 - time.time()))  # the first run ends a second from now
        second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(second.close)
        second.connect(proxy.socket)
        sent = time.time()
        second.sendall(b"flip --id=same\n")
        second.settimeout(10)
        reply = read_until(second, lambda data: data.endswith(b"\n"))
        took = time.time() - sent
        print("the second flip --id=same answered after %.2f s (its gate takes 2 s)" % took)
        self.assertTrue(json.loads(reply)["ok"], reply)
        self.assertGreater(took, 1.8)

    def test_a_client_that_gives_up_cancels_its_command_and_history_says_so(self):
        proxy = self.gated_proxy()
        r = proxy.bgctl("--timeout", "1", "flip")
        self.assertEqual(r.returncode, 4, r.stdout + r.stderr)
        match = re.search(r"command ([0-9a-f]+)", r.stderr)
        self.assertIsNotNone(match, r.stderr)
        command_id = match.group(1)
        deadline = time.time() + 5
        records = []
        while time.time() < deadline:
            h = proxy.bgctl("--json", "history", "--id", command_id)
            records = json.loads(h.stdout).get("history", [])
            if records:
                break
            time.sleep(0.05)
        self.assertEqual([x["result"] for x in records], ["cancelled"], records)
        self.assertEqual(records[0]["id"], command_id)
        # Never applied later: the gate's answer, when it comes, finds nothing to apply.
        hang(self.green, False)
        time.sleep(0.5)
        self.assertEqual(proxy.status()["colours"]["green"]["weight"], 0)

    def small_house(self, extra=""):
        """A proxy whose control socket takes three connections, one of them watching."""
        blue = self.backend("blue-1")
        green = self.backend("green-1")
        return self.proxy(config([blue], [green], extra="""
[control]
max_connections = 3
max_watchers = 1
""" + extra))

    def test_clients_that_never_read_their_replies_do_not_lock_out_a_rollback(self):
        """Found by review: a connection whose reply could not be written (a pipelined flood of
        status lines, never read) held its slot as busy for good; three of them turned `bgctl
        rollback` away ("too many control connections")."""
        proxy = self.small_house()
        for _ in range(3):
            hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.addCleanup(hog.close)
            hog.connect(proxy.socket)
            hog.setblocking(False)
            flood = b"status\n" * 20000
            try:
                while flood:
                    flood = flood[hog.send(flood):]
            except BlockingIOError:
                pass  # the proxy stopped reading: its replies fill the socket
        time.sleep(0.5)
        started = time.time()
        r = proxy.bgctl("set", "green=10")
        took = time.time() - started
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertLess(took, 5.0)
        self.assertEqual(proxy.bgctl("rollback").returncode, 0)
        self.assertEqual(proxy.status()["colours"]["blue"]["weight"], 100)

    def test_a_full_house_makes_room_for_a_command_and_watchers_are_bounded(self):
        """Failed on c1c3662: idle or watching connections up to max_connections turned
        `bgctl rollback` away ("too many control connections"), for as long as they stayed."""
        proxy = self.small_house('idle_timeout = "1s"\n')
        watch = subprocess.Popen([BGCTL, "--socket", proxy.socket, "watch"],
                                 stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.3)
            idle = []
            for _ in range(2):
                s = socket.socket(socket.AF_UNIX)
                s.connect(proxy.socket)
                idle.append(s)
                time.sleep(0.05)
            # A second watch stream is refused; its connection stays and may send a command.
            s = idle[1]
            s.settimeout(5)
            s.sendall(b"watch\n")
            self.assertIn(b"too many watch streams (limit 1", s.recv(1000))
            time.sleep(0.1)
            # The house is full (a watcher, two idle): the connection idle longest makes room.
            r = proxy.bgctl("rollback")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            idle[0].settimeout(5)
            self.assertEqual(idle[0].recv(100), b"")
            # Idle connections are closed after idle_timeout; the watcher stays.
            started = time.time()
            self.assertEqual(idle[1].recv(100), b"")
            closed_after = time.time() - started
            print("idle control connection closed after %.2f s" % closed_after)
            self.assertLess(closed_after, 3)
            time.sleep(1.5)
            self.assertEqual(proxy.bgctl("flip").returncode, 0)
            line = ""
            deadline = time.time() + 5
            while time.time() < deadline and "flip" not in line:
                line = watch.stdout.readline()
            self.assertIn("flip", line)
        finally:
            watch.kill()
            watch.wait()


class AuditLogTest(ProcessTestCase):
    def test_the_audit_log_is_bounded_rotated_reopened_and_always_readable(self):
        proxy = self.proxy(config([self.backend("blue-1")], [self.backend("green-1")], extra="""
[control]
audit_log_max_size = 8192
audit_log_keep = 1
audit_command_max = 200
"""))
        # Garbage from a client: refused and audited, never breaking history.
        s = socket.socket(socket.AF_UNIX)
        s.connect(proxy.socket)
        f = s.makefile("rb")
        for i in range(150):
            s.sendall(b"flip \xff\xfe" + b"A" * 3000 + b"\n")
            self.assertIn(b"non-printable", f.readline())
        s.close()
        sizes = {p: os.path.getsize(p) for p in (proxy.audit_log, proxy.audit_log + ".1")}
        print("audit files after 150 garbage lines of 3 KB: %s" % sizes)
        self.assertFalse(os.path.exists(proxy.audit_log + ".2"))
        for size in sizes.values():
            self.assertLessEqual(size, 8192)
        for path in sizes:
            with open(path, "rb") as log:
                for line in log:
                    record = json.loads(line.decode("utf-8"))  # valid UTF-8, valid JSON
                    # 200 bytes kept, "...", and each escaped byte shown as 4 characters.
                    self.assertLessEqual(len(record["command"]), 4 * 200 + 3)
        r = proxy.bgctl("--json", "history", "3")
        self.assertEqual(r.returncode, 0, r.stderr)
        last = json.loads(r.stdout)["history"][-1]
        self.assertTrue(last["command"].startswith("flip \\xff\\xfeAAA"), last["command"])
        self.assertEqual(last["command_length"], 3007)
        # SIGUSR1: logrotate moved the file; the next record starts a new one at the path.
        os.rename(proxy.audit_log, proxy.audit_log + ".moved")
        proxy.signal(signal.SIGUSR1)
        deadline = time.time() + 5
        while time.time() < deadline and not os.path.exists(proxy.audit_log):
            time.sleep(0.05)
        self.assertEqual(proxy.bgctl("set", "green=10").returncode, 0)
        with open(proxy.audit_log) as log:
            self.assertIn("set green=10", log.read())

    def test_a_stalled_audit_log_holds_no_command(self):
        """On e35ef7f the audit log was written on the control thread: once its file stalled
        (here a FIFO no one reads, reopened at SIGUSR1, as on a hung mount) no command, not
        even status or a rollback, was answered again."""
        proxy = self.proxy(config([self.backend("blue-1")], [self.backend("green-1")]))
        self.assertEqual(proxy.bgctl("set", "green=10").returncode, 0)
        os.rename(proxy.audit_log, proxy.audit_log + ".moved")
        os.mkfifo(proxy.audit_log)
        proxy.signal(signal.SIGUSR1)
        time.sleep(0.3)
        r = proxy.bgctl("rollback", timeout=10)
        self.assertEqual(r.returncode, 0, r)
        self.assertIn("audit record is not written", r.stderr)
        self.assertEqual(proxy.status()["colours"]["blue"]["weight"], 100)
        started = time.time()
        r = proxy.bgctl("set", "green=20", timeout=10)
        self.assertEqual(r.returncode, 0, r)
        self.assertLess(time.time() - started, 1)  # no wait while the writer is stuck
        # The disk comes back: the records queued meanwhile are written, in order.
        reader = os.open(proxy.audit_log, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        text = b""
        deadline = time.time() + 5
        while time.time() < deadline and b"set green=20" not in text:
            try:
                text += os.read(reader, 65536)
            except BlockingIOError:
                time.sleep(0.05)
        lines = [json.loads(line) for line in text.decode().splitlines()]
        self.assertEqual([l["command"] for l in lines], ["rollback", "set green=20"])
        r = proxy.bgctl("set", "green=30", timeout=10)  # caught up: written before the reply
        self.assertEqual(r.returncode, 0, r)
        self.assertNotIn("audit", r.stderr)

    def test_sigterm_ends_with_the_audit_log_stalled(self):
        """The writer stuck in a stalled audit file is left behind at exit, said (exit 1)."""
        proxy = self.proxy(config([self.backend("blue-1")], [self.backend("green-1")]))
        os.rename(proxy.audit_log, proxy.audit_log + ".moved")
        os.mkfifo(proxy.audit_log)
        proxy.signal(signal.SIGUSR1)
        time.sleep(0.3)
        r = proxy.bgctl("set", "green=10", timeout=10)
        self.assertEqual(r.returncode, 0, r)
        proxy.signal(signal.SIGTERM)
        self.assertEqual(proxy.wait(20), 1)
        self.assertIn("audit records are not written", proxy.proc.stdout.read())


class BgctlTest(ProcessTestCase):
    def test_unknown_commands_and_control_characters_are_usage_errors(self):
        proxy = self.proxy(config([self.backend("blue-1")], [self.backend("green-1")]))
        r = proxy.bgctl("bogus")
        self.assertEqual(r.returncode, 2, r)
        self.assertIn("unknown command 'bogus'", r.stderr)
        self.assertIn("status", r.stderr)  # the list of commands
        # A newline would have sent a second command ("flip") after the first.
        r = proxy.bgctl("set", "green=10\nflip")
        self.assertEqual(r.returncode, 2, r)
        self.assertIn("control character", r.stderr)
        self.assertEqual(proxy.status()["colours"]["blue"]["weight"], 100)
        self.assertEqual(proxy.status()["version"], 1)

    def test_watch_prints_every_event_kind(self):
        """Failed on e53b836: the first health event ended watch with an exception."""
        blue = self.backend("blue-1")
        green = self.backend("green-1")
        proxy = self.proxy(config([blue], [green], extra="""
[health]
interval = "200ms"
fast_interval = "100ms"
fall = 1
rise = 1
"""))
        watch = subprocess.Popen([BGCTL, "--socket", proxy.socket, "watch"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        self.addCleanup(watch.kill)
        time.sleep(0.5)
        self.assertEqual(proxy.bgctl("set", "blue=90").returncode, 0)  # a switch
        green.stop()  # a health event, and the guard's revert
        time.sleep(1.5)
        ended = watch.poll()
        watch.kill()
        out = watch.stdout.read()
        self.assertIsNone(ended, "watch ended: %s" % watch.stderr.read())
        self.assertIn("health", out)
        self.assertIn("green-1", out)
        self.assertIn("set", out)
        self.assertIn("auto_revert", out)
        # The proxy going away ends a watch as "proxy unreachable" (3), not as success (an
        # outside probe: exit 0, nothing said).
        watch = subprocess.Popen([BGCTL, "--socket", proxy.socket, "watch"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        self.addCleanup(watch.kill)
        time.sleep(0.3)
        proxy.stop()
        self.assertEqual(watch.wait(10), 3)
        self.assertIn("closed the watch", watch.stderr.read())


class ControlSocketTest(ProcessTestCase):
    def test_a_live_socket_is_not_taken_over_and_a_stopping_proxy_leaves_a_newer_ones(self):
        blue, green = self.backend("blue-1"), self.backend("green-1")
        first = self.proxy(config([blue], [green]))
        # A second proxy on the same control socket is refused while the first answers on it.
        with self.assertRaises(RuntimeError) as refused:
            self.proxy(config([blue], [green]), flags=["--control-socket", first.socket])
        self.assertIn("another process is listening", str(refused.exception))
        self.assertEqual(first.bgctl("status").returncode, 0)
        # The first one's file removed (by hand, say), a newer proxy makes its own there; the
        # first stopping must not remove the newer one's.
        os.unlink(first.socket)
        second = self.proxy(config([blue], [green]), flags=["--control-socket", first.socket])
        second.socket = first.socket  # for its bgctl calls
        self.assertEqual(oct(os.stat(first.socket).st_mode & 0o777), "0o660")
        first.signal(signal.SIGTERM)
        first.wait(30)
        self.assertTrue(os.path.exists(first.socket))
        self.assertEqual(second.bgctl("status").returncode, 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
