#include "tls_context.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/ssl/context.hpp>
#include <cctype>
#include <optional>
#include <string>
#include <string_view>

namespace bg {

namespace ssl = boost::asio::ssl;

std::string openssl_error(const std::string& what) {
    std::string message = what;
    while (unsigned long code = ERR_get_error()) {
        char text[256];
        ERR_error_string_n(code, text, sizeof(text));
        message += ": ";
        message += text;
    }
    return message;
}

namespace {

// Whether the context's ciphers include `name` as a TLS 1.3 suite (OpenSSL 3.0 takes a TLS 1.2
// cipher's standard name among the suites too, and every TLS 1.3 handshake then fails).
bool has_tls13_suite(SSL_CTX* ctx, const std::string& name) {
    STACK_OF(SSL_CIPHER)* ciphers = SSL_CTX_get_ciphers(ctx);
    for (int i = 0; i < sk_SSL_CIPHER_num(ciphers); ++i) {
        const SSL_CIPHER* cipher = sk_SSL_CIPHER_value(ciphers, i);
        if (name == SSL_CIPHER_standard_name(cipher)) {
            return std::string_view(SSL_CIPHER_get_version(cipher)) == "TLSv1.3";
        }
    }
    return false;
}

}  // namespace

std::string tls13_suites_problem(const std::string& list) {
    // Each name on its own through OpenSSL's parser (which refuses a list it finds nothing in):
    // no list of known names here to fall behind OpenSSL's.
    std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> scratch(SSL_CTX_new(TLS_server_method()),
                                                              SSL_CTX_free);
    ERR_clear_error();  // in case the scratch context could not be made (then nothing is checked)
    std::string_view rest = list;
    bool named = false;
    while (!rest.empty()) {
        const std::size_t colon = rest.find(':');
        std::string_view name = rest.substr(0, colon);
        rest = colon == std::string_view::npos ? std::string_view() : rest.substr(colon + 1);
        while (!name.empty() && name.front() == ' ') {
            name.remove_prefix(1);
        }
        while (!name.empty() && name.back() == ' ') {
            name.remove_suffix(1);
        }
        if (name.empty()) {
            continue;  // as OpenSSL reads "A::B"
        }
        const std::string suite(name);
        if (scratch && (SSL_CTX_set_ciphersuites(scratch.get(), suite.c_str()) != 1 ||
                        !has_tls13_suite(scratch.get(), suite))) {
            ERR_clear_error();
            return "has '" + suite +
                   "', which is no TLS 1.3 suite OpenSSL offers (e.g. TLS_AES_128_GCM_SHA256, "
                   "TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256)";
        }
        named = true;
    }
    // An empty list leaves no suite for TLS 1.3, which OpenSSL still offers: every handshake
    // would fail.
    return named ? std::string() : "must name at least one TLS 1.3 suite";
}

namespace {

bool iequal(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(a[i])) !=
            std::tolower(static_cast<unsigned char>(b[i]))) {
            return false;
        }
    }
    return true;
}

// "*.example.com" matches exactly one leftmost label (RFC 6125 6.4.3).
bool name_matches(std::string_view pattern, std::string_view name) {
    if (pattern.starts_with("*.")) {
        auto dot = name.find('.');
        return dot != std::string_view::npos && dot > 0 &&
               iequal(pattern.substr(1), name.substr(dot));
    }
    return iequal(pattern, name);
}

std::vector<std::string> certificate_names(SSL_CTX* ctx) {
    std::vector<std::string> names;
    X509* cert = SSL_CTX_get0_certificate(ctx);
    if (cert == nullptr) {
        return names;
    }
    auto* sans =
        static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
    if (sans != nullptr) {
        for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
            const GENERAL_NAME* entry = sk_GENERAL_NAME_value(sans, i);
            if (entry->type == GEN_DNS) {
                const auto* data = ASN1_STRING_get0_data(entry->d.dNSName);
                names.emplace_back(reinterpret_cast<const char*>(data),
                                   static_cast<std::size_t>(ASN1_STRING_length(entry->d.dNSName)));
            }
        }
        GENERAL_NAMES_free(sans);
    }
    if (names.empty()) {
        // No DNS subjectAltName: fall back to the subject's common name.
        char cn[256];
        int n =
            X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
        if (n > 0) {
            names.emplace_back(cn, static_cast<std::size_t>(n));
        }
    }
    return names;
}

int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned int inlen, void*) {
    // Offered protocols are length-prefixed; we speak http/1.1 only.
    static constexpr unsigned char ours[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    unsigned char* selected = nullptr;
    if (SSL_select_next_proto(&selected, outlen, ours, sizeof(ours), in, inlen) ==
        OPENSSL_NPN_NEGOTIATED) {
        *out = selected;
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_NOACK;  // no common protocol: go on without ALPN, as HTTP/1.1
}

// The host name a ClientHello's server_name extension carries (RFC 6066 3), or nothing.
std::optional<std::string_view> client_hello_server_name(SSL* ssl) {
    const unsigned char* p = nullptr;
    std::size_t left = 0;
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &left) != 1 || left < 5) {
        return std::nullopt;
    }
    const std::size_t list = (std::size_t{p[0]} << 8) | p[1];
    const std::size_t name = (std::size_t{p[3]} << 8) | p[4];
    if (list + 2 != left || p[2] != TLSEXT_NAMETYPE_host_name || name + 3 > list) {
        return std::nullopt;  // malformed: OpenSSL's own parse refuses it next
    }
    return std::string_view(reinterpret_cast<const char*>(p + 5), name);
}

