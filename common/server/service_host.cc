#include "common/server/service_host.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace parley {
namespace {

sigset_t TerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

}  // namespace

void AddServerFlags(Flags& flags, ServerOptions* options) {
  flags.HostPort("grpc_addr", &options->grpc_addr, "gRPC listen address (port 0: any free port)");
  flags.HostPort("admin_addr", &options->admin_addr,
                 "admin HTTP listen address for /metrics, /healthz, /readyz");
  flags.Choice("log_level", &options->log_level, "minimum level of JSON log lines on stderr",
               {"debug", "info", "warn", "error"});
  flags.Duration("drain_timeout", &options->drain_timeout,
                 "on SIGTERM, how long in-flight calls may run before they are cancelled");
  flags.Duration("dependency_probe_interval", &options->dependency_probe_interval,
                 "how often health checks the service's hard dependencies");
  flags.Int("max_message_bytes", &options->max_message_bytes,
            "largest gRPC message this service accepts", 64 << 10, 64 << 20);
  flags.Duration("keepalive_time", &options->keepalive_time,
                 "ping a connection after this long without traffic (HTTP/2 keepalive)");
  flags.Duration("keepalive_timeout", &options->keepalive_timeout,
                 "drop a connection whose keepalive ping is not answered within this");
}

void ParseTracingEnvOrExit(const Environment& env, ServerOptions* options) {
  absl::StatusOr<telemetry::TracingConfig> tracing =
      telemetry::TracingConfigFromEnv(env, /*default_service_name=*/"");
  if (!tracing.ok()) {
    fprintf(stderr, "%s\n", std::string(tracing.status().message()).c_str());
    exit(2);
  }
  options->tracing = *std::move(tracing);
}

ServiceHost::ServiceHost(std::string service_name, ServerOptions options)
    : service_name_(std::move(service_name)), options_(std::move(options)) {
  sigset_t signals = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // Debian builds Abseil without NDEBUG, which leaves mutex deadlock detection on: a
  // debugging aid that cost ~10% of the gateway's CPU under fan-out load. Unit tests
  // (which do not run in a ServiceHost) keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  logger_ = std::make_unique<telemetry::Logger>(
      service_name_,
      telemetry::ParseLogLevel(options_.log_level).value_or(telemetry::LogLevel::kInfo));
  telemetry::TracingConfig& tracing = options_.tracing;
  if (tracing.enabled && !tracing.exporter.traces_url.empty()) {
    if (!tracing.exporter.resource.contains("service.name")) {
      tracing.exporter.resource["service.name"] = service_name_;
    }
    span_sink_ =
        std::make_unique<telemetry::OtlpHttpExporter>(tracing.exporter, registry_, *logger_);
  } else {
    span_sink_ = std::make_unique<telemetry::LogSpanSink>(*logger_);
  }
  tracer_ = std::make_unique<telemetry::Tracer>(*span_sink_, tracing.sampler, tracing.enabled);
  grpc_telemetry_ = std::make_unique<telemetry::GrpcTelemetry>(registry_, *logger_, *tracer_);
  registry_
      .AddGauge("parley_build_info", "Always 1; labels say what is running.",
                {"service", "version"})
      .WithLabels({service_name_, PARLEY_VERSION})
      .Set(1);
}

ServiceHost::~ServiceHost() {
  if (server_) Shutdown();
}

void ServiceHost::AddService(grpc::Service* service) { services_.push_back(service); }

void ServiceHost::OnDrain(std::function<void()> hook) { drain_hooks_.push_back(std::move(hook)); }

void ServiceHost::AddDependency(std::string name, std::function<absl::Status()> probe) {
  telemetry::Gauge& up =
      registry_
          .AddGauge("parley_dependency_up", "1 while a hard dependency answers its probe.",
                    {"dependency"})
          .WithLabels({name});
  dependencies_.push_back({.name = std::move(name), .probe = std::move(probe), .up = &up});
}

bool ServiceHost::ProbeDependencies() {
  bool all_up = true;
  for (Dependency& dependency : dependencies_) {
    absl::Status status = dependency.probe();
    if (status.ok() != dependency.ok) {
      if (status.ok()) {
        logger_->Info("dependency up", {{"dependency", dependency.name}});
      } else {
        logger_->Warn("dependency down",
                      {{"dependency", dependency.name}, {"error", status.ToString()}});
      }
    }
    dependency.ok = status.ok();
    dependency.up->Set(dependency.ok ? 1 : 0);
    all_up = all_up && dependency.ok;
  }
  return all_up;
}

