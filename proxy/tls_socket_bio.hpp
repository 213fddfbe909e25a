#pragma once
// The BIO a TlsStream's OpenSSL connection reads and writes its socket through: recv and send
// (MSG_NOSIGNAL) where OpenSSL's socket BIO calls read and write, which cost more in the kernel
// (the VFS layer); and it remembers whether its last read emptied the socket. A stream that
// knows the socket is empty and OpenSSL holds nothing waits for bytes at once, instead of a
// read that can only fail first (one syscall in three on a TLS keep-alive request).

typedef struct ssl_st SSL;

namespace bg {

// Gives `ssl` a BIO of this kind over `descriptor` for both directions (as SSL_set_fd does).
// False when OpenSSL could not allocate it.
bool attach_socket_bio(SSL* ssl, int descriptor);

// Whether `ssl`'s last read from its socket took everything the socket held (fewer bytes than
// asked for, or none yet): a read now finds the socket empty unless bytes have come since.
// False for a BIO of another kind.
bool socket_bio_drained(SSL* ssl);

// Forgets that: bytes have come (a wait for them ended), or the next read decides it anew.
void forget_socket_bio_drained(SSL* ssl);

// Before each call into OpenSSL on `ssl` (a "try"). In a handshake's try, a read that follows
// a read that emptied the socket and a write that sent something since (our flight) makes no
// recv: it reports "retry" as the recv would have, and the caller waits for the poller. The
// peer needs a round trip to answer a flight, so that recv found nothing (unless the peer sent
// something unasked, a compatibility ChangeCipherSpec: then the wait ends at once): one syscall
// fewer per server handshake (two after a HelloRetryRequest), and per TLS 1.2 full handshake as
// a backend's client (a TLS 1.3 client reads nothing after its Finished). Only within a try: no
// poll runs there, so bytes that came meanwhile are an event still to come (across tries a
// poll may have taken it). The cost: an end of stream that came behind the bytes the emptying
// read took (a client that half-closed after its ClientHello, which can never finish; a TLS
// 1.2 backend that half-closed behind its flight) is found at the deadline (tls_handshake,
// upstream_connect), not at once. A peer that closes or resets is found when our flight
// reaches it.
// A closing try (close_notify) ends the hold of hold_socket_bio_until_close.
enum class BioTry { handshake, closing, other };
void begin_socket_bio_try(SSL* ssl, BioTry kind);

// Held sends (MSG_MORE): the kernel keeps a send's last partial segment until a send without
// it, or the FIN, pushes it out; what several sends wrote then reaches the peer in one segment
// instead of several (less work for both kernels, fewer ACKs). What is held is bytes the peer
// does not wait for (tickets), or the last bytes before our close_notify or FIN. Left alone,
// the kernel sends a held segment at its retransmission timeout (200 ms or more; 204-212 ms
// measured on 127.0.0.1).
//
// This try's sends held, until end_socket_bio_try_hold: a TLS 1.3 server's handshake try after
// its whole first flight went out sends only its session tickets, which no client waits for
// (it sends its request at once). They go out with the first response's record, in its
// segment, not in one of their own. `push_now`: the try failed, and a held fatal alert goes
// out before the close.
void hold_socket_bio_try(SSL* ssl);
void end_socket_bio_try_hold(SSL* ssl, bool push_now);
// Every send held from now on, until a closing try's (close_notify) pushes them out with it:
// the last response before a close. The FIN pushes them too, or the close.
void hold_socket_bio_until_close(SSL* ssl);
// Before a wait for the peer: what a hold until close kept goes out, and that hold ends (a
// caller that held its last bytes and then waited for the peer would leave them to the
// kernel's timer). A held ticket stays: the client needs none to send its request.
void release_socket_bio_holds(SSL* ssl);

}  // namespace bg
