// The interceptors keep per-call state in the interceptor object itself (gRPC creates
// one per call and destroys it when the call is done). The one piece of shared state is
// the table of active server spans, which lets handler code find its span from the
// ServerContext; it is a mutex-guarded hash map touched twice per call.
#include "telemetry/grpc_telemetry.h"

#include <chrono>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace parley::telemetry {
namespace {

using grpc::experimental::ClientRpcInfo;
using grpc::experimental::InterceptionHookPoints;
using grpc::experimental::InterceptorBatchMethods;
using grpc::experimental::ServerRpcInfo;

class ActiveSpans {
 public:
  static ActiveSpans& Get() {
    static ActiveSpans* spans = new ActiveSpans();
    return *spans;
  }
  void Add(const grpc::ServerContextBase* context, const TraceContext& span) {
    absl::MutexLock lock(&mu_);
    spans_[context] = span;
  }
  void Remove(const grpc::ServerContextBase* context) {
    absl::MutexLock lock(&mu_);
    spans_.erase(context);
  }
  std::optional<TraceContext> Find(const grpc::ServerContextBase* context) {
    absl::MutexLock lock(&mu_);
    auto it = spans_.find(context);
    if (it == spans_.end()) return std::nullopt;
    return it->second;
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<const grpc::ServerContextBase*, TraceContext> spans_ ABSL_GUARDED_BY(mu_);
};

std::string MethodName(const char* method) {
  return method != nullptr && *method != '\0' ? method : "unknown";
}

template <typename Map>
absl::string_view FindMetadata(const Map& metadata, absl::string_view key) {
  auto it = metadata.find(typename Map::key_type(key.data(), key.size()));
  if (it == metadata.end()) return {};
  return absl::string_view(it->second.data(), it->second.size());
}

}  // namespace

// The span, metrics and access log of one server call, for the interceptor and for
// handlers that instrument their calls themselves.
class ServerCallTelemetry::Record {
 public:
  Record(const GrpcTelemetry::Instruments& instruments, const Logger& logger, SpanSink& sink,
         std::string method, const grpc::ServerContextBase* context)
      : context_(context),
        instruments_(instruments),
        logger_(logger),
        sink_(sink),
        in_flight_(instruments.server_in_flight.WithLabels({method})) {
    span_.name = std::move(method);
    span_.kind = SpanKind::kServer;
    span_.start = absl::Now();
    in_flight_.Add(1);
  }

  ~Record() {
    if (!finished_) Finish(grpc::Status(grpc::StatusCode::CANCELLED, "call ended without status"));
    ActiveSpans::Get().Remove(context_);
  }

  void Start(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) {
    std::optional<TraceContext> parent = TraceContext::Parse(
        FindMetadata(metadata, kTraceparentHeader), FindMetadata(metadata, kTracestateHeader));
    if (parent) {
      span_.context = parent->NewChild();
      span_.parent_span_id = parent->span_id();
    } else {
      span_.context = TraceContext::NewRoot();
    }
    span_.attributes["rpc.system"] = "grpc";
    span_.attributes["rpc.method"] = span_.name;
    ActiveSpans::Get().Add(context_, span_.context);
  }

  void Finish(const grpc::Status& status) {
    if (finished_) return;
    finished_ = true;
    span_.end = absl::Now();
    std::string code = StatusCodeName(status.error_code());
    double seconds = absl::ToDoubleSeconds(span_.end - span_.start);
    in_flight_.Add(-1);
    instruments_.server_handled.WithLabels({span_.name, code}).Increment();
    instruments_.server_latency.WithLabels({span_.name}).Observe(seconds);
    span_.status_code = code;
    span_.status_message = status.error_message();
    logger_.Debug("rpc",
                  {{"method", span_.name},
                   {"code", code},
                   {"duration_ms", seconds * 1000.0},
                   {"peer", context_ != nullptr ? context_->peer() : std::string()}},
                  &span_.context);
    sink_.OnEnd(span_);
  }

 private:
  const grpc::ServerContextBase* context_;
  const GrpcTelemetry::Instruments& instruments_;
  const Logger& logger_;
  SpanSink& sink_;
  Gauge& in_flight_;  // Looked up once: the call counts in and out.
  SpanData span_;
  bool finished_ = false;
};

namespace {

class ServerInterceptor final : public grpc::experimental::Interceptor {
 public:
  ServerInterceptor(ServerRpcInfo* info, const GrpcTelemetry::Instruments& instruments,
                    const Logger& logger, SpanSink& sink)
      : record_(instruments, logger, sink, MethodName(info->method()), info->server_context()) {}

  void Intercept(InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      record_.Start(*methods->GetRecvInitialMetadata());
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      record_.Finish(methods->GetSendStatus());
    }
    methods->Proceed();
  }

 private:
  ServerCallTelemetry::Record record_;
};

class ClientInterceptor final : public grpc::experimental::Interceptor {
 public:
  ClientInterceptor(ClientRpcInfo* info, const GrpcTelemetry::Instruments& instruments,
                    SpanSink& sink)
      : instruments_(instruments), sink_(sink) {
    span_.name = MethodName(info->method());
    span_.kind = SpanKind::kClient;
    span_.start = absl::Now();
  }

