#!/usr/bin/env python3
"""What a dying backend costs, bgproxy vs HAProxy side by side: at 50/50 under wrk (64
keep-alive connections), `kill -9` of one green backend and then of the other; requests/s
served in the second before and the second after each kill, from the backends' own counters
(bg-backend /admin/count, polled every 50 ms), and requests that failed at the client.

KILL_RUNS runs (default 3), the proxies taking turns, fresh backends for each. Prints a table
(median after/before ratio over all kills) and one JSON line.
"""
import http.client
import json
import os
import statistics
import sys
import threading
import time

import peers

RUNS = int(os.environ.get("KILL_RUNS", "3"))
FIRST_KILL = 3.0   # seconds into the load
SECOND_KILL = 6.0
LOAD_SECONDS = 9


class Counter(threading.Thread):
    """Polls every backend's request count until stopped; a dead backend keeps its last."""

    def __init__(self, backends):
        super().__init__(daemon=True)
        self.backends = backends
        self.samples = {b.name: [] for b in backends}  # name -> [(t, count)]
        self.running = True

    def run(self):
        conns = {b.name: http.client.HTTPConnection("127.0.0.1", b.port, timeout=1)
                 for b in self.backends}
        dead = set()
        while self.running:
            for b in self.backends:
                if b.name in dead:
                    continue
                try:
                    conns[b.name].request("GET", "/admin/count")
                    n = int(conns[b.name].getresponse().read())
                    self.samples[b.name].append((time.time(), n))
                except (OSError, http.client.HTTPException, ValueError):
                    dead.add(b.name)
            time.sleep(0.05)

    def total(self, t):
        """Requests all backends had received at time t (interpolated between samples)."""
        out = 0.0
        for series in self.samples.values():
            if not series or t < series[0][0]:
                continue
            before = [s for s in series if s[0] <= t][-1]
            after = [s for s in series if s[0] > t]
            if not after:
                out += before[1]
            else:
                (t0, c0), (t1, c1) = before, after[0]
                out += c0 + (c1 - c0) * (t - t0) / (t1 - t0)
        return out


def one_run(cls):
    backends = peers.pools()
    target = cls(backends, weights=(50, 50))
    time.sleep(2.5)  # health checks settle
    everyone = backends["blue"] + backends["green"]
    counter = Counter(everyone)
    counter.start()
    time.sleep(0.3)
    load = peers.wrk(target.port, LOAD_SECONDS)
    started = time.time()
    kills = []
    for at, victim in ((FIRST_KILL, backends["green"][0]), (SECOND_KILL, backends["green"][1])):
        time.sleep(max(0.0, started + at - time.time()))
        victim.kill()
        kills.append(time.time())
    figures = peers.wrk_result(load)
    counter.running = False
    counter.join()
    out = []
    for k in kills:
        before = counter.total(k) - counter.total(k - 1.0)
        after = counter.total(k + 1.0) - counter.total(k)
        out.append({"before": round(before), "after": round(after),
                    "ratio": round(after / before, 3) if before else None})
    peers.stop_all()
    return out, figures


def main():
    peers.ensure_built()
    results = {"bgproxy": [], "haproxy": []}
    failed = {"bgproxy": 0, "haproxy": 0}
    try:
        for run in range(RUNS):
            for cls in (peers.BgProxy, peers.HAProxy):
                kills, load = one_run(cls)
                results[cls.name] += kills
                failed[cls.name] += load["non_2xx"]
                print("run %d %-8s %s; non-2xx %d, socket errors %s" % (
                    run + 1, cls.name,
                    "  ".join("kill %d: %d -> %d req/s (%.2fx)" % (i + 1, k["before"], k["after"],
                                                                 k["ratio"] or 0)
                              for i, k in enumerate(kills)),
                    load["non_2xx"], load["socket_errors"]), flush=True)
    finally:
        peers.stop_all()
    summary = {}
    for name, kills in results.items():
        ratios = [k["ratio"] for k in kills if k["ratio"] is not None]
        summary[name] = {"median_ratio": statistics.median(ratios) if ratios else None,
                         "min_ratio": min(ratios) if ratios else None,
                         "kills": len(kills), "non_2xx": failed[name]}
    print("\n%-8s %32s %10s %8s" % ("", "second after / second before kill", "worst", "non-2xx"))
    for name, s in summary.items():
        print("%-8s %32s %10s %8d" % (name, "%.2fx (median of %d)" % (s["median_ratio"], s["kills"]),
                                      "%.2fx" % s["min_ratio"], s["non_2xx"]))
    print("KILL_RESULT " + json.dumps({"summary": summary, "kills": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
