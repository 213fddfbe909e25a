"""Exactly N requests of one bench shape, one after another (bench/profile.sh counts a proxy's
instructions over them): keepalive (GETs on one connection), close (a connection each),
download (1 MiB responses), upload (1 MiB POST bodies); tls-keepalive, tls-handshake,
tls-download and tls-upload are keepalive, close, download and upload over TLS (PORT is then the
TLS listener), tls-resume is close over TLS offering the last session (resumed if the listener
allows). Exits non-zero on a short response.

    python3 bench/http_requests.py PORT SHAPE N
"""
import socket
import ssl
import sys

BODY = b"x" * 1048576


def request(shape):
    if shape == "upload":
        return (b"POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY
    path = b"/?bytes=1048576" if shape == "download" else b"/"
    close = b"Connection: close\r\n" if shape == "close" else b""
    return b"GET " + path + b" HTTP/1.1\r\nHost: bench\r\n" + close + b"\r\n"


def read_response(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            sys.exit("connection closed before a response head")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    received = len(body)
    while received < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            sys.exit("connection closed mid-body")
        received += len(chunk)


def main():
    port, shape, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    tls = None
    resume = False
    session = None
    if shape.startswith("tls-"):
        resume = shape == "tls-resume"
        shape = {"tls-keepalive": "keepalive", "tls-handshake": "close", "tls-resume": "close",
                 "tls-download": "download", "tls-upload": "upload"}[shape]
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    message = request(shape)
    sock = None
    for _ in range(count):
        if sock is None or shape == "close":
            if sock is not None:
                sock.close()
            sock = socket.create_connection(("127.0.0.1", port))
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname="bench.test",
                                       session=session if resume else None)
        sock.sendall(message)
        read_response(sock)
        if resume:
            session = sock.session  # after a read: TLS 1.3 tickets are in
    sock.close()


if __name__ == "__main__":
    main()
