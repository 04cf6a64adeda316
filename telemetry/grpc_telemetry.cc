// The interceptors keep per-call state in the interceptor object itself (gRPC creates
// one per call and destroys it when the call is done). The one piece of shared state is
// the table of active server spans, which lets handler code find its span from the
// ServerContext; it is a mutex-guarded hash map touched twice per call.
#include "telemetry/grpc_telemetry.h"

#include <chrono>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
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

// OpenTelemetry's RPC conventions: a server span fails only on codes that mean the
// server could not do its job; a client span fails on any code but OK.
bool IsServerError(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::UNIMPLEMENTED:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DATA_LOSS:
      return true;
    default:
      return false;
  }
}

// Name ("parley.v1.SessionService/SendMessage") and status of a finished RPC span, from
// the full method name "/package.Service/Method"; its rpc.* attributes are fields.
void FillRpcSpan(SpanData& span, absl::string_view method, const grpc::Status& status,
                 bool is_error) {
  span.name = std::string(absl::StripPrefix(method, "/"));
  span.rpc = RpcAttributes{.status_code = status.error_code(), .failed = is_error};
  if (is_error) {
    span.status = SpanStatus::kError;
    span.status_message = status.error_message();
  }
}

}  // namespace

// The span, metrics and access log of one server call, for the interceptor and for
// handlers that instrument their calls themselves.
class ServerCallTelemetry::Record {
 public:
  Record(const GrpcTelemetry::Instruments& instruments, const Logger& logger, const Tracer& tracer,
         std::string method, const grpc::ServerContextBase* context)
      : context_(context),
        instruments_(instruments),
        logger_(logger),
        tracer_(tracer),
        method_(std::move(method)),
        in_flight_(instruments.server_in_flight.WithLabels({method_})) {
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
    span_.context = tracer_.NewSpanContext(parent);
    if (parent) span_.parent_span_id = parent->span_id();
    ActiveSpans::Get().Add(context_, span_.context);
  }

  void Finish(const grpc::Status& status) {
    if (finished_) return;
    finished_ = true;
    span_.end = absl::Now();
    std::string code = StatusCodeName(status.error_code());
    double seconds = absl::ToDoubleSeconds(span_.end - span_.start);
    in_flight_.Add(-1);
    instruments_.server_handled.WithLabels({method_, code}).Increment();
    instruments_.server_latency.WithLabels({method_}).Observe(seconds);
    if (logger_.Enabled(LogLevel::kDebug)) {  // The fields (the peer above all) cost.
      logger_.Debug("rpc",
                    {{"method", method_},
                     {"code", code},
                     {"duration_ms", seconds * 1000.0},
                     {"peer", context_ != nullptr ? context_->peer() : std::string()}},
                    &span_.context);
    }
    if (!span_.context.sampled()) return;
    FillRpcSpan(span_, method_, status, IsServerError(status.error_code()));
    tracer_.End(std::move(span_));  // The call is over: span_ is not read again.
  }

 private:
  const grpc::ServerContextBase* context_;
  const GrpcTelemetry::Instruments& instruments_;
  const Logger& logger_;
  const Tracer& tracer_;
  std::string method_;
  Gauge& in_flight_;  // Looked up once: the call counts in and out.
  SpanData span_;
  bool finished_ = false;
};

namespace {

class ServerInterceptor final : public grpc::experimental::Interceptor {
 public:
  ServerInterceptor(ServerRpcInfo* info, const GrpcTelemetry::Instruments& instruments,
                    const Logger& logger, const Tracer& tracer)
      : record_(instruments, logger, tracer, MethodName(info->method()), info->server_context()) {}

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
                    const Tracer& tracer)
      : instruments_(instruments),
        tracer_(tracer),
        method_(MethodName(info->method())),
        // The call is created on the caller's thread: its open scope, if any, is the
        // parent when the caller sets no traceparent itself.
        ambient_(ContextScope::Current()) {
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
    if (!parent) parent = ambient_;
    span_.context = tracer_.NewSpanContext(parent);
    if (parent) span_.parent_span_id = parent->span_id();
    metadata.erase(std::string(kTraceparentHeader));
    metadata.emplace(std::string(kTraceparentHeader), span_.context.ToTraceparent());
    if (tracestate.empty() && !span_.context.tracestate().empty()) {
      metadata.emplace(std::string(kTracestateHeader), span_.context.tracestate());
    }
  }

