#!/usr/bin/env python3
"""Summarizes bench results (lines of NAME REQ/S P50_US P99_US CPU_US_PER_REQ, several rounds per
name) as medians per target, then ratios of the first target of each pair to the second.

  summarize.py RESULTS TARGET... [--vs A:B ...]"""
import statistics
import sys


def main():
    path, args = sys.argv[1], sys.argv[2:]
    pairs = [a.split(":") for a in args if ":" in a and not a.startswith("--")]
    targets = [a for a in args if ":" not in a and not a.startswith("--")]
    runs = {}
    with open(path) as f:
        for line in f:
            name, rps, p50, p99, cpu = line.split()
            runs.setdefault(name, []).append(
                (float(rps), float(p50), float(p99), None if cpu == "-" else float(cpu)))

    def median(name, i):
        values = [r[i] for r in runs.get(name, []) if r[i] is not None]
        return statistics.median(values) if values else None

    width = max([12] + [len(t) for t in targets])
    print("%-*s %6s %12s %10s %10s %14s %6s" % (width, "target", "rounds", "requests/s", "p50 ms", "p99 ms",
                                                "CPU us/request", "CPU %"))
    for t in targets:
        rps, p50, p99, cpu = (median(t, i) for i in range(4))
        if rps is None:
            continue
        print("%-*s %6d %12.0f %10.2f %10.2f %14s %6s" % (
            width, t, len(runs[t]), rps, p50 / 1e3, p99 / 1e3, "-" if cpu is None else "%.1f" % cpu,
            "-" if cpu is None else "%.0f" % (rps * cpu / 1e4)))
    print("(medians over the rounds; CPU is what the proxy process spent per request, and CPU % that\n"
          " times requests/s: below a proxy's share, the load, not the proxy, set its requests/s)")
    for a, b in pairs:
        line = "%s vs %s: requests/s %.2f  p99 %.2f" % (a, b, median(a, 0) / median(b, 0),
                                                     median(a, 2) / median(b, 2))
        if median(a, 3) is not None and median(b, 3) is not None:
            line += "  CPU per request %.2f" % (median(a, 3) / median(b, 3))
        print(line)
    # Round by round, for a feel of the spread.
    for a, b in pairs:
        ratios = ["%.2f" % (x[0] / y[0]) for x, y in zip(runs.get(a, []), runs.get(b, []))]
        print("%s vs %s requests/s by round: %s" % (a, b, " ".join(ratios)))
        # p99 by round too: one noisy round moves a median of three (a neighbour's burst lands
        # on whichever target runs then).
        ratios = ["%.2f" % (x[2] / y[2]) for x, y in zip(runs.get(a, []), runs.get(b, []))]
        print("%s vs %s p99 by round: %s" % (a, b, " ".join(ratios)))


if __name__ == "__main__":
    main()
