"""Bodies stream both ways with bounded memory: 100 MB up and down, chunks as produced."""
import socket
import subprocess
import time
import unittest

from harness import ProcessTestCase, ScriptedBackend, config, ok_response

MB = 1000 * 1000


class StreamingTest(ProcessTestCase):
    def setUp(self):
        super().setUp()
        self.blue = self.backend("blue-1")
        self.green = self.backend("green-1")
        self.proxy_ = self.proxy(config([self.blue], [self.green]))
        self.url = "http://127.0.0.1:%d" % self.proxy_.port

    def test_100mb_download_and_upload_with_bounded_rss(self):
        before = self.proxy_.rss_kb()
        down = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                               self.url + "/?bytes=%d" % (100 * MB)],
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(down.stdout, "200 %d" % (100 * MB))
        up = subprocess.run("head -c %d /dev/zero | curl -s -T - %s/upload" % (100 * MB, self.url),
                            shell=True, capture_output=True, text=True, timeout=120)
        self.assertEqual(up.stdout, "received %d\n" % (100 * MB))
        sized = subprocess.run("head -c %d /dev/zero > /tmp/bg-upload.bin && curl -s -T /tmp/bg-upload.bin "
                               "%s/upload; rm -f /tmp/bg-upload.bin" % (100 * MB, self.url),
                               shell=True, capture_output=True, text=True, timeout=120)
        self.assertEqual(sized.stdout, "received %d\n" % (100 * MB))
        growth_mb = (self.proxy_.rss_kb() - before) / 1024.0
        print("RSS before %d KB, growth after 300 MB streamed: %.1f MB" % (before, growth_mb))
        self.assertLess(growth_mb, 32)

    def test_first_chunk_arrives_before_the_last_is_produced(self):
        with socket.create_connection(("127.0.0.1", self.proxy_.port), timeout=10) as s:
            start = time.time()
            s.sendall(b"GET /?chunks=3&chunk_size=10&chunk_delay=1000 HTTP/1.1\r\nHost: x\r\n"
                      b"Connection: close\r\n\r\n")
            data = b""
            while b"x" * 10 not in data:
                data += s.recv(4096)
            first = time.time() - start
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            total = time.time() - start
        print("first chunk after %.3f s, whole response after %.3f s" % (first, total))
        self.assertLess(first, 0.9)
        self.assertGreater(total, 1.9)
        self.assertTrue(data.endswith(b"0\r\n\r\n"))

    def test_a_pause_in_a_bulk_body_holds_back_nothing_that_came_before_it(self):
        # A piece that fills a whole read (buffer_size, 16384 by default) with more of the body to
        # come leaves with MSG_MORE, and the kernel may hold it to fill a segment. When the
        # backend then pauses, it must reach the client at once, not when the rest comes (nor
        # after the kernel's 200 ms limit on a held segment).
        piece, rest = 16384, 1000

        def answer(request, index, conn):
            if request[1] != b"/pause":
                return ok_response()  # health checks
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (piece + rest))
            time.sleep(0.1)  # the head goes on its own; then one full read of body
            conn.sendall(b"a" * piece)
            time.sleep(1.5)
            return b"b" * rest

        blue = self.start(ScriptedBackend(answer, "blue-1"))
        proxy = self.proxy(config([blue], [self.green]))
        for attempt in range(2):  # the second on a kept backend connection
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(b"GET /pause HTTP/1.1\r\nHost: x\r\n\r\n")
                start = time.time()
                data = b""
                while b"\r\n\r\n" not in data:
                    data += s.recv(65536)
                body = len(data) - data.index(b"\r\n\r\n") - 4
                while body < piece:
                    body += len(s.recv(65536))
                before_pause = time.time() - start
                while body < piece + rest:
                    body += len(s.recv(65536))
                whole = time.time() - start
            print("the %d bytes before the backend's pause after %.3f s, the rest after %.3f s"
                  % (piece, before_pause, whole))
            self.assertLess(before_pause, 0.25)
            self.assertGreater(whole, 1.5)
            self.assertEqual(body, piece + rest)

if __name__ == "__main__":
    unittest.main(verbosity=2)
