#!/usr/bin/env python3
"""Opens N keep-alive connections to a proxy, sends one GET on each, reads its response, and
leaves them idle; prints the proxy's RSS growth per connection, then closes them. Also the
growth per connection over the second half alone (the RSS once the first half is idle and
settled, to the end): what one more idle connection costs, without what the proxy spends once
on its first traffic (warm pools, a burst's high-water mark). With "tls",
over TLS (one connection at a time: each handshake is the client's CPU anyway).

    idle_clients.py PORT PID N [tls]
      -> prints "KIB_PER_CONNECTION RSS_BEFORE_KIB RSS_AFTER_KIB KIB_PER_CONNECTION_SECOND_HALF"
"""
import resource
import selectors
import socket
import ssl
import sys
import time


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_tls(port, n, request):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sockets = []
    for _ in range(n):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                            server_hostname="bench.test")
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit("the proxy closed a connection")
            data += chunk
        sockets.append(s)
    return sockets


def main():
    port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    tls = len(sys.argv) > 4 and sys.argv[4] == "tls"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    time.sleep(0.5)
    before = rss_kib(pid)
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    half = n // 2
    if tls:
        sockets = open_tls(port, half, request)
        time.sleep(2)
        middle = rss_kib(pid)
        sockets += open_tls(port, n - half, request)
        time.sleep(2)
        after = rss_kib(pid)
        print("%.2f %d %d %.2f" % ((after - before) / n, before, after,
                                   (after - middle) / (n - half)))
        for s in sockets:
            s.close()
        return
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
        while waiting > 200 or (i in (half - 1, n - 1) and waiting > 0):
            if time.time() > deadline:
                sys.exit("responses did not all arrive within 120 s")
            for key, _ in sel.select(timeout=1):
                data = key.fileobj.recv(65536)
                if not data:
                    sys.exit("the proxy closed a connection")
                if b"\r\n\r\n" in data:
                    sel.unregister(key.fileobj)
                    waiting -= 1
        if i == half - 1:
            time.sleep(2)  # settled, as at the end
            middle = rss_kib(pid)
    time.sleep(2)  # let the proxy settle (idle timers, released buffers)
    after = rss_kib(pid)
    print("%.2f %d %d %.2f" % ((after - before) / n, before, after, (after - middle) / (n - half)))
    for s in sockets:
        s.close()


if __name__ == "__main__":
    main()
