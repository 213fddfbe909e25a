#!/usr/bin/env python3
"""Makes a proxy open N backend connections at once, then leaves them to its pool: N client
connections each send one request the backend delays (bg-backend's ?delay=MS), all in flight
together, with Connection: close, so every client connection is gone once answered. Two
seconds later, prints the proxy's RSS growth and how many sockets it still holds (its pooled
backend connections, plus its listeners and health checks).

    idle_upstream.py PORT PID N
      -> prints "RSS_GROWTH_KIB SOCKETS_BEFORE SOCKETS_AFTER"
"""
import os
import resource
import selectors
import socket
import sys
import time

from idle_clients import rss_kib


def sockets_of(pid):
    count = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            count += os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return count


def main():
    port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    time.sleep(0.5)
    before, sockets_before = rss_kib(pid), sockets_of(pid)
    request = b"GET /?delay=1500 HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    sel = selectors.DefaultSelector()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(request)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, bytearray())
    deadline = time.time() + 60
    waiting = n
    while waiting > 0:
        if time.time() > deadline:
            sys.exit("responses did not all arrive within 60 s")
        for key, _ in sel.select(timeout=1):
            data = key.fileobj.recv(65536)
            key.data.extend(data[:64])
            if not data:  # answered and closed
                if not key.data.startswith(b"HTTP/1.1 200"):
                    sys.exit("a request failed: %r" % bytes(key.data))
                sel.unregister(key.fileobj)
                key.fileobj.close()
                waiting -= 1
    time.sleep(2)  # let the proxy settle (closed clients released, buffers trimmed)
    print("%d %d %d" % (rss_kib(pid) - before, sockets_before, sockets_of(pid)))


if __name__ == "__main__":
    main()
