#include "common/server/service_host.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>

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
  span_sink_ = std::make_unique<telemetry::LogSpanSink>(*logger_);
  grpc_telemetry_ = std::make_unique<telemetry::GrpcTelemetry>(registry_, *logger_, *span_sink_);
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
  builder.experimental().SetInterceptorCreators(grpc_telemetry_->ServerInterceptors());
  server_ = builder.BuildAndStart();
  if (!server_ || grpc_port_ == 0) {
    server_.reset();
    admin_.reset();
    return absl::UnavailableError(absl::StrCat("cannot listen for gRPC on ", options_.grpc_addr));
  }
  server_->GetHealthCheckService()->SetServingStatus(true);
  admin_->SetReady(true);
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
  server_->GetHealthCheckService()->SetServingStatus(false);
  admin_->SetReady(false);
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
