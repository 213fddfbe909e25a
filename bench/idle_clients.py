#!/usr/bin/env python3
"""Opens N keep-alive connections to a proxy, sends one GET on each, reads its response, and
leaves them idle; prints the proxy's RSS growth per connection, then closes them. Also the
growth per connection over the second half alone (the RSS once the first half is idle and
settled, to the end): what one more idle connection costs, without what the proxy spends once
on its first traffic (warm pools, a burst's high-water mark). With "tls",
over TLS (one connection at a time: each handshake is the client's CPU anyway). With "ws"
(or "wss", over TLS), each connection is a WebSocket to the backends' /ws echo instead: upgraded,
one message sent and its echo read, then idle, a tunnel through the proxy.

    idle_clients.py PORT PID N [tls|ws|wss]
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


UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
# One masked text frame, "hello" (a client's frames are masked: RFC 6455 5.3).
MASK = b"\x01\x02\x03\x04"
HELLO = b"\x81\x85" + MASK + bytes(c ^ MASK[i % 4] for i, c in enumerate(b"hello"))
# 8 KiB of a request head in 1 KiB fields (within every proxy's limits), never finished.
PARTIAL_HEAD = (b"GET / HTTP/1.1\r\nHost: bench\r\n" +
                b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(8)))


def read_until(s, done):
    data = b""
    while not done(data):
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("the proxy closed a connection")
        data += chunk
    return data


def open_one_at_a_time(port, n, request, kind):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sockets = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if kind in ("tls", "wss"):
            s = ctx.wrap_socket(s, server_hostname="bench.test")
        if kind == "head":
            s.sendall(PARTIAL_HEAD)  # and never the rest: nothing to read
        elif kind in ("ws", "wss"):
            s.sendall(UPGRADE)
            head = read_until(s, lambda d: b"\r\n\r\n" in d)
            if b" 101 " not in head.split(b"\r\n")[0]:
                sys.exit("no upgrade: %r" % head[:200])
            s.sendall(HELLO)
            read_until(s, lambda d: len(d) >= 7)  # the echo: 2 bytes of header, 5 of text
        else:
            s.sendall(request)
            read_until(s, lambda d: b"\r\n\r\n" in d)
        sockets.append(s)
    return sockets


def main():
    port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    kind = sys.argv[4] if len(sys.argv) > 4 else "plain"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    time.sleep(0.5)
    before = rss_kib(pid)
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    half = n // 2
    if kind != "plain":
        sockets = open_one_at_a_time(port, half, request, kind)
        time.sleep(2)
        middle = rss_kib(pid)
        sockets += open_one_at_a_time(port, n - half, request, kind)
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
