#!/usr/bin/env python3
"""Opens N keep-alive connections to a proxy, sends one GET on each, reads its response, and
leaves them idle; prints the proxy's RSS growth per connection, then closes them.

    idle_clients.py PORT PID N   -> prints "KIB_PER_CONNECTION RSS_BEFORE_KIB RSS_AFTER_KIB"
"""
import resource
import selectors
import socket
import sys
import time


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    time.sleep(0.5)
    before = rss_kib(pid)
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    sockets = []
    sel = selectors.DefaultSelector()
    deadline = time.time() + 120
    waiting = 0
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(request)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        sockets.append(s)
        waiting += 1
        # Read the responses as they come, a batch at a time, so the backlog stays small.
        while waiting > 200 or (i == n - 1 and waiting > 0):
            if time.time() > deadline:
                sys.exit("responses did not all arrive within 120 s")
            for key, _ in sel.select(timeout=1):
                data = key.fileobj.recv(65536)
                if not data:
                    sys.exit("the proxy closed a connection")
                if b"\r\n\r\n" in data:
                    sel.unregister(key.fileobj)
                    waiting -= 1
    time.sleep(2)  # let the proxy settle (idle timers, released buffers)
    after = rss_kib(pid)
    print("%.2f %d %d" % ((after - before) / n, before, after))
    for s in sockets:
        s.close()


if __name__ == "__main__":
    main()
