#include "smoke_gate.hpp"

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include "http_probe.hpp"

namespace bg {

namespace asio = boost::asio;

namespace {

std::string list(const std::vector<unsigned>& codes) {
    std::string out;
    for (unsigned c : codes) {
        out += (out.empty() ? "" : " or ") + std::to_string(c);
    }
    return out;
}

// The pool is a copy: the checks may outlive the config they started from.
asio::awaitable<std::string> check_colour(std::vector<SmokeCheck> checks, PoolConfig pool) {
    for (const BackendConfig& backend : pool.backends) {
        for (const SmokeCheck& check : checks) {
            ProbeRequest request = connecting_as(pool);
            request.method = check.method;
            request.path = check.path;
            request.headers = check.headers;
            request.timeout = check.timeout;
            request.want_body = !check.body_contains.empty();
            ProbeResult result = co_await http_probe(backend.address, request);
            std::string prefix =
                "smoke check '" + check.name + "' failed on " + backend.name + ": ";
            if (!result.answered) {
                co_return prefix + result.error;
            }
            if (std::find(check.expect.begin(), check.expect.end(), result.status) ==
                check.expect.end()) {
                co_return prefix + "status " + std::to_string(result.status) + ", expected " +
                    list(check.expect);
            }
            if (!check.body_contains.empty() &&
                result.body.find(check.body_contains) == std::string::npos) {
                co_return prefix + "the body does not contain '" + check.body_contains + "'";
            }
        }
    }
    co_return std::string{};
}

}  // namespace

void run_smoke_gate(asio::any_io_executor executor, const Config& config, Colour colour,
                    std::function<void(std::string)> done) {
    const PoolConfig& pool = colour == Colour::blue ? config.blue : config.green;
    asio::co_spawn(executor, check_colour(config.gate, pool),
                   [done = std::move(done)](std::exception_ptr error, std::string failure) {
                       done(error ? std::string("the smoke checks could not run") : failure);
                   });
}

}  // namespace bg