void ServiceHost::PublishServingStatus(bool dependencies_up) {
  absl::MutexLock lock(&status_mu_);
  const bool serving = dependencies_up && !draining_;
  // Only "" follows the dependencies: SetServingStatus(bool) would also flip kLivenessService.
  server_->GetHealthCheckService()->SetServingStatus("", serving);
  admin_->SetReady(serving);
}

void ServiceHost::ProbeLoop() {
  while (!stop_probing_.WaitForNotificationWithTimeout(options_.dependency_probe_interval)) {
    PublishServingStatus(ProbeDependencies());
  }
}

int ServiceHost::admin_port() const { return admin_ ? admin_->port() : 0; }

absl::Status ServiceHost::Start() {
  absl::StatusOr<std::unique_ptr<telemetry::AdminServer>> admin =
      telemetry::AdminServer::Start(options_.admin_addr, registry_);
  if (!admin.ok()) return admin.status();
  admin_ = *std::move(admin);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options_.grpc_addr, grpc::InsecureServerCredentials(), &grpc_port_);
  for (grpc::Service* service : services_) builder.RegisterService(service);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options_.max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(options_.keepalive_time)));
  builder.AddChannelArgument(
      GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
      static_cast<int>(absl::ToInt64Milliseconds(options_.keepalive_timeout)));
  // Accept clients' own keepalive pings down to every 5 s, with or without calls open;
  // gRPC's default would answer a client pinging more often than every 5 minutes with
  // GOAWAY "too_many_pings".
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  if (options_.sync_max_idle_threads > 0) {
    builder.SetSyncServerOption(grpc::ServerBuilder::MAX_POLLERS, options_.sync_max_idle_threads);
  }
  builder.experimental().SetInterceptorCreators(grpc_telemetry_->ServerInterceptors());
  server_ = builder.BuildAndStart();
  if (!server_ || grpc_port_ == 0) {
    server_.reset();
    admin_.reset();
    return absl::UnavailableError(absl::StrCat("cannot listen for gRPC on ", options_.grpc_addr));
  }
  // Liveness answers SERVING until the server stops (gRPC's health service then turns every
  // name NOT_SERVING): a Postgres outage must not get a healthy process restarted.
  server_->GetHealthCheckService()->SetServingStatus(kLivenessService, true);
  // Mark every dependency up first, so one that is down at start logs "dependency down".
  for (Dependency& dependency : dependencies_) dependency.ok = true;
  PublishServingStatus(ProbeDependencies());
  if (!dependencies_.empty()) probe_thread_ = std::thread([this] { ProbeLoop(); });
  logger_->Info("serving", {{"grpc_addr", options_.grpc_addr},
                            {"grpc_port", grpc_port_},
                            {"admin_port", admin_->port()},
                            {"version", PARLEY_VERSION}});
  return absl::OkStatus();
}

void ServiceHost::WaitForTerminationSignal() {
  sigset_t signals = TerminationSignals();
  int signal_number = 0;
  while (sigwait(&signals, &signal_number) != 0) {
  }
  logger_->Info("signal received, draining",
                {{"signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"},
                 {"drain_timeout_ms", absl::ToInt64Milliseconds(options_.drain_timeout)}});
}

void ServiceHost::Shutdown() {
  if (!server_) return;
  {
    absl::MutexLock lock(&status_mu_);
    draining_ = true;
  }
  if (!stop_probing_.HasBeenNotified()) stop_probing_.Notify();
  if (probe_thread_.joinable()) probe_thread_.join();
  PublishServingStatus(false);
  for (const std::function<void()>& hook : drain_hooks_) hook();
  server_->Shutdown(absl::ToChronoTime(absl::Now() + options_.drain_timeout));
  server_->Wait();
  server_.reset();
  admin_.reset();
  logger_->Info("stopped");
}

int ServiceHost::Run() {
  absl::Status started = Start();
  if (!started.ok()) {
    logger_->Error("cannot start", {{"error", started.ToString()}});
    return 1;
  }
  WaitForTerminationSignal();
  Shutdown();
  return 0;
}

}  // namespace parley
