#!/usr/bin/env python3
"""Fleet mode's costs, measured: (1) how long a flip takes to be acknowledged by a fleet of
three bgproxy instances on a real three-member etcd cluster (the ack comes when every member
serves the new state), over FLEET_FLIPS flips issued on the instances in turn, against the same
flips on one bgproxy alone (its ack: live and fsynced to its state file); (2) requests/s of an
instance in a fleet against one alone, under wrk (64 keep-alive connections), in interleaved
rounds. Both proxies: one worker on the proxy CPU, two pools of two backends, health checks on.
Prints a table and one JSON line.
"""
import json
import os
import statistics
import sys
import time

import peers

sys.path.insert(0, os.path.join(peers.ROOT, "tests/integration"))
from etcd_cluster import EtcdCluster  # noqa: E402  (the tests' real etcd cluster)

FLIPS = int(os.environ.get("FLEET_FLIPS", "100"))
ROUNDS = int(os.environ.get("FLEET_ROUNDS", "3"))
SECONDS = int(os.environ.get("FLEET_SECONDS", "5"))


def percentiles(values):
    values = sorted(values)
    pick = lambda q: values[int(q * (len(values) - 1))]
    return {"median": round(statistics.median(values), 2), "p99": round(pick(0.99), 2),
            "max": round(values[-1], 2), "n": len(values)}


def flips(targets):
    """FLIPS flips, on the targets in turn; the ack latency of each, in ms."""
    samples = []
    for k in range(FLIPS):
        target = targets[k % len(targets)]
        sent = time.time_ns()
        reply, acked = peers.unix_exchange(target.socket, "flip")
        answer = json.loads(reply)
        if not answer.get("ok") or not answer.get("fleet", {"complete": True})["complete"]:
            raise RuntimeError("flip not acknowledged by the whole fleet: " + reply)
        samples.append((acked - sent) / 1e6)
        time.sleep(0.02)
    return samples


def main():
    peers.ensure_built()
    etcd = EtcdCluster(3)
    try:
        backends = peers.pools()
        fleet_section = '[fleet]\nendpoints = [%s]\nname = "bench"\ninstance = "i%%d"\n' % (
            ", ".join('"%s"' % m.url for m in etcd.members))
        fleet = [peers.BgProxy(backends, extra=fleet_section % (i + 1)) for i in range(3)]
        alone = peers.BgProxy(backends)
        time.sleep(1.0)  # members registered
        fleet_ms = flips(fleet)
        alone_ms = flips([alone])
        rps = {"fleet": [], "alone": []}
        for _ in range(ROUNDS):
            for name, target in (("fleet", fleet[0]), ("alone", alone)):
                result = peers.wrk_result(peers.wrk(target.port, SECONDS))
                if result["non_2xx"] or result["socket_errors"] != "none":
                    raise RuntimeError("%s: errors under load: %s" % (name, result))
                rps[name].append(result["rps"])
    finally:
        peers.stop_all()
        etcd.close()
    out = {"flip_ack_ms": {"fleet_of_3": percentiles(fleet_ms), "alone": percentiles(alone_ms)},
           "rps": {k: [round(v) for v in vs] for k, vs in rps.items()},
           "rps_ratio_fleet_over_alone": round(statistics.median(
               [f / a for f, a in zip(rps["fleet"], rps["alone"])]), 3)}
    print("flip -> ack (ms)      median     p99     max   n")
    for name, s in out["flip_ack_ms"].items():
        print("%-18s %9.2f %7.2f %7.2f %3d" % (name, s["median"], s["p99"], s["max"], s["n"]))
    print("req/s per round: fleet %s, alone %s; fleet/alone (median of rounds) %.3f" % (
        out["rps"]["fleet"], out["rps"]["alone"], out["rps_ratio_fleet_over_alone"]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