// The certificate is chosen from the ClientHello, before OpenSSL looks at a session to resume:
// switching the context there also switches the session id context each certificate has, so
// a session (id or ticket) resumes under its own certificate only (RFC 6066 3). Chosen in the
// server-name callback, as before, the check ran against the first certificate's context.
// (SSL_set_SSL_CTX keeps the options and versions the connection took from the first
// context; suites are read through the switched one. Alike today: every certificate's context
// is built from the same TlsSettings.)
int on_client_hello(SSL* ssl, int*, void* arg) {
    const auto* self = static_cast<const TlsServerContext*>(arg);
    if (const auto name = client_hello_server_name(ssl)) {
        if (const std::size_t index = self->select(*name); index != 0) {
            SSL_set_SSL_CTX(ssl, self->context_handle(index));
        }
    }
    return SSL_CLIENT_HELLO_SUCCESS;
}

// Acknowledges the name (so a TLS 1.2 session remembers it); the choice was made above.
int on_server_name(SSL*, int*, void*) {
    return SSL_TLSEXT_ERR_OK;
}

// Resumption as configured: a server-side session cache (TLS 1.2 session ids; TLS 1.3's
// tickets are ids into it when tickets are off) and tickets, each session bound to its
// certificate by a session id context of its own.
void set_resumption(SSL_CTX* ctx, const TlsSettings& settings, std::size_t certificate) {
    const std::string session_context = "bgproxy-" + std::to_string(certificate);
    SSL_CTX_set_session_id_context(ctx,
                                   reinterpret_cast<const unsigned char*>(session_context.data()),
                                   static_cast<unsigned int>(session_context.size()));
    SSL_CTX_set_timeout(
        ctx,
        static_cast<long>(
            std::chrono::duration_cast<std::chrono::seconds>(settings.session_lifetime).count()));
    if (!settings.session_tickets) {
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    }
    if (settings.session_cache == 0) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        if (!settings.session_tickets) {
            // TLS 1.3 would still send tickets naming sessions nobody keeps: bytes and a
            // client's hope for nothing.
            SSL_CTX_set_num_tickets(ctx, 0);
        }
        return;
    }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(ctx, static_cast<long>(settings.session_cache));
}

}  // namespace

std::shared_ptr<TlsServerContext> TlsServerContext::create(const TlsSettings& settings,
                                                           std::string& error) {
    if (settings.certificates.empty()) {
        error = "tls needs at least one certificate";
        return nullptr;
    }
    std::shared_ptr<TlsServerContext> self(new TlsServerContext());
    ERR_clear_error();
    for (const CertificateFiles& files : settings.certificates) {
        auto context = std::make_unique<ssl::context>(ssl::context::tls_server);
        SSL_CTX* ctx = context->native_handle();
        SSL_CTX_set_min_proto_version(
            ctx, settings.min_version == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION);
        // A client's end without close_notify (as many clients end) is read as a close, not as
        // a fatal error whose alert would drop its session from the cache (nginx sets it too).
        // Nothing is lost: a request is delimited by its own framing, never by the close.
        SSL_CTX_set_options(
            ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
        if (settings.prefer_server_ciphers) {
            SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA);
        }
        if (SSL_CTX_set_cipher_list(ctx, settings.ciphers.c_str()) != 1) {
            error = openssl_error("tls ciphers '" + settings.ciphers + "'");
            return nullptr;
        }
        if (SSL_CTX_set_ciphersuites(ctx, settings.ciphersuites.c_str()) != 1) {
            error = openssl_error("tls ciphersuites '" + settings.ciphersuites + "'");
            return nullptr;
        }
        if (SSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != 1) {
            error = openssl_error("cannot use certificate " + files.cert);
            return nullptr;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), SSL_FILETYPE_PEM) != 1) {
            error = openssl_error("cannot use key " + files.key);
            return nullptr;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            error = openssl_error("key " + files.key + " does not match certificate " + files.cert);
            return nullptr;
        }
        set_resumption(ctx, settings, self->contexts_.size());
        SSL_CTX_set_alpn_select_cb(ctx, select_alpn, nullptr);
        SSL_CTX_set_client_hello_cb(ctx, on_client_hello, self.get());
        SSL_CTX_set_tlsext_servername_callback(ctx, on_server_name);
        self->names_.push_back(certificate_names(ctx));
        self->contexts_.push_back(std::move(context));
    }
    return self;
}

TlsServerContext::~TlsServerContext() = default;

ssl::context& TlsServerContext::initial() const {
    return *contexts_.front();
}

SSL_CTX* TlsServerContext::context_handle(std::size_t index) const {
    return contexts_[index]->native_handle();
}

std::size_t TlsServerContext::select(std::string_view server_name) const {
    // Exact names first, then wildcards, each in configuration order.
    for (std::size_t i = 0; i < names_.size(); ++i) {
        for (const auto& name : names_[i]) {
            if (!name.starts_with("*.") && iequal(name, server_name)) {
                return i;
            }
        }
    }
    for (std::size_t i = 0; i < names_.size(); ++i) {
        for (const auto& name : names_[i]) {
            if (name.starts_with("*.") && name_matches(name, server_name)) {
                return i;
            }
        }
    }
    return 0;
}

}  // namespace bg
