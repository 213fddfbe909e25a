#include "backend_tls_context.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <sys/stat.h>

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ssl/context.hpp>
#include <map>
#include <mutex>

#include "tls_context.hpp"

namespace bg {

namespace ssl = boost::asio::ssl;

std::string host_of(const HostPort& address) {
    const std::string& text = address.text;
    if (text.starts_with('[')) {
        const auto end = text.find(']');
        return end == std::string::npos ? text : text.substr(1, end - 1);
    }
    const auto colon = text.rfind(':');
    return colon == std::string::npos ? text : text.substr(0, colon);
}

namespace {

// A file as it is now: path, inode, size and modification time.
std::string file_identity(const std::string& path) {
    struct stat st {};
    if (path.empty() || ::stat(path.c_str(), &st) != 0) {
        return path + "|";
    }
    return path + "|" + std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
           std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
}

// Everything a context is built from, files included as they are now.
std::string context_key(const BackendTlsSettings& settings) {
    std::string key = settings.verify ? "verify|" : "noverify|";
    key += settings.server_name + "|" + settings.min_version + "|" + settings.ciphers + "|" +
           settings.ciphersuites + "|";
    key += settings.ca_file.empty() ? file_identity(X509_get_default_cert_file())
                                    : file_identity(settings.ca_file);
    if (settings.client_certificate) {
        key += "|" + file_identity(settings.client_certificate->cert) + "|" +
               file_identity(settings.client_certificate->key);
    }
    return key;
}

}  // namespace

std::shared_ptr<BackendTlsContext> BackendTlsContext::create(const BackendTlsSettings& settings,
                                                             std::string& error) {
    // A reload that leaves a pool's TLS settings and files as they were gets the context it
    // already has, so the workers keep their pooled TLS connections and sessions (they are
    // matched to their context). Config loading only: the lock is never on the data path.
    static std::mutex mutex;
    static std::map<std::string, std::weak_ptr<BackendTlsContext>> live;
    const std::string key = context_key(settings);
    std::lock_guard lock(mutex);
    std::erase_if(live, [](const auto& entry) { return entry.second.expired(); });
    if (auto existing = live[key].lock()) {
        return existing;
    }
    auto built = build(settings, error);
    if (built) {
        live[key] = built;
    } else {
        live.erase(key);
    }
    return built;
}

std::shared_ptr<BackendTlsContext> BackendTlsContext::build(const BackendTlsSettings& settings,
                                                            std::string& error) {
    std::shared_ptr<BackendTlsContext> self(new BackendTlsContext());
    self->settings_ = settings;
    self->context_ = std::make_unique<ssl::context>(ssl::context::tls_client);
    SSL_CTX* ctx = self->context_->native_handle();
    ERR_clear_error();
    SSL_CTX_set_min_proto_version(ctx,
                                  settings.min_version == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (!settings.ciphers.empty() && SSL_CTX_set_cipher_list(ctx, settings.ciphers.c_str()) != 1) {
        error = openssl_error("ciphers '" + settings.ciphers + "'");
        return nullptr;
    }
    if (SSL_CTX_set_ciphersuites(ctx, settings.ciphersuites.c_str()) != 1) {
        error = openssl_error("ciphersuites '" + settings.ciphersuites + "'");
        return nullptr;
    }
    if (settings.verify) {
        const bool loaded =
            settings.ca_file.empty()
                ? SSL_CTX_set_default_verify_paths(ctx) == 1
                : SSL_CTX_load_verify_locations(ctx, settings.ca_file.c_str(), nullptr) == 1;
        if (!loaded) {
            error =
                openssl_error(settings.ca_file.empty() ? "cannot load the system's CA certificates"
                                                       : "cannot use CA file " + settings.ca_file);
            return nullptr;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
    }
    if (settings.client_certificate) {
        const CertificateFiles& files = *settings.client_certificate;
        if (SSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != 1) {
            error = openssl_error("cannot use client certificate " + files.cert);
            return nullptr;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), SSL_FILETYPE_PEM) != 1) {
            error = openssl_error("cannot use client key " + files.key);
            return nullptr;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            error = openssl_error("client key " + files.key + " does not match certificate " +
                                  files.cert);
            return nullptr;
        }
    }
    // We speak HTTP/1.1 to backends; saying so keeps an ALPN-aware backend from choosing h2.
    static constexpr unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn));
    // Sessions are resumed from each worker's own per-backend slot (UpstreamPool), not from
    // OpenSSL's shared, locked cache.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    return self;
}

BackendTlsContext::~BackendTlsContext() = default;

bool BackendTlsContext::prepare(SSL* ssl, const HostPort& backend, std::string& error) const {
    const std::string name =
        settings_.server_name.empty() ? host_of(backend) : settings_.server_name;
    boost::system::error_code not_ip;
    boost::asio::ip::make_address(name, not_ip);
    // RFC 6066 3: SNI carries host names only, never literal addresses.
    if (not_ip && SSL_set_tlsext_host_name(ssl, name.c_str()) != 1) {
        error = openssl_error("cannot send server name " + name);
        return false;
    }
    if (!settings_.verify) {
        return true;
    }
    const bool named = not_ip
                           ? SSL_set1_host(ssl, name.c_str()) == 1
                           : X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str()) == 1;
    if (!named) {
        error = openssl_error("cannot expect name " + name);
        return false;
    }
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    return true;
}

std::string BackendTlsContext::handshake_error(SSL* ssl, const std::string& fallback) {
    // Without verification the chain's verdict is kept but did not fail the handshake.
    const long verdict = SSL_get_verify_result(ssl);
    if ((SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) != 0 && verdict != X509_V_OK) {
        return std::string("certificate verify failed: ") + X509_verify_cert_error_string(verdict);
    }
    return fallback;
}

}  // namespace bg
