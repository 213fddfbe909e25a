#!/usr/bin/env python3
"""Switch latency under load, bgproxy vs HAProxy side by side: how long after a command is sent
the first request reaches the colour it gives the traffic to (command-to-first-new-colour, from
the backends' own clocks: bg-backend /admin/mark and /admin/first), and how long until the
command is acknowledged (command-to-ack). bgproxy: `flip` on its control socket; HAProxy: `set
weight` on all four servers in one line on its stats socket. Both under wrk (64 keep-alive
connections), proxies with one worker/thread on the proxy CPU, health checks on.

Rounds alternate between the proxies (the machine drifts); each round makes SWITCH_FLIPS
switches, alternating colours, SWITCH_SPACING seconds apart. Prints a table and one JSON line.
"""
import json
import os
import statistics
import sys
import time

import peers

ROUNDS = int(os.environ.get("SWITCH_ROUNDS", "2"))
FLIPS = int(os.environ.get("SWITCH_FLIPS", "10"))
SPACING = float(os.environ.get("SWITCH_SPACING", "0.3"))
CONNECTIONS = int(os.environ.get("SWITCH_CONNECTIONS", "64"))


def one_round(target, backends, colour):
    """FLIPS switches under load; returns (samples, wrk figures, the colour serving at the end)."""
    load = peers.wrk(target.port, int(1.5 + FLIPS * (SPACING + 0.1) + 1.5), CONNECTIONS)
    time.sleep(1.0)
    samples = []
    for _ in range(FLIPS):
        gaining = "green" if colour == "blue" else "blue"
        for b in backends[gaining]:
            b.get("/admin/mark")
        sent = time.time_ns()
        _, acked = target.switch_to(gaining)
        time.sleep(SPACING)
        firsts = [int(b.get("/admin/first")) for b in backends[gaining]]
        firsts = [f for f in firsts if f > 0]
        samples.append({"first_ms": (min(firsts) - sent) / 1e6 if firsts else None,
                        "ack_ms": (acked - sent) / 1e6})
        colour = gaining
    return samples, peers.wrk_result(load), colour


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "p90": None, "max": None, "n": 0}
    values.sort()
    return {"median": round(statistics.median(values), 3),
            "p90": round(values[int(0.9 * (len(values) - 1))], 3),
            "max": round(values[-1], 3), "n": len(values)}


def main():
    peers.ensure_built()
    results = {}
    try:
        runs = {}
        for cls in (peers.BgProxy, peers.HAProxy):
            backends = peers.pools()
            runs[cls.name] = {"target": cls(backends), "backends": backends, "colour": "blue",
                              "samples": [], "rps": [], "failed": 0}
        time.sleep(2.5)  # a first round of health checks everywhere
        for r in range(ROUNDS):
            for name, run in runs.items():
                samples, load, run["colour"] = one_round(run["target"], run["backends"],
                                                         run["colour"])
                run["samples"] += samples
                run["rps"].append(load["rps"])
                run["failed"] += load["non_2xx"]
                print("round %d %-8s %s req/s %.0f, non-2xx %d, socket errors %s" % (
                    r + 1, name, " ".join("%.2f/%.2f" % (s["first_ms"] or -1, s["ack_ms"])
                                          for s in samples),
                    load["rps"], load["non_2xx"], load["socket_errors"]), flush=True)
        for name, run in runs.items():
            results[name] = {"first_new_colour_ms": summary([s["first_ms"] for s in run["samples"]]),
                             "ack_ms": summary([s["ack_ms"] for s in run["samples"]]),
                             "rps_median": statistics.median(run["rps"]),
                             "non_2xx": run["failed"]}
    finally:
        peers.stop_all()
    print("\n%-8s %28s %28s %10s %8s" % ("", "command->first new colour ms", "command->ack ms",
                                         "req/s", "non-2xx"))
    print("%-8s %28s %28s" % ("", "median / p90 / max", "median / p90 / max"))
    for name, r in results.items():
        f, a = r["first_new_colour_ms"], r["ack_ms"]
        print("%-8s %28s %28s %10.0f %8d" % (
            name, "%s / %s / %s" % (f["median"], f["p90"], f["max"]),
            "%s / %s / %s" % (a["median"], a["p90"], a["max"]), r["rps_median"], r["non_2xx"]))
    b, h = results["bgproxy"], results["haproxy"]
    if b["first_new_colour_ms"]["median"] and h["first_new_colour_ms"]["median"]:
        print("bgproxy/haproxy: first new colour %.2fx, ack %.2fx, req/s %.2fx" % (
            b["first_new_colour_ms"]["median"] / h["first_new_colour_ms"]["median"],
            b["ack_ms"]["median"] / h["ack_ms"]["median"], b["rps_median"] / h["rps_median"]))
    print("SWITCH_RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
