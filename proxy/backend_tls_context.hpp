#pragma once
// BackendTlsContext: the OpenSSL client side of one pool's connections to its backends: the
// CAs their certificates must chain to, the name each must prove, an optional client
// certificate. Built on the control thread when a config is loaded (so a bad file is a config
// error); shared read-only by every worker and the health checker (an SSL_CTX may be shared).

#include <memory>
#include <string>

#include "config.hpp"

namespace boost::asio::ssl {
class context;
}
struct ssl_st;

namespace bg {

class BackendTlsContext {
  public:
    // Reads the CA and client certificate files; nullptr with a message when one cannot be used.
    // While a context built from the same settings and unchanged files is alive, it is that one.
    static std::shared_ptr<BackendTlsContext> create(const BackendTlsSettings& settings,
                                                     std::string& error);
    ~BackendTlsContext();
    BackendTlsContext(const BackendTlsContext&) = delete;
    BackendTlsContext& operator=(const BackendTlsContext&) = delete;

    boost::asio::ssl::context& context() const { return *context_; }

    // Names the backend to a new connection before its handshake: SNI (never an IP address)
    // and, when verifying, the DNS name or IP address its certificate must carry: server_name
    // when set, else the host the backend's address was written with.
    bool prepare(ssl_st* ssl, const HostPort& backend, std::string& error) const;

    // Why a handshake failed, in words ("certificate verify failed: hostname mismatch").
    static std::string handshake_error(ssl_st* ssl, const std::string& fallback);

  private:
    BackendTlsContext() = default;
    static std::shared_ptr<BackendTlsContext> build(const BackendTlsSettings& settings,
                                                    std::string& error);
    std::unique_ptr<boost::asio::ssl::context> context_;
    BackendTlsSettings settings_;
};

// The host part of an address as written: "api.internal" of "api.internal:443", "::1" of
// "[::1]:80".
std::string host_of(const HostPort& address);

}  // namespace bg
