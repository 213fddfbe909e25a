"""Fleet mode: three bgproxy instances sharing one routing state in a real three-member etcd
cluster on 127.0.0.1, under load. Nothing is mocked: etcd members are started, killed and
stopped by the tests."""
import base64
import os
import http.client
import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

from certificates import TestAuthority
from etcd_cluster import EtcdCluster, etcd_available
from harness import BGCTL, BGPROXY, ProcessTestCase, Proxy, TcpRelay, config, metric

FLEET = """
[fleet]
endpoints = [%s]
name = "%s"
instance = "%s"
lease_ttl = "%s"
apply_timeout = "%s"
request_timeout = "500ms"
retry_max = "500ms"
"""

HEALTH = """
[health]
interval = "200ms"
fast_interval = "100ms"
jitter = "0ms"
timeout = "150ms"
rise = 1
fall = 2
"""


def set_health(backend, status):
    with urllib.request.urlopen("http://%s/admin/health?status=%d" % (backend.address, status),
                                timeout=5) as r:
        r.read()


def colour_of(body):
    return body.split(b"-")[0].decode()


class Load:
    """Keep-alive GETs on each instance from one thread per instance, each request recorded as
    (instance index, time sent, colour answered). Bounded: stops by itself after `limit` s."""

    def __init__(self, proxies, limit=120):
        self.records = []
        self.failures = []
        self.stop_at = time.time() + limit
        self.threads = [threading.Thread(target=self.run, args=(i, p.port), daemon=True)
                        for i, p in enumerate(proxies)]
        for t in self.threads:
            t.start()

    def run(self, index, port):
        conn = None
        while time.time() < self.stop_at:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                sent = time.time()
                conn.request("GET", "/")
                r = conn.getresponse()
                body = r.read()
                if r.status != 200:
                    self.failures.append((index, sent, r.status))
                else:
                    self.records.append((index, sent, colour_of(body)))
            except (OSError, http.client.HTTPException) as e:
                self.failures.append((index, time.time(), repr(e)))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()

    @staticmethod
    def one(port):
        """The colour one fresh connection's GET is answered by, or None."""
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/")
            r = conn.getresponse()
            body = r.read()
            conn.close()
            return colour_of(body) if r.status == 200 else None
        except (OSError, http.client.HTTPException):
            return None

    def stop(self):
        self.stop_at = 0
        for t in self.threads:
            t.join(10)


