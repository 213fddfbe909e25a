"""A WebSocket upgrade is tunnelled both ways after the 101."""
import base64
import os
import socket
import struct
import time
import unittest

from harness import ProcessTestCase, config, metric


def ws_frame(payload, opcode=0x1):
    """A masked client frame (RFC 6455 5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_exact(s, n, buf):
    while len(buf) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("closed")
        buf += chunk
    return buf[:n], buf[n:]


def read_frame(s, buf):
    head, buf = read_exact(s, 2, buf)
    opcode, n = head[0] & 0x0F, head[1] & 0x7F
    if n == 126:
        ext, buf = read_exact(s, 2, buf)
        n = struct.unpack("!H", ext)[0]
    elif n == 127:
        ext, buf = read_exact(s, 8, buf)
        n = struct.unpack("!Q", ext)[0]
    payload, buf = read_exact(s, n, buf)
    return opcode, payload, buf


def upgrade(s, then=b""):
    """Sends a WebSocket upgrade for /ws (and `then` in the same write); returns the response
    head and what came after it."""
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n" + then)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise EOFError("closed before the upgrade's answer")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


class WebSocketTest(ProcessTestCase):
    def test_echo_round_trip_through_the_proxy(self):
        blue = self.backend("blue-1")
        green = self.backend("green-1")
        proxy = self.proxy(config([blue], [green]))
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            head, buf = upgrade(s)
            self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
            self.assertIn(b"upgrade: websocket", head.lower())
            for message in (b"hello through bgproxy", os.urandom(100000)):
                s.sendall(ws_frame(message, 0x2))
                opcode, payload, buf = read_frame(s, buf)
                self.assertEqual(payload, message)
            s.sendall(ws_frame(struct.pack("!H", 1000), 0x8))
            opcode, payload, buf = read_frame(s, buf)
            self.assertEqual(opcode, 0x8)

    def test_messages_of_every_size_with_idle_pauses_between(self):
        """An idle tunnel holds no read buffer (it waits for bytes with none, takes a small one
        to read them, and gives it back once it has read all there was): messages that fill
        the first buffer exactly, straddle it, or come in bulk after a pause all arrive whole,
        and a frame sent with the upgrade request goes through."""
        blue = self.backend("blue-1")
        green = self.backend("green-1")
        proxy = self.proxy(config([blue], [green]))
        first = os.urandom(300)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            head, buf = upgrade(s, ws_frame(first, 0x2))
            self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
            opcode, payload, buf = read_frame(s, buf)
            self.assertEqual(payload, first)
            # 2040 + 8 bytes of frame: 2048, the first read buffer exactly; then one over it.
            for size in (1, 2040, 2041, 4096, 200000, 5, 70000, 3):
                message = os.urandom(size)
                s.sendall(ws_frame(message, 0x2))
                opcode, payload, buf = read_frame(s, buf)
                self.assertEqual((opcode, len(payload)), (0x2, size))
                self.assertEqual(payload, message)
                time.sleep(0.05)  # idle in between: the buffers go back
            # Back to back in one write, small and bulk mixed.
            burst = [os.urandom(n) for n in (10, 3000, 100000, 7)]
            s.sendall(b"".join(ws_frame(m, 0x2) for m in burst))
            for message in burst:
                opcode, payload, buf = read_frame(s, buf)
                self.assertEqual(payload, message)
            s.sendall(ws_frame(struct.pack("!H", 1000), 0x8))
            opcode, payload, buf = read_frame(s, buf)
            self.assertEqual(opcode, 0x8)
            # The backend's end of the tunnel reaches the client.
            self.assertEqual(buf + s.recv(4096), b"")

    def test_a_tunnel_whose_backend_died_closes_after_tunnel_half_closed(self):
        """The backend's end (here: it died) reaches the client as a FIN; a client that keeps
        its socket held the tunnel, its descriptors and its slot until tunnel_idle (an hour,
        found by an outside probe). Half-closed, a tunnel idles only tunnel_half_closed."""
        # Two blue backends: with one, its colour's failover would close the tunnel anyway.
        blues = [self.backend("blue-1"), self.backend("blue-2")]
        green = self.backend("green-1")
        proxy = self.proxy(config(blues, [green], extra="""
[timeouts]
tunnel_half_closed = "1s"
"""))
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        self.addCleanup(s.close)
        head, buf = upgrade(s)
        self.assertTrue(head.startswith(b"HTTP/1.1 101"), head)
        s.sendall(ws_frame(b"before", 0x2))
        self.assertEqual(read_frame(s, buf)[1], b"before")
        self.assertEqual(metric(proxy, "bgproxy_upgraded_connections"), 1)
        serving = [b for b in blues if b"x-backend: " + b.name.encode() in head.lower()]
        self.assertEqual(len(serving), 1, head)
        serving[0].stop()
        self.assertEqual(s.recv(4096), b"")  # the backend's FIN, passed on
        ended = time.monotonic()
        # Open (the client's half) a while, then closed at tunnel_half_closed, not tunnel_idle.
        time.sleep(0.3)
        self.assertEqual(metric(proxy, "bgproxy_upgraded_connections"), 1)
        while metric(proxy, "bgproxy_upgraded_connections") > 0:
            self.assertLess(time.monotonic() - ended, 5, "the half-closed tunnel stays open")
            time.sleep(0.05)
        self.assertGreater(time.monotonic() - ended, 0.9)
        # Its end reaches the client as a reset on its next write.
        with self.assertRaises(OSError):
            for _ in range(20):
                s.sendall(ws_frame(b"after", 0x2))
                time.sleep(0.05)


if __name__ == "__main__":
    unittest.main(verbosity=2)
