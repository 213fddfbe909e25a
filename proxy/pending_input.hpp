#pragma once
// What a client has waiting on its socket, peeked and left there: whether there is anything (a
// shutdown serves such a connection's request, answered with Connection: close, instead of
// closing it under the request, which the client would see as a reset with no answer), and
// what a new connection on a TLS listener has sent: nothing yet, a first byte (plain HTTP
// sent to a TLS listener starts with a capital letter), or the end.

namespace bg {

// One non-blocking MSG_PEEK of a byte; false on EOF, error or nothing yet.
bool input_waiting(int descriptor);

// The first byte waiting, peeked: what a TLS listener's new connection has sent so far.
struct FirstByte {
    enum Kind { none_yet, sent, ended } kind;  // ended: the end of stream, or an error
    unsigned char value = 0;

    // Plain HTTP starts with a method's capital letter, where a TLS client's first record
    // starts with its type, a control byte (0x16 for a ClientHello).
    bool plain_http() const { return kind == sent && value >= 'A' && value <= 'Z'; }
};
FirstByte peek_first_byte(int descriptor);

// Whether the request waiting is a HEAD (peeked, left there): the proxy's answers written
// before a request is parsed (plain HTTP on a TLS listener, past max_connections) end with
// their head for it (RFC 9110 9.3.2).
bool request_is_head(int descriptor);

}  // namespace bg