  void Finish(const grpc::Status& status) {
    span_.end = absl::Now();
    std::string code = StatusCodeName(status.error_code());
    instruments_.client_handled.WithLabels({method_, code}).Increment();
    instruments_.client_latency.WithLabels({method_}).Observe(
        absl::ToDoubleSeconds(span_.end - span_.start));
    if (!span_.context.sampled()) return;
    FillRpcSpan(span_, method_, status, status.error_code() != grpc::StatusCode::OK);
    tracer_.End(std::move(span_));  // The call is over: span_ is not read again.
  }

  const GrpcTelemetry::Instruments& instruments_;
  const Tracer& tracer_;
  std::string method_;
  std::optional<TraceContext> ambient_;
  SpanData span_;
};

class ServerFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  ServerFactory(const GrpcTelemetry::Instruments& instruments, const Logger& logger,
                const Tracer& tracer, const absl::flat_hash_set<std::string>& left_to_handlers)
      : instruments_(instruments),
        logger_(logger),
        tracer_(tracer),
        left_to_handlers_(left_to_handlers) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(ServerRpcInfo* info) override {
    // No interceptor at all for these calls: gRPC then has nothing to intercept.
    if (left_to_handlers_.contains(absl::NullSafeStringView(info->method()))) return nullptr;
    return new ServerInterceptor(info, instruments_, logger_, tracer_);
  }

 private:
  const GrpcTelemetry::Instruments& instruments_;
  const Logger& logger_;
  const Tracer& tracer_;
  const absl::flat_hash_set<std::string>& left_to_handlers_;
};

class ClientFactory final : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  ClientFactory(const GrpcTelemetry::Instruments& instruments, const Tracer& tracer)
      : instruments_(instruments), tracer_(tracer) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(ClientRpcInfo* info) override {
    return new ClientInterceptor(info, instruments_, tracer_);
  }

 private:
  const GrpcTelemetry::Instruments& instruments_;
  const Tracer& tracer_;
};

}  // namespace

GrpcTelemetry::GrpcTelemetry(Registry& registry, const Logger& logger, SpanSink& sink)
    : GrpcTelemetry(registry, logger,
                    std::make_unique<Tracer>(sink, Sampler::ParentBased(Sampler::AlwaysOn())),
                    nullptr) {}

GrpcTelemetry::GrpcTelemetry(Registry& registry, const Logger& logger, const Tracer& tracer)
    : GrpcTelemetry(registry, logger, std::unique_ptr<Tracer>(), &tracer) {}

GrpcTelemetry::GrpcTelemetry(Registry& registry, const Logger& logger,
                             std::unique_ptr<Tracer> owned_tracer, const Tracer* tracer)
    : logger_(logger),
      owned_tracer_(std::move(owned_tracer)),
      tracer_(tracer != nullptr ? *tracer : *owned_tracer_),
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
  out.push_back(std::make_unique<ServerFactory>(instruments_, logger_, tracer_, left_to_handlers_));
  return out;
}

std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
GrpcTelemetry::ClientInterceptors() {
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> out;
  out.push_back(std::make_unique<ClientFactory>(instruments_, tracer_));
  return out;
}

void GrpcTelemetry::InstrumentInHandler(std::string method) {
  left_to_handlers_.insert(std::move(method));
}

ServerCallTelemetry::ServerCallTelemetry(GrpcTelemetry& telemetry,
                                         const grpc::ServerContextBase& context, std::string method)
    : record_(std::make_unique<Record>(telemetry.instruments_, telemetry.logger_, telemetry.tracer_,
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
  return std::string(GrpcCodeName(static_cast<int>(code)));
}

}  // namespace parley::telemetry
