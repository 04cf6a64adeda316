// ServiceHost: everything a Parley service process does besides its own RPCs.
//
// It owns the gRPC server (with the telemetry interceptors, gRPC health checking and
// server reflection), the admin HTTP endpoint (/metrics, /healthz, /readyz), the JSON
// logger, the metrics registry, the tracer and its span exporter, and the process
// lifecycle:
//
//   ServerOptions options;                    // filled by AddServerFlags + ParseFlagsOrExit
//   ServiceHost host("parley-store", options);  // first thing in main: blocks SIGTERM/SIGINT
//   MyService service(host.logger());
//   host.AddService(&service);
//   return host.Run();                        // serves until SIGTERM, drains, returns 0
//
// Hard dependencies: a service registers a probe per dependency it cannot serve
// without (store-svc: Postgres; gateway: Redis and store-svc). While any probe fails,
// health answers NOT_SERVING and /readyz 503, so a balancer stops sending calls that
// could only fail; when every probe passes again they turn back to SERVING and 200.
// Each transition is logged and `parley_dependency_up{dependency}` shows the state.
//
//   host.AddDependency("postgres", [&] { return probe.Check(); });
//
// Two gRPC health names: "" is readiness (the rules above; Kubernetes' readiness probe),
// and kLivenessService ("liveness") is SERVING for as long as the process serves gRPC,
// whatever its dependencies do and through the drain (Kubernetes' liveness probe: a
// restart cannot bring Postgres back, so an outage must not restart healthy Pods).
//
// Shutdown: on SIGTERM or SIGINT the health status turns NOT_SERVING and /readyz 503,
// the server stops accepting calls, in-flight calls get up to `drain_timeout` to finish
// (then they are cancelled), and Run() returns 0.
//
// Threads: gRPC's own pool runs the handlers; one admin HTTP thread; one OTLP export
// thread when an endpoint is configured; one probe thread when dependencies are registered (it runs
// the probes in turn every `dependency_probe_interval`); the thread that calls Run() waits for the
// signal.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/config.h"
#include "telemetry/admin_server.h"
#include "telemetry/grpc_telemetry.h"
#include "telemetry/log.h"
#include "telemetry/metrics.h"
#include "telemetry/otel_config.h"
#include "telemetry/span.h"
#include "telemetry/tracer.h"

namespace parley {

// The gRPC health service name that reports the process alive, not its dependencies.
inline constexpr char kLivenessService[] = "liveness";

struct ServerOptions {
  std::string grpc_addr = "127.0.0.1:0";
  std::string admin_addr = "127.0.0.1:0";
  std::string log_level = "info";
  absl::Duration drain_timeout = absl::Seconds(10);
  absl::Duration dependency_probe_interval = absl::Seconds(1);
  // Largest gRPC message accepted (the biggest legitimate ones are 1 MiB file chunks
  // and 1 MiB messages, with their framing).
  int64_t max_message_bytes = 4 << 20;
  // HTTP/2 PING on a connection idle this long, dropped when unanswered for
  // keepalive_timeout: finds clients that vanished without a FIN (and keeps NAT and
  // load-balancer connection tables warm). Clients may ping as often as every 5 s,
  // even with no call open, without being told "too many pings".
  absl::Duration keepalive_time = absl::Seconds(20);
  absl::Duration keepalive_timeout = absl::Seconds(10);
  // Services on gRPC's sync API (handlers that block): handler threads kept waiting for
  // the next call, at most. gRPC starts a thread whenever every waiting one took a call
  // and ends a thread that finishes a call while this many already wait, so a bound
  // below the calls in flight creates and destroys a thread per call under load. 0
  // keeps gRPC's default (2).
  int sync_max_idle_threads = 0;
  // Sampling and OTLP export (the OTEL_* variables). Without an endpoint, sampled spans
  // go to debug log lines.
  telemetry::TracingConfig tracing;
};

// Declares --grpc_addr, --admin_addr, --log_level, --drain_timeout,
// --dependency_probe_interval, --max_message_bytes, --keepalive_time and
// --keepalive_timeout; the current values of `options` are the defaults.
void AddServerFlags(Flags& flags, ServerOptions* options);

// Fills options->tracing from the OTEL_* variables in `env` (see telemetry/otel_config.h);
// on a malformed value prints the error naming the variable and exits with status 2,
// as ParseFlagsOrExit does.
void ParseTracingEnvOrExit(const Environment& env, ServerOptions* options);

class ServiceHost {
 public:
  // Blocks SIGTERM and SIGINT in the calling thread, so construct it in main() before
  // anything starts a thread: every later thread inherits the mask and only Run()
  // receives the signal.
  ServiceHost(std::string service_name, ServerOptions options);
  ~ServiceHost();

  telemetry::Logger& logger() { return *logger_; }
  telemetry::Registry& registry() { return registry_; }
  // Starts the spans of work that is not an RPC (a turn, a model call, a tool run).
  const telemetry::Tracer& tracer() const { return *tracer_; }
  telemetry::GrpcTelemetry& grpc_telemetry() { return *grpc_telemetry_; }
  const std::string& service_name() const { return service_name_; }

  // Registers a service implementation. It must outlive the host. Call before Start().
  void AddService(grpc::Service* service);

  // Registers a hard dependency. `probe` answers OK while the dependency can serve; it
  // runs on the probe thread (once in Start(), then every dependency_probe_interval)
  // and must return within about a second. Call before Start().
  void AddDependency(std::string name, std::function<absl::Status()> probe);

  // Runs `hook` when shutdown begins, once health reports NOT_SERVING and before the
  // server stops taking calls: for services that hold long streams, to end them with a
  // status that tells each client where to resume elsewhere. Call before Start().
  void OnDrain(std::function<void()> hook);

  // Binds both ports and starts serving; logs one "serving" line with the ports.
  absl::Status Start();
  // Waits for SIGTERM or SIGINT.
  void WaitForTerminationSignal();
  // Health NOT_SERVING, stop accepting, drain up to drain_timeout, stop.
  void Shutdown();
  // Start, wait for the signal, shut down. Returns the process exit code.
  int Run();

  int grpc_port() const { return grpc_port_; }
  int admin_port() const;

 private:
  struct Dependency {
    std::string name;
    std::function<absl::Status()> probe;
    telemetry::Gauge* up = nullptr;
    bool ok = false;
  };
  // Runs every probe once; logs the ones that changed; true when all pass.
  bool ProbeDependencies();
  // Health and /readyz: SERVING when started, not draining and every dependency is up.
  void PublishServingStatus(bool dependencies_up) ABSL_LOCKS_EXCLUDED(status_mu_);
  void ProbeLoop();

  std::string service_name_;
  ServerOptions options_;
  std::unique_ptr<telemetry::Logger> logger_;
  telemetry::Registry registry_;
  // The OTLP exporter, or debug log lines when no endpoint is configured.
  std::unique_ptr<telemetry::SpanSink> span_sink_;
  std::unique_ptr<telemetry::Tracer> tracer_;
  std::unique_ptr<telemetry::GrpcTelemetry> grpc_telemetry_;
  std::vector<grpc::Service*> services_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<telemetry::AdminServer> admin_;
  int grpc_port_ = 0;
  std::vector<Dependency> dependencies_;  // Only the probe thread touches it after Start().
  std::vector<std::function<void()>> drain_hooks_;
  absl::Mutex status_mu_;
  bool draining_ ABSL_GUARDED_BY(status_mu_) = false;
  absl::Notification stop_probing_;
  std::thread probe_thread_;
};

}  // namespace parley