@unittest.skipUnless(etcd_available(), "etcd-server is not installed (scripts/install-deps.sh)")
class FleetTest(ProcessTestCase):
    def setUp(self):
        super().setUp()
        self.etcd = EtcdCluster(3)
        self.blue = [self.backend("blue-1")]
        self.green = [self.backend("green-1")]
        self.fleet_name = "t%d" % int(time.time() * 1000)

    def tearDown(self):
        super().tearDown()
        self.etcd.close()

    def endpoints(self):
        return ", ".join('"%s"' % m.url for m in self.etcd.members)

    def instance(self, name, state_dir=None, extra="", lease="2s", apply_timeout="5s",
                 endpoints=None, request_timeout="500ms"):
        text = config(self.blue, self.green,
                      extra=FLEET.replace('"500ms"\nretry_max', '"%s"\nretry_max' % request_timeout)
                      % (endpoints or self.endpoints(), self.fleet_name, name, lease,
                         apply_timeout) + extra)
        return self.start(Proxy(text, workers=1, state_dir=state_dir)).follow()

    def fleet(self, n=3, **kw):
        proxies = [self.instance("i%d" % (i + 1), **kw) for i in range(n)]
        self.wait_members(proxies[0], n)
        return proxies

    def wait_members(self, proxy, n, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            members = proxy.status()["fleet"]["members"]
            if len(members) == n:
                return members
            time.sleep(0.05)
        self.fail("the fleet did not reach %d members: %s" % (n, json.dumps(proxy.status()["fleet"])))

    def wait_for(self, what, predicate, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        logs = "".join("--- %s\n%s" % (p.args[-1], "".join(p.lines[-15:]))
                       for p in self.processes if isinstance(p, Proxy))
        self.fail("not reached in %.0f s: %s\n%s" % (timeout, what, logs))

    def command(self, proxy, *args):
        r = proxy.bgctl("--json", *args)
        return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {"stderr": r.stderr}

    def test_flips_on_any_instance_are_acked_only_when_every_instance_serves_them(self):
        proxies = self.fleet(3)
        load = Load(proxies)
        time.sleep(0.3)
        windows = []  # (acked at, next command at, colour)
        for k in range(10):
            started = time.time()
            if windows:
                windows[-1][1] = started
            rc, reply = self.command(proxies[k % 3], "flip")
            acked = time.time()
            self.assertEqual(rc, 0, reply)
            self.assertTrue(reply["fleet"]["complete"], reply)
            self.assertEqual(sorted(reply["fleet"]["applied"]), ["i1", "i2", "i3"])
            colour = "green" if reply["weights"]["green"] == 100 else "blue"
            windows.append([acked, None, colour])
            time.sleep(0.2)
        windows[-1][1] = time.time()
        load.stop()
        self.assertEqual(load.failures, [])
        checked = 0
        for index, sent, colour in load.records:
            for acked, until, want in windows:
                if acked <= sent < until:
                    checked += 1
                    self.assertEqual(colour, want, "instance i%d served %s %.3f s after the ack "
                                     "of a switch to %s" % (index + 1, colour, sent - acked, want))
        self.assertGreater(checked, 100)
        versions = {p.status()["version"] for p in proxies}
        self.assertEqual(len(versions), 1, versions)

    def test_two_conflicting_commands_one_wins_no_update_is_lost(self):
        proxies = self.fleet(3)
        results = [None, None]
        barrier = threading.Barrier(2)

        def run(i, weights):
            barrier.wait()
            results[i] = self.command(proxies[i], "set", weights)

        threads = [threading.Thread(target=run, args=(0, "green=10")),
                   threading.Thread(target=run, args=(1, "green=20"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        ok = [r for rc, r in results if rc == 0]
        refused = [r for rc, r in results if rc != 0]
        for r in refused:
            self.assertIn("another change reached the fleet first", r["error"])
        self.assertEqual(sum(metric(p, "bgproxy_fleet_conflicts_total") for p in proxies[:2]),
                         len(refused))
        self.assertGreaterEqual(len(ok), 1, results)
        # The state every instance serves is the last change that won: none was lost.
        last = max(ok, key=lambda r: r["version"])
        self.wait_for("every instance at version %d" % last["version"],
                      lambda: {p.status()["version"] for p in proxies} == {last["version"]})
        for p in proxies:
            self.assertEqual(p.status()["colours"]["green"]["weight"], last["weights"]["green"])
        if len(ok) == 2:  # not concurrent after all: then one was made on the other
            self.assertEqual(sorted(r["version"] for r in ok), [2, 3])

    def test_a_killed_instance_leaves_and_acks_do_not_wait_for_it(self):
        proxies = self.fleet(3)
        proxies[2].signal(signal.SIGKILL)
        proxies[2].wait(5)
        started = time.time()
        rc, reply = self.command(proxies[0], "flip")
        self.assertEqual(rc, 0, reply)
        self.assertTrue(reply["fleet"]["complete"], reply)
        self.assertEqual(sorted(reply["fleet"]["applied"]), ["i1", "i2"])
        self.assertLess(time.time() - started, 5)  # within the lease, not the apply timeout
        self.assertEqual(sorted(m["instance"] for m in proxies[1].status()["fleet"]["members"]),
                         ["i1", "i2"])

    def test_members_whose_pools_differ_are_warned_of(self):
        i1 = self.instance("i1")
        self.assertNotIn("warning", i1.status()["fleet"])
        self.green.append(self.backend("green-2"))  # i2's green pool has one more backend
        i2 = self.instance("i2")
        self.wait_members(i1, 2)
        self.assertIn("pool definitions differ", i1.status()["fleet"]["warning"])
        self.assertIn("pool definitions differ", i2.bgctl("status").stdout)

    def test_a_member_that_does_not_apply_is_named_after_the_apply_timeout(self):
        # A lease longer than the apply timeout: the stopped member is still a member when the
        # ack gives up on it.
        proxies = self.fleet(3, lease="6s", apply_timeout="1s")
        proxies[2].signal(signal.SIGSTOP)  # a member still, but it applies nothing
        try:
            rc, reply = self.command(proxies[0], "flip")
        finally:
            proxies[2].signal(signal.SIGCONT)
        self.assertEqual(rc, 5, reply)
        self.assertFalse(reply["fleet"]["complete"])
        self.assertIn("i3", " ".join(reply["fleet"]["lagging"]))
        self.assertIn("i3", reply["warning"])

    def test_a_caller_waiting_for_the_fleet_is_answered_when_its_instance_stops(self):
        """A committed change waits for every member to apply it; SIGTERM on the instance it
        came through ended that wait unanswered, and the caller got no reply at all for a
        change the fleet had taken (c24a842; found by review)."""
        proxies = self.fleet(2, lease="10s", apply_timeout="60s")
        proxies[1].signal(signal.SIGSTOP)  # a member still, but it applies nothing
        flip = None
        try:
            flip = subprocess.Popen([BGCTL, "--socket", proxies[0].socket, "--json", "flip"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.wait_for("the flip served by i1",
                          lambda: proxies[0].status()["colours"]["green"]["weight"] == 100)
            proxies[0].signal(signal.SIGTERM)
            out, err = flip.communicate(timeout=20)
        finally:
            proxies[1].signal(signal.SIGCONT)
            if flip is not None and flip.poll() is None:
                flip.kill()
        self.assertEqual(flip.returncode, 5, out + err)
        reply = json.loads(out)
        self.assertFalse(reply["fleet"]["complete"])
        self.assertIn("before this instance stopped", reply["warning"])
        self.assertIn("i2", " ".join(reply["fleet"]["lagging"]))
        self.assertEqual(proxies[0].wait(20), 0)

    def test_etcd_leader_killed_during_flips_loses_no_ack(self):
        proxies = self.fleet(3)
        load = Load(proxies)
        killed = False
        acked = 0
        for k in range(12):
            if k == 4:
                leader = self.etcd.leader()
                self.assertIsNotNone(leader)
                self.etcd.kill(leader)
                killed = True
            rc, reply = self.command(proxies[k % 3], "flip")
            if rc == 0:
                acked += 1
                self.assertTrue(reply["fleet"]["complete"], reply)
                colour = "green" if reply["weights"]["green"] == 100 else "blue"
                for p in proxies:  # every instance serves it once acked
                    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
                    conn.request("GET", "/")
                    self.assertEqual(colour_of(conn.getresponse().read()), colour)
                    conn.close()
            else:  # refused while the cluster elected a leader: said, nothing changed
                self.assertIn("error", reply)
        load.stop()
        self.assertTrue(killed)
        self.assertGreaterEqual(acked, 9)
        self.assertEqual(load.failures, [])
        # No instance is stuck: all on one version, and a flip still goes through everywhere.
        rc, reply = self.command(proxies[1], "flip")
        self.assertEqual(rc, 0, reply)
        self.assertTrue(reply["fleet"]["complete"])
        self.assertEqual({p.status()["version"] for p in proxies}, {reply["version"]})

    def test_etcd_away_instances_serve_refuse_changes_and_converge_when_it_returns(self):
        proxies = self.fleet(3)
        rc, reply = self.command(proxies[0], "flip")
        self.assertEqual(rc, 0, reply)
        version = reply["version"]
        self.etcd.stop_all()
        self.wait_for("every instance sees etcd unreachable",
                      lambda: not any(p.status()["fleet"]["reachable"] for p in proxies))
        self.assertEqual(metric(proxies[0], "bgproxy_fleet_store_reachable",
                                'fleet="%s"' % self.fleet_name), 0)
        load = Load(proxies)
        rc, reply = self.command(proxies[1], "set", "green=50")
        self.assertEqual(rc, 1)
        self.assertIn("unreachable", reply["error"])
        # An instance restarted during the outage serves the same state (its cache).
        state_dir = proxies[2].dir
        proxies[2].owns_dir = False
        proxies[2].stop()
        self.processes.remove(proxies[2])
        proxies[2] = self.instance("i3", state_dir=state_dir)
        time.sleep(0.5)
        load.stop()
        load = Load(proxies)
        time.sleep(0.5)
        load.stop()
        self.assertEqual(load.failures, [])
        self.assertEqual({c for _, _, c in load.records}, {"green"})
        self.assertEqual(proxies[2].status()["version"], version)
        self.etcd.start_all()
        self.wait_for("every instance sees etcd again",
                      lambda: all(p.status()["fleet"]["reachable"] for p in proxies))
        self.wait_members(proxies[0], 3)
        rc, reply = self.command(proxies[2], "set", "green=50")
        self.assertEqual(rc, 0, reply)
        self.assertTrue(reply["fleet"]["complete"], reply)
        self.assertEqual({p.status()["version"] for p in proxies}, {version + 1})
        labels = 'fleet="%s"' % self.fleet_name
        self.assertEqual(metric(proxies[0], "bgproxy_fleet_store_reachable", labels), 1)
        self.assertEqual(metric(proxies[0], "bgproxy_fleet_members", labels), 3)
        self.assertEqual(metric(proxies[0], "bgproxy_fleet_applied_version", labels), version + 1)
        self.assertEqual(metric(proxies[2], "bgproxy_fleet_acks_total", 'result="complete"'), 1)
        self.assertEqual(metric(proxies[0], "bgproxy_fleet_states_applied_total"), 1)  # i3's set

    def fleet_state(self):
        """The fleet's state as etcd holds it, read from a live member."""
        key = base64.b64encode(("/bgproxy/fleets/%s/state" % self.fleet_name).encode()).decode()
        for i in range(len(self.etcd.members)):
            if self.etcd.running(i):
                kvs = self.etcd.call(i, "/v3/kv/range", {"key": key}).get("kvs", [])
                return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None
        return None

    def guard_fleet(self):
        """i1 checks /healthz, which a test can fail; i2 and i3 check "/", which stays up: a
        revert can only be i1's decision, and reach the others through the fleet."""
        i1 = self.instance("i1", extra=HEALTH)
        others = [self.instance(n, extra=HEALTH + 'path = "/"\n') for n in ("i2", "i3")]
        proxies = [i1] + others
        self.wait_members(i1, 3)
        rc, reply = self.command(i1, "set", "green=50")
        self.assertEqual(rc, 0, reply)
        return proxies

    def test_a_guard_revert_on_one_instance_reverts_the_whole_fleet(self):
        proxies = self.guard_fleet()
        set_health(self.green[0], 500)
        self.wait_for("every instance reverted to blue",
                      lambda: all(p.status()["colours"]["green"]["role"] == "failed"
                                  for p in proxies))
        state = self.fleet_state()
        self.assertEqual(state["weights"]["green"], 0)
        self.assertEqual(state["failed"], ["green"])
        self.assertIn("health", state["command"])

    def revert_with_etcd_away(self):
        """etcd stops, then green fails on i1 only: i1 reverts at once without etcd; i2 and i3
        see green healthy and keep serving it."""
        proxies = self.guard_fleet()
        self.etcd.stop_all()
        self.wait_for("every instance sees etcd unreachable",
                      lambda: not any(p.status()["fleet"]["reachable"] for p in proxies))
        set_health(self.green[0], 500)
        self.wait_for("i1 reverted locally",
                      lambda: proxies[0].status()["colours"]["green"]["weight"] == 0, timeout=5)
        return proxies

    def wait_for_the_fleet_to_serve_the_revert(self, proxies):
        """Written to the fleet when etcd is back, and the fleet converges on it, not on green.
        Returns the fleet's state."""
        self.wait_for("every instance serves the revert",
                      lambda: all(p.status()["colours"]["green"]["weight"] == 0 and
                                  p.status()["durable"] for p in proxies), timeout=15)
        state = self.fleet_state()
        self.assertEqual(state["weights"]["green"], 0)
        self.assertEqual(state["failed"], ["green"])
        self.assertEqual({p.status()["version"] for p in proxies}, {state["version"]})
        return state

    def test_a_guard_revert_with_etcd_away_applies_at_once_and_reaches_the_fleet_after(self):
        proxies = self.revert_with_etcd_away()
        self.assertFalse(proxies[0].status()["durable"])
        self.assertEqual(proxies[1].status()["colours"]["green"]["weight"], 50)
        self.etcd.start_all()
        self.wait_for_the_fleet_to_serve_the_revert(proxies)

    def test_a_revert_made_while_etcd_is_away_survives_its_instances_restart(self):
        """An outside probe: i1 reverted green while etcd was away, then restarted (kill -9 or
        SIGTERM) before etcd returned: it served the fleet's last state (green) again, its
        state file holding only the fleet's copy, and when etcd returned the fleet converged on
        green. The way back is kept in the state file, marked unwritten, and written after."""
        proxies = self.revert_with_etcd_away()
        set_health(self.green[0], 200)  # a passing failure: judged again, green would stay
        state_dir = proxies[0].dir
        proxies[0].owns_dir = False
        proxies[0].stop()
        self.processes.remove(proxies[0])
        proxies[0] = self.instance("i1", state_dir=state_dir, extra=HEALTH)
        status = proxies[0].status()
        self.assertEqual(status["colours"]["green"]["weight"], 0, status)
        self.assertFalse(status["durable"])
        self.etcd.start_all()
        self.wait_for_the_fleet_to_serve_the_revert(proxies)

    def test_an_unwritten_revert_the_fleet_moved_on_from_is_given_up_at_a_restart(self):
        """The other side of the test above (a review): i1 down with its revert unwritten, the
        fleet changes meanwhile; restarted with etcd reachable, i1 serves the fleet's state,
        not a revert judged on evidence from before the fleet moved."""
        proxies = self.revert_with_etcd_away()
        set_health(self.green[0], 200)
        state_dir = proxies[0].dir
        proxies[0].owns_dir = False
        proxies[0].stop()
        self.processes.remove(proxies[0])
        self.etcd.start_all()
        self.wait_for("i2 sees etcd again", lambda: proxies[1].status()["fleet"]["reachable"])
        rc, reply = self.command(proxies[1], "set", "green=30")
        self.assertEqual(rc, 0, reply)
        proxies[0] = self.instance("i1", state_dir=state_dir, extra=HEALTH)
        status = proxies[0].status()
        self.assertEqual(status["colours"]["green"]["weight"], 30, status)
        self.assertTrue(status["durable"], status)

    def test_a_local_change_above_an_unwritten_revert_stays_local(self):
        """On 9d32043 a --local change made after a revert that etcd had not taken yet was
        written to the whole fleet with the revert when etcd came back."""
        proxies = self.revert_with_etcd_away()
        rc, reply = self.command(proxies[0], "maint", "green-1", "--local")
        self.assertEqual(rc, 0, reply)
        self.assertTrue(reply["fleet"]["local"])
        self.etcd.start_all()
        # The revert reaches the fleet; the maint stays i1's, and ends as the fleet's state
        # comes back to it.
        state = self.wait_for_the_fleet_to_serve_the_revert(proxies)
        self.assertNotEqual(state["admin"].get("green-1"), "maint", state)
        self.assertNotIn("--local", state["command"])

    def test_local_changes_apply_to_one_instance_and_yield_to_the_fleet_when_it_is_back(self):
        proxies = self.fleet(3)
        rc, reply = self.command(proxies[0], "set", "green=20", "--local")
        self.assertEqual(rc, 1)
        self.assertIn("reachable", reply["error"])
        self.etcd.stop_all()
        self.wait_for("every instance sees etcd unreachable",
                      lambda: not any(p.status()["fleet"]["reachable"] for p in proxies))
        rc, reply = self.command(proxies[0], "set", "green=20", "--local")
        self.assertEqual(rc, 0, reply)
        self.assertTrue(reply["fleet"]["local"])
        self.assertEqual(proxies[0].status()["colours"]["green"]["weight"], 20)
        self.assertEqual(proxies[1].status()["colours"]["green"]["weight"], 0)
        with open(proxies[0].audit_log) as f:
            self.assertIn("--local", f.read())
        self.etcd.start_all()
        self.wait_for("i1 back on the fleet's state",
                      lambda: proxies[0].status()["colours"]["green"]["weight"] == 0 and
                      proxies[0].status()["durable"], timeout=15)
        self.assertEqual(self.fleet_state()["weights"]["green"], 0)

    def test_one_instance_drives_a_ramp_and_another_takes_over_when_it_dies(self):
        proxies = self.fleet(3)
        self.wait_for("a ramp driver", lambda: proxies[0].status()["fleet"]["ramp_driver"])
        driver = proxies[0].status()["fleet"]["ramp_driver"]
        self.assertEqual({p.status()["fleet"]["ramp_driver"] for p in proxies}, {driver})
        index = int(driver[1:]) - 1
        other = proxies[(index + 1) % 3]
        rc, reply = self.command(other, "ramp", "green", "to=100", "step=20", "every=700ms")
        self.assertEqual(rc, 0, reply)
        self.assertEqual(reply["weights"]["green"], 20)  # the first step at once
        time.sleep(1.0)
        proxies[index].signal(signal.SIGKILL)
        proxies[index].wait(5)
        survivors = [p for i, p in enumerate(proxies) if i != index]
        self.wait_for("the ramp done on the survivors",
                      lambda: all(p.status()["colours"]["green"]["weight"] == 100
                                  for p in survivors), timeout=15)
        new_driver = survivors[0].status()["fleet"]["ramp_driver"]
        self.assertNotEqual(new_driver, driver)
        # Each step was taken once: one version per step (20 40 60 80 100 after version 1), and
        # no step lost a race to another instance's.
        for p in survivors:
            status = p.status()
            self.assertEqual(status["version"], 6)
            self.assertEqual(status["fleet"]["conflicts"], 0)
            self.assertIsNone(status["ramp"])

    def test_a_watch_cut_off_resumes_without_losing_a_change_even_past_a_compaction(self):
        relays = [TcpRelay(m.client_port) for m in self.etcd.members]
        for r in relays:
            self.addCleanup(r.close)
        i1 = self.instance("i1")
        i2 = self.instance("i2", lease="10s", apply_timeout="1s",
                           endpoints=", ".join('"http://127.0.0.1:%d"' % r.port for r in relays))
        self.wait_members(i1, 2)

        def cut_flip_restore(compact):
            for r in relays:
                r.cut()
            self.wait_for("i2 cut off", lambda: not i2.status()["fleet"]["reachable"])
            rc, reply = self.command(i1, "flip")
            self.assertEqual(rc, 5, reply)  # i2 is a member still (its lease), and lags
            self.assertEqual(reply["fleet"]["lagging"], ["i2 (at version %d)" % (reply["version"] - 1)])
            if compact:
                rev = self.etcd.call(0, "/v3/kv/range", {"key": "AA=="})["header"]["revision"]
                self.etcd.call(0, "/v3/kv/compaction", {"revision": rev, "physical": True})
            for r in relays:
                r.restore()
            self.wait_for("i2 applied version %d" % reply["version"],
                          lambda: i2.status()["version"] == reply["version"])

        cut_flip_restore(compact=False)  # the watch resumes from the last revision it saw
        cut_flip_restore(compact=True)   # that revision is compacted: read afresh
        self.assertTrue(any("compacted" in line for line in i2.lines), "".join(i2.lines[-20:]))

    def test_with_etcd_hung_a_rollback_applies_at_once_and_a_change_is_not_called_unchanged(self):
        """An outside probe: with etcd hung (SIGSTOP: connections taken, nothing answered) a
        rollback served green until every endpoint's timeout and a read-back had passed (3 s
        here; 12 s at the default request_timeout). And a change refused as "nothing changed"
        applied fleet-wide once etcd answered."""
        proxies = self.fleet(2)
        rc, reply = self.command(proxies[0], "set", "green=50")
        self.assertEqual(rc, 0, reply)
        self.etcd.pause_all()
        self.addCleanup(self.etcd.resume_all)
        outcome = []
        rollback = threading.Thread(
            target=lambda: outcome.append(self.command(proxies[0], "rollback")), daemon=True)
        issued = time.time()
        rollback.start()
        time.sleep(0.3)
        load = Load(proxies[:1])
        time.sleep(0.5)
        load.stop()
        colours = {c for _, _, c in load.records}
        self.assertEqual(colours, {"blue"}, "%.1f s after the rollback" % (time.time() - issued))
        self.assertEqual(load.failures, [])
        rollback.join(30)
        rc, reply = outcome[0]
        self.assertEqual(rc, 5, reply)  # served here, not (yet) in the fleet
        self.assertIn("not written to the fleet", reply["fleet"]["error"])
        # A change that is not a way back waits for etcd: its answer lost, it may still land.
        r = proxies[1].bgctl("set", "green=30")
        self.assertEqual(r.returncode, 4, r.stdout + r.stderr)
        self.assertIn("not confirmed", r.stderr)
        self.assertNotIn("nothing changed", r.stderr)
        self.etcd.resume_all()
        # The rollback reaches the fleet (the set, landed or not, was staged on the state
        # before it and loses to it or is overruled by it: the fleet ends on blue).
        self.wait_for("the fleet serves blue",
                      lambda: all(p.status()["colours"]["blue"]["weight"] == 100 and p.status()["durable"]
                                  for p in proxies), timeout=20)

    def test_a_guard_revert_is_not_given_up_for_a_change_that_reached_the_fleet_first(self):
        """An outside probe: i1's revert, its save hung (etcd unreachable through i1's relay),
        met an operator's `set` committed meanwhile on i2: refused as a conflict and dropped,
        green stayed live. It is staged again on the state that won."""
        relay = TcpRelay(self.etcd.members[0].client_port)
        self.addCleanup(relay.close)
        # (Its save hangs until the relay resumes, not until a timeout ends it.)
        i1 = self.instance("i1", extra=HEALTH, endpoints='"http://127.0.0.1:%d"' % relay.port,
                           request_timeout="4s")
        others = [self.instance(n, extra=HEALTH + 'path = "/"\n') for n in ("i2", "i3")]
        proxies = [i1] + others
        self.wait_members(i1, 3)
        rc, reply = self.command(i1, "set", "green=50")
        self.assertEqual(rc, 0, reply)
        relay.pause()
        set_health(self.green[0], 500)
        self.wait_for("i1 reverted (served at once)",
                      lambda: all(Load.one(i1.port) == "blue" for _ in range(10)), timeout=5)
        rc, reply = self.command(proxies[1], "set", "green=40")
        self.assertEqual(rc, 0, reply)
        # Green mends (as a hang that passed): judged again now, it would keep its traffic.
        set_health(self.green[0], 200)
        time.sleep(0.5)  # i1's checks see it, their news queued behind the save
        relay.resume()
        self.wait_for("the revert reaches the fleet over the set",
                      lambda: all(p.status()["colours"]["green"]["role"] == "failed" and
                                  p.status()["durable"] for p in proxies), timeout=20)
        state = self.fleet_state()
        self.assertEqual(state["weights"]["green"], 0)

    def test_a_watch_through_a_hung_member_is_noticed_and_moved(self):
        """An outside probe: with the member every watch went through hung (SIGSTOP; its
        kernel still answers TCP keepalives) and quorum intact, a flip on one instance was
        never applied by the others, who still said etcd was reachable."""
        proxies = self.fleet(2)
        self.etcd.pause(0)  # the first endpoint: where both watches are
        self.addCleanup(self.etcd.resume, 0)
        rc, reply = self.command(proxies[1], "flip")
        self.assertEqual(rc, 0, reply)
        self.assertTrue(reply["fleet"]["complete"], reply)
        self.assertEqual(proxies[0].status()["colours"]["green"]["weight"], 100)

    def test_after_etcd_is_rebuilt_empty_every_instance_follows_the_new_cluster(self):
        """An outside probe: etcd rebuilt empty (its revisions from 1 again), a flip on i1 was
        acked 'applied by i1, i2, i3' while i2 and i3 still served the old state: their
        watches waited for a revision the new cluster had not reached, their member records
        named old revisions, and a state at a lower revision was not news to them."""
        proxies = self.fleet(3)
        for _ in range(4):  # revisions the new cluster will not have reached
            rc, reply = self.command(proxies[0], "flip")
            self.assertEqual(rc, 0, reply)
        self.etcd.rebuild()
        self.wait_members(proxies[0], 3, timeout=15)
        rc, reply = self.command(proxies[0], "flip")
        self.assertEqual(rc, 0, reply)
        version = reply["version"]
        for p in proxies:
            self.wait_for("version %d on every instance" % version,
                          lambda: p.status()["version"] == version and
                          p.status()["colours"]["green"]["weight"] == 100)

    def test_a_change_whose_answer_etcd_lost_is_read_back_not_reported_unchanged(self):
        relay = TcpRelay(self.etcd.members[0].client_port)
        self.addCleanup(relay.close)
        i1 = self.instance("i1", endpoints='"http://127.0.0.1:%d"' % relay.port)
        i2 = self.instance("i2")
        self.wait_members(i1, 2)
        state_key = base64.b64encode(("/bgproxy/fleets/%s/state" % self.fleet_name).encode())
        # etcd applies the flip, and its answer is lost: read back, the flip stands.
        version = i1.status()["version"]
        relay.lose_answer(b"/v3/kv/txn", state_key)
        rc, reply = self.command(i1, "flip")
        self.assertEqual(relay.answers_lost, 1)
        self.assertEqual(rc, 0, reply)
        self.assertEqual(reply["weights"]["green"], 100, reply)
        self.assertEqual(reply["version"], version + 1, reply)
        self.assertTrue(reply["fleet"]["complete"], reply)
        # The request itself is lost: read back, nothing landed, so it is sent once more.
        relay.lose_answer(b"/v3/kv/txn", state_key, forward=False)
        rc, reply = self.command(i1, "flip")
        self.assertEqual(relay.answers_lost, 2)
        self.assertEqual(rc, 0, reply)
        self.assertEqual(reply["weights"]["blue"], 100, reply)
        self.assertEqual(reply["version"], version + 2, reply)
        for p in (i1, i2):
            self.wait_for("version %d everywhere" % (version + 2),
                          lambda: p.status()["version"] == version + 2)
        history = json.loads(i1.bgctl("--json", "history", "5").stdout)["history"]
        flips = [r["result"] for r in history if r.get("command", "").startswith("flip")]
        self.assertEqual(flips, ["applied", "applied"], history)


@unittest.skipUnless(etcd_available(), "etcd-server is not installed (scripts/install-deps.sh)")
class FleetTlsTest(ProcessTestCase):
    def test_a_fleet_on_etcd_over_tls_with_a_client_certificate(self):
        ca = TestAuthority()
        self.addCleanup(ca.remove)
        # etcd's gateway calls its own gRPC port with the server certificate: it must be
        # good for clientAuth too.
        server = ca.leaf("etcd", "etcd", [], 1, ips=["127.0.0.1"], usage="serverAuth,clientAuth")
        client = ca.leaf("bgproxy", "bgproxy", [], 2, usage="clientAuth")
        etcd = EtcdCluster(1, tls=(server, ca.ca_file, client))
        self.addCleanup(etcd.close)
        blue, green = [self.backend("blue-1")], [self.backend("green-1")]
        tls = '[fleet.tls]\nca_file = "%s"\ncert = "%s"\nkey = "%s"\n' % (ca.ca_file, *client)
        proxies = [self.start(Proxy(config(blue, green, extra=FLEET % (
            '"%s"' % etcd.members[0].url, "tls", name, "2s", "5s") + tls), workers=1)).follow()
            for name in ("i1", "i2")]
        deadline = time.time() + 10
        while len(proxies[0].status()["fleet"]["members"]) < 2 and time.time() < deadline:
            time.sleep(0.05)
        r = proxies[1].bgctl("--json", "flip")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(sorted(json.loads(r.stdout)["fleet"]["applied"]), ["i1", "i2"])
        # Without the client certificate etcd turns it away: with nothing cached, no start.
        empty_dir = tempfile.mkdtemp(prefix="bgproxy-test-")
        self.addCleanup(shutil.rmtree, empty_dir, True)
        with self.assertRaises(RuntimeError) as refused:
            self.start(Proxy(config(blue, green, extra=FLEET % (
                '"%s"' % etcd.members[0].url, "tls", "i3", "2s", "5s") +
                '[fleet.tls]\nca_file = "%s"\n' % ca.ca_file), workers=1,
                state_dir=empty_dir))
        self.assertIn("the fleet store is unreachable", str(refused.exception))

    def test_https_endpoints_without_a_tls_section_speak_tls(self):
        """An outside probe: https:// endpoints without [fleet.tls] were called in plain HTTP
        (a POST in clear text). Now over TLS, verified against the system's CAs."""
        import socket
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        listener.settimeout(10)
        first = []

        def record():
            try:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(5)
                    first.append(conn.recv(16))
            except OSError:
                pass
        threading.Thread(target=record, daemon=True).start()
        empty_dir = tempfile.mkdtemp(prefix="bgproxy-test-")
        self.addCleanup(shutil.rmtree, empty_dir, True)
        blue, green = [self.backend("blue-1")], [self.backend("green-1")]
        url = '"https://127.0.0.1:%d"' % listener.getsockname()[1]
        with self.assertRaises(RuntimeError):
            self.start(Proxy(config(blue, green, extra=FLEET % (url, "tls", "i1", "2s", "5s")),
                             workers=1, state_dir=empty_dir))
        self.assertTrue(first and first[0].startswith(b"\x16\x03"), first)  # a ClientHello
        # And a scheme that is neither is named as such.
        conf = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../conf/bgproxy.toml")
        r = subprocess.run([BGPROXY, "--check", conf, "--etcd", "foo://127.0.0.1:1", "--fleet", "x"],
                           capture_output=True, text=True, timeout=10)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("the scheme must be http:// or https://", r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
