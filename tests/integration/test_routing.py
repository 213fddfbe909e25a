"""Weighted split between the colours and round robin within a colour, through the real proxy."""
import collections
import http.client
import threading
import unittest

from harness import ProcessTestCase, config


def count_backends(port, n, connections=8):
    """Sends n GETs over keep-alive connections; returns a Counter of X-Backend values."""
    counts = collections.Counter()
    lock = threading.Lock()
    per = n // connections

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        local = collections.Counter()
        for _ in range(per):
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            local[r.status if r.status != 200 else r.getheader("X-Backend")] += 1
        conn.close()
        with lock:
            counts.update(local)

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


class RoutingTest(ProcessTestCase):
    def test_90_10_split_over_10000_requests(self):
        blue = [self.backend("blue-1"), self.backend("blue-2")]
        green = [self.backend("green-1"), self.backend("green-2")]
        proxy = self.proxy(config(blue, green, weights=(90, 10)))
        counts = count_backends(proxy.port, 10000)
        total = sum(counts.values())
        green_share = 100.0 * (counts["green-1"] + counts["green-2"]) / total
        print("10,000 requests at 90/10: green %.2f%%, per backend %s" % (green_share, dict(counts)))
        self.assertEqual(total, 10000)
        # Binomial standard deviation is 0.3 points; 4 sigma is 1.2.
        self.assertAlmostEqual(green_share, 10.0, delta=1.2)
        # Round robin within each colour: the two backends of a colour share evenly.
        self.assertAlmostEqual(counts["blue-1"] / (counts["blue-1"] + counts["blue-2"]), 0.5, delta=0.05)

    def test_quick_start_flags_without_a_file(self):
        blue = self.backend("blue-1")
        green = self.backend("green-1")
        proxy = self.proxy(flags=["--listen", "127.0.0.1:0", "--blue", blue.address, "--green",
                                  green.address, "--weights", "blue=0,green=100"])
        counts = count_backends(proxy.port, 200, connections=2)
        self.assertEqual(counts, collections.Counter({"green-1": 200}))


if __name__ == "__main__":
    unittest.main(verbosity=2)