  void Intercept(InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      Inject(*methods->GetSendInitialMetadata());
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_STATUS)) {
      Finish(*methods->GetRecvStatus());
    }
    methods->Proceed();
  }

 private:
  void Inject(std::multimap<std::string, std::string>& metadata) {
    std::string tracestate(FindMetadata(metadata, kTracestateHeader));
    std::optional<TraceContext> parent =
        TraceContext::Parse(FindMetadata(metadata, kTraceparentHeader), tracestate);
    if (parent) {
      span_.context = parent->NewChild();
      span_.parent_span_id = parent->span_id();
    } else {
      span_.context = TraceContext::NewRoot();
    }
    metadata.erase(std::string(kTraceparentHeader));
    metadata.emplace(std::string(kTraceparentHeader), span_.context.ToTraceparent());
    span_.attributes["rpc.system"] = "grpc";
    span_.attributes["rpc.method"] = span_.name;
  }

  void Finish(const grpc::Status& status) {
    span_.end = absl::Now();
    std::string code = StatusCodeName(status.error_code());
    instruments_.client_handled.WithLabels({span_.name, code}).Increment();
    instruments_.client_latency.WithLabels({span_.name})
        .Observe(absl::ToDoubleSeconds(span_.end - span_.start));
    span_.status_code = code;
    span_.status_message = status.error_message();
    sink_.OnEnd(span_);
  }

  const GrpcTelemetry::Instruments& instruments_;
  SpanSink& sink_;
  SpanData span_;
};

class ServerFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  ServerFactory(const GrpcTelemetry::Instruments& instruments, const Logger& logger, SpanSink& sink,
                const absl::flat_hash_set<std::string>& left_to_handlers)
      : instruments_(instruments),
        logger_(logger),
        sink_(sink),
        left_to_handlers_(left_to_handlers) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(ServerRpcInfo* info) override {
    // No interceptor at all for these calls: gRPC then has nothing to intercept.
    if (left_to_handlers_.contains(absl::NullSafeStringView(info->method()))) return nullptr;
    return new ServerInterceptor(info, instruments_, logger_, sink_);
  }

 private:
  const GrpcTelemetry::Instruments& instruments_;
  const Logger& logger_;
  SpanSink& sink_;
  const absl::flat_hash_set<std::string>& left_to_handlers_;
};

class ClientFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  ClientFactory(const GrpcTelemetry::Instruments& instruments, SpanSink& sink)
      : instruments_(instruments), sink_(sink) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(ClientRpcInfo* info) override {
    return new ClientInterceptor(info, instruments_, sink_);
  }

 private:
  const GrpcTelemetry::Instruments& instruments_;
  SpanSink& sink_;
};

}  // namespace

GrpcTelemetry::GrpcTelemetry(Registry& registry, const Logger& logger, SpanSink& sink)
    : logger_(logger),
      sink_(sink),
      instruments_{
          registry.AddCounter("parley_grpc_server_handled_total",
                              "RPCs served, by method and status code.", {"method", "code"}),
          registry.AddHistogram("parley_grpc_server_handling_seconds",
                                "Time from receiving an RPC to sending its status.", {"method"}),
          registry.AddGauge("parley_grpc_server_in_flight", "RPCs being served.", {"method"}),
          registry.AddCounter("parley_grpc_client_handled_total",
                              "RPCs made to other services, by method and status code.",
                              {"method", "code"}),
          registry.AddHistogram("parley_grpc_client_handling_seconds",
                                "Latency of RPCs made to other services.", {"method"})} {}

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
GrpcTelemetry::ServerInterceptors() {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> out;
  out.push_back(std::make_unique<ServerFactory>(instruments_, logger_, sink_, left_to_handlers_));
  return out;
}

std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
GrpcTelemetry::ClientInterceptors() {
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> out;
  out.push_back(std::make_unique<ClientFactory>(instruments_, sink_));
  return out;
}

void GrpcTelemetry::InstrumentInHandler(std::string method) {
  left_to_handlers_.insert(std::move(method));
}

ServerCallTelemetry::ServerCallTelemetry(GrpcTelemetry& telemetry,
                                         const grpc::ServerContextBase& context, std::string method)
    : record_(std::make_unique<Record>(telemetry.instruments_, telemetry.logger_, telemetry.sink_,
                                       std::move(method), &context)) {
  record_->Start(context.client_metadata());
}

ServerCallTelemetry::~ServerCallTelemetry() = default;
ServerCallTelemetry::ServerCallTelemetry(ServerCallTelemetry&&) noexcept = default;

void ServerCallTelemetry::Finish(const grpc::Status& status) { record_->Finish(status); }

std::shared_ptr<grpc::Channel> GrpcTelemetry::CreateChannel(const std::string& target,
                                                            grpc::ChannelArguments args) {
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      target, grpc::InsecureChannelCredentials(), args, ClientInterceptors());
}

std::optional<TraceContext> CurrentSpan(const grpc::ServerContextBase* context) {
  return ActiveSpans::Get().Find(context);
}

void PrepareDownstream(const TraceContext& parent, grpc::ClientContext& downstream) {
  downstream.AddMetadata(std::string(kTraceparentHeader), parent.ToTraceparent());
  if (!parent.tracestate().empty()) {
    downstream.AddMetadata(std::string(kTracestateHeader), parent.tracestate());
  }
}

void PrepareDownstream(const grpc::ServerContextBase& upstream, grpc::ClientContext& downstream,
                       absl::Duration max_timeout) {
  if (std::optional<TraceContext> span = CurrentSpan(&upstream)) {
    PrepareDownstream(*span, downstream);
  }
  auto cap = std::chrono::system_clock::now() + absl::ToChronoMilliseconds(max_timeout);
  downstream.set_deadline(std::min(upstream.deadline(), cap));
}

std::string StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

}  // namespace parley::telemetry
