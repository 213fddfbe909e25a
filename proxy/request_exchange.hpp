#pragma once
// RequestExchange: one request on a client connection, from its head to the end of its
// response: reads and screens the head, picks the colour from one routing snapshot, forwards
// it (attempts, retries, crossing colours, the request body, interim responses), relays the
// response or answers for the proxy, and counts and logs the request when it ends (its
// destructor, so no path forgets it). Its state lives for one request; the connection's lives
// in ClientConnection. Defined in request_exchange.cpp for plain and TLS client streams.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>

#include "client_connection.hpp"
#include "exchange_state.hpp"
#include "retry_state.hpp"
#include "side_task.hpp"
#include "traffic_counters.hpp"
#include "try_outcome.hpp"
#include "upstream_lease.hpp"
#include "upstream_request.hpp"
#include "upstream_response.hpp"

namespace bg {

template <class Stream>
class RequestExchange {
  public:
    RequestExchange(ClientConnection<Stream>& connection, ExchangeState& state);
    ~RequestExchange();
    RequestExchange(const RequestExchange&) = delete;
    RequestExchange& operator=(const RequestExchange&) = delete;

    // A request head arrived whole and was parsed; false when the connection is to close (a
    // clean end, a timeout, or a refusal already answered).
    Task<bool> read_head();
    // Routes, forwards and answers the request; returns whether the connection stays open.
    Task<bool> respond();

  private:
    HeadRead parse_head(std::size_t& checked, Refusal& refusal);
    // A plain client's head has begun: the deadline's expiry answers it 408.
    void expect_late_head();
    // The deadline ran out on the head: counted, and logged as the 408 it sent when it did.
    void note_head_timeout();
    std::size_t skip_leading_empty_lines();
    void begin_record(const Request* request);
    void finish_record();

    Colour choose_colour(const RoutingTable& table);
    Task<Exchange> forward(RoutingTablePtr& table, Colour colour, const RequestFacts& facts,
                           UpstreamLease& lease, RetryState& retries);
    Colour routing_for_retry(RoutingTablePtr& table, Colour colour, unsigned failed_colours);
    void served_by(const Backend& backend);
    void record_try(const Backend& backend, Exchange outcome);
    void tell_answer(const Backend& backend);
    Duration try_limit() const;
    Task<Exchange> exchange(UpstreamLease& lease, const RequestFacts& facts);
    Task<Exchange> await_response(UpstreamLease& lease, const RequestFacts& facts);
    void request_sent();
    Task<Exchange> read_response_head(UpstreamStream& stream, const RequestFacts& facts);
    Task<bool> send_continue();
    Task<bool> relay_interim();

    // The request body goes to the backend beside the response coming back (full duplex):
    // RFC 9112 9.5 has a backend answer before it has the whole body (a 413, a 401), and an
    // echo, a transcoder or a streaming RPC answers as it reads. Relayed in turn, either
    // stalled: the answer held behind the upload, or both sides' buffers full and no side
    // moving.
    void start_upload(UpstreamStream& stream);
    Task<void> upload();
    Task<Exchange> send_request_body(UpstreamStream& stream, BodyRelay& relay);
    bool body_at_hand();
    void upload_ended(Exchange sent);
    Task<void> stop_upload();
    Task<void> let_upload_run_out();
    bool uploading() const { return upload_ && !upload_->ended; }
    bool upload_sent_all() const;
    bool upload_failed_on_client() const;

    Task<bool> relay_response(UpstreamLease& lease, const RequestFacts& facts);
    ResponsePlan prepare_response_head(const Backend& backend, const RequestFacts& facts);
    bool response_body_relayed(BodyEnd end);

    Task<bool> answer_here(const LocalAnswer& answer, const RequestFacts& facts);
    Task<bool> answer_failure(Exchange outcome, const RequestFacts& facts);
    Task<void> refuse(const Refusal& refusal);
    Task<void> reply_error(boost::beast::http::status status, std::string_view reason,
                           bool close = true);

    // An upload beside the response: its own deadline and relay (the response's steps arm the
    // connection's), and its coroutine.
    struct Upload {
        Upload(ClientConnection<Stream>& conn, UpstreamStream& to);
        UpstreamStream& stream;  // the try's backend connection (its lease may have let it go)
        ConnectionDeadline deadline;
        BodyRelay relay;
        SideTask task;
        Exchange outcome = Exchange::response_ready;  // once ended: response_ready if all went
        bool ended = false;
        bool stopped = false;  // ended by stop_upload, not by itself
    };

    ClientConnection<Stream>& conn_;
    const Config& config_;
    ExchangeState& ex_;
    std::optional<Upload> upload_;  // while the request has a body to send, and until it is sent
    bool reading_head_ = false;     // a response head read the upload's end is to restart
    bool response_over_ = false;    // the response has been relayed (or failed)
    unsigned client_version_ = 11;  // the request's, before it is rewritten as HTTP/1.1
    bool cut_before_ = false;       // a try of it was cut (SessionHandle::awaiting_after_cut)
    bool head_arrived_ = false;     // a head arrived (parsed or refused): the request is counted
    bool body_started_ = false;     // some of the request body was consumed: it cannot go twice
    bool interim_sent_ = false;     // a 1xx went to the client: no retry past it
    bool head_broken_ = false;      // this try's response head began, then broke: no retry
    bool tries_left_ = false;       // the try in progress may be followed by another
    bool set_sticky_ = false;       // the weights chose: the response pins the colour
    bool colour_pinned_ = false;    // a preview header or a sticky cookie chose the colour
    bool sticky_pinned_ = false;  // the sticky cookie did: it yields to a revert, as new requests'
    std::uint64_t split_since_ = 0;  // the routing snapshot's split, which a new cookie names
    std::chrono::steady_clock::time_point started_;
    std::chrono::steady_clock::time_point upstream_started_;
    // For the served colour's latency: started_, or its first try's start after a crossing.
    std::chrono::steady_clock::time_point colour_started_;
    std::chrono::steady_clock::time_point response_due_;  // upstream_response, from the first try
    MethodClass method_ = MethodClass::other;
    std::uint32_t served_slot_ = 0;  // 0: no backend; else the backend id + 1
    // The answering try's outcome, told to outlier detection and canary analysis once its body
    // is through (tell_answer): a response cut or stalled mid-body is the backend's failure.
    TryOutcome answer_outcome_ = TryOutcome::ok;
    bool answer_untold_ = false;
    std::size_t served_colour_ = 0;
};

}  // namespace bg
