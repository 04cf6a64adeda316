// Tracing, metrics and access logs for every gRPC call, as gRPC interceptors — or, for
// long server streams, recorded by the handler itself (ServerCallTelemetry).
//
// Server side: each incoming call's `traceparent`/`tracestate` metadata is parsed (a
// call without one starts a new trace) and a SERVER span is opened; handlers find it
// with CurrentSpan(ctx). When the status is sent, the call is counted by method and
// code, its latency observed, an access log line written at debug level, and the span
// handed to the SpanSink.
//
// Client side: PrepareDownstream() copies the handler's span and deadline into an
// outgoing ClientContext; the client interceptor then opens a CLIENT span as a child of
// it and rewrites `traceparent` to name that span, so the next service's SERVER span is
// its child. Calls made outside any handler start a new trace.
//
//   GrpcTelemetry telemetry(registry, logger, sink);
//   builder.experimental().SetInterceptorCreators(telemetry.ServerInterceptors());
//   auto channel = telemetry.CreateChannel("127.0.0.1:7071");
//   ...
//   grpc::ClientContext downstream;
//   PrepareDownstream(*server_ctx, downstream, absl::Seconds(30));
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/client_interceptor.h>
#include <grpcpp/support/server_interceptor.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/time/time.h"
#include "telemetry/log.h"
#include "telemetry/metrics.h"
#include "telemetry/span.h"
#include "telemetry/trace_context.h"
#include "telemetry/tracer.h"

namespace parley::telemetry {

class GrpcTelemetry {
 public:
  // All three must outlive this object and every server and channel built with it.
  // Every span is sampled unless the caller's traceparent says otherwise.
  GrpcTelemetry(Registry& registry, const Logger& logger, SpanSink& sink);
  // Spans are started (and sampled) by `tracer`.
  GrpcTelemetry(Registry& registry, const Logger& logger, const Tracer& tracer);

  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
  ServerInterceptors();
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
  ClientInterceptors();

  // Leaves calls of `method` (e.g. "/parley.v1.SessionService/StreamEvents") to their
  // handler, which records them with a ServerCallTelemetry: no interceptor is created
  // for them. For long server streams: while any interceptor is installed on a call,
  // gRPC passes every completed write through the completion queue a second time, which
  // cost the gateway's fan-out about 40% of its CPU per delivered event. Call before the
  // server is built.
  void InstrumentInHandler(std::string method);

  // An insecure channel to `target` with the client interceptors installed.
  std::shared_ptr<grpc::Channel> CreateChannel(const std::string& target,
                                               grpc::ChannelArguments args = {});

  // Internal: state shared by the interceptors.
  struct Instruments {
    CounterFamily& server_handled;
    HistogramFamily& server_latency;
    GaugeFamily& server_in_flight;
    CounterFamily& client_handled;
    HistogramFamily& client_latency;
  };

 private:
  friend class ServerCallTelemetry;
  GrpcTelemetry(Registry& registry, const Logger& logger, std::unique_ptr<Tracer> owned_tracer,
                const Tracer* tracer);
  const Logger& logger_;
  std::unique_ptr<Tracer> owned_tracer_;  // Null when the caller supplied the tracer.
  const Tracer& tracer_;
  Instruments instruments_;
  absl::flat_hash_set<std::string> left_to_handlers_;
};

// The telemetry of one call whose handler records it itself (InstrumentInHandler): the
// SERVER span, metrics and access log line the interceptor would have produced, and
// CurrentSpan() works for the call. Construct it in the handler; call Finish() with the
// status the call ends with (the destructor records CANCELLED if Finish never ran).
class ServerCallTelemetry {
 public:
  ServerCallTelemetry(GrpcTelemetry& telemetry, const grpc::ServerContextBase& context,
                      std::string method);
  ~ServerCallTelemetry();
  ServerCallTelemetry(ServerCallTelemetry&&) noexcept;
  ServerCallTelemetry& operator=(ServerCallTelemetry&&) = delete;

  void Finish(const grpc::Status& status);

  class Record;  // Shared with the interceptor.

 private:
  std::unique_ptr<Record> record_;
};

// A server-streaming reactor whose call its handler records (InstrumentInHandler). End
// the call with FinishCall, which records the status before sending it.
template <typename Response>
class InstrumentedWriteReactor : public grpc::ServerWriteReactor<Response> {
 protected:
  explicit InstrumentedWriteReactor(ServerCallTelemetry call) : call_(std::move(call)) {}

  void FinishCall(const grpc::Status& status) {
    call_.Finish(status);
    this->Finish(status);
  }

 private:
  ServerCallTelemetry call_;
};

// The SERVER span of the call `context` is serving, while that call is in flight.
std::optional<TraceContext> CurrentSpan(const grpc::ServerContextBase* context);

// For a synchronous handler that calls other services: while it lives, calls made on
// this thread continue the trace of the call `context` serves (a ContextScope on its
// SERVER span), without a PrepareDownstream per call.
//
//   grpc::Status Handler(grpc::ServerContext* context, ...) {
//     HandlerTraceScope trace(context);
class HandlerTraceScope {
 public:
  explicit HandlerTraceScope(const grpc::ServerContextBase* context)
      : span_(CurrentSpan(context)), scope_(span_) {}
  // The call's SERVER span (nullopt when the call is not instrumented).
  const std::optional<TraceContext>& span() const { return span_; }

 private:
  std::optional<TraceContext> span_;
  ContextScope scope_;
};

// Makes `downstream` continue the trace of the call being served by `upstream` and
// inherit its deadline, capped at now + `max_timeout`.
void PrepareDownstream(const grpc::ServerContextBase& upstream, grpc::ClientContext& downstream,
                       absl::Duration max_timeout);

// Makes `downstream` a child of `parent` (for calls made outside a handler, e.g. by
// a background worker that holds the trace of the turn it runs).
void PrepareDownstream(const TraceContext& parent, grpc::ClientContext& downstream);

// The gRPC status code name, e.g. "NOT_FOUND".
std::string StatusCodeName(grpc::StatusCode code);

}  // namespace parley::telemetry
