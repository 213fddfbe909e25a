#pragma once
// TlsServerContext: the OpenSSL side of one TLS listener. One SSL_CTX per certificate, all
// set up alike (TLS 1.2+ only, the configured ciphers, ALPN http/1.1, a session cache and
// tickets for resumption); a connection starts on the default one and the SNI callback moves
// it to the certificate whose names match. Built on the control thread when a config is
// loaded; shared read-only by every worker (OpenSSL's contexts are safe to share).

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "config.hpp"

namespace boost::asio::ssl {
class context;
}
struct ssl_ctx_st;

namespace bg {

// `what`, followed by each error on OpenSSL's error queue (which it empties).
std::string openssl_error(const std::string& what);

// What is wrong with a TLS 1.3 suite list ("A:B"), or nothing: a name OpenSSL does not offer as
// a TLS 1.3 suite (it would skip an unknown one silently beside a known one), or no name at all.
// (A TLS 1.2 list is left to OpenSSL whole: its names alone may select nothing, 3DES or RC4
// in a build without them, in a list that is good.)
std::string tls13_suites_problem(const std::string& list);

class TlsServerContext {
  public:
    // Reads the certificate and key files; nullptr with a message when one cannot be used.
    static std::shared_ptr<TlsServerContext> create(const TlsSettings& settings,
                                                    std::string& error);
    ~TlsServerContext();
    TlsServerContext(const TlsServerContext&) = delete;
    TlsServerContext& operator=(const TlsServerContext&) = delete;

    // Where a new connection starts (the first certificate's context).
    boost::asio::ssl::context& initial() const;
    // The DNS names each certificate answers for, in configuration order.
    const std::vector<std::vector<std::string>>& names() const { return names_; }
    // The certificate index for an SNI name; 0 (the default) when none matches.
    std::size_t select(std::string_view server_name) const;
    ssl_ctx_st* context_handle(std::size_t index) const;  // the SSL_CTX of certificate `index`

  private:
    TlsServerContext() = default;
    std::vector<std::unique_ptr<boost::asio::ssl::context>> contexts_;
    std::vector<std::vector<std::string>> names_;
};

}  // namespace bg
