// ServiceHost: everything a Parley service process does besides its own RPCs.
//
// It owns the gRPC server (with the telemetry interceptors, gRPC health checking and
// server reflection), the admin HTTP endpoint (/metrics, /healthz, /readyz), the JSON
// logger, the metrics registry and the span sink, and the process lifecycle:
//
//   ServerOptions options;                    // filled by AddServerFlags + ParseFlagsOrExit
//   ServiceHost host("parley-store", options);  // first thing in main: blocks SIGTERM/SIGINT
//   MyService service(host.logger());
//   host.AddService(&service);
//   return host.Run();                        // serves until SIGTERM, drains, returns 0
//
// Shutdown: on SIGTERM or SIGINT the health status turns NOT_SERVING and /readyz 503,
// the server stops accepting calls, in-flight calls get up to `drain_timeout` to finish
// (then they are cancelled), and Run() returns 0.
//
// Threads: gRPC's own pool runs the handlers; one admin HTTP thread; the thread that
// calls Run() waits for the signal.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/config.h"
#include "telemetry/admin_server.h"
#include "telemetry/grpc_telemetry.h"
#include "telemetry/log.h"
#include "telemetry/metrics.h"
#include "telemetry/span.h"

namespace parley {

struct ServerOptions {
  std::string grpc_addr = "127.0.0.1:0";
  std::string admin_addr = "127.0.0.1:0";
  std::string log_level = "info";
  absl::Duration drain_timeout = absl::Seconds(10);
};

// Declares --grpc_addr, --admin_addr, --log_level and --drain_timeout; the current
// values of `options` are the defaults.
void AddServerFlags(Flags& flags, ServerOptions* options);

class ServiceHost {
 public:
  // Blocks SIGTERM and SIGINT in the calling thread, so construct it in main() before
  // anything starts a thread: every later thread inherits the mask and only Run()
  // receives the signal.
  ServiceHost(std::string service_name, ServerOptions options);
  ~ServiceHost();

  telemetry::Logger& logger() { return *logger_; }
  telemetry::Registry& registry() { return registry_; }
  telemetry::GrpcTelemetry& grpc_telemetry() { return *grpc_telemetry_; }
  const std::string& service_name() const { return service_name_; }

  // Registers a service implementation. It must outlive the host. Call before Start().
  void AddService(grpc::Service* service);

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
  std::string service_name_;
  ServerOptions options_;
  std::unique_ptr<telemetry::Logger> logger_;
  telemetry::Registry registry_;
  std::unique_ptr<telemetry::LogSpanSink> span_sink_;
  std::unique_ptr<telemetry::GrpcTelemetry> grpc_telemetry_;
  std::vector<grpc::Service*> services_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<telemetry::AdminServer> admin_;
  int grpc_port_ = 0;
};

}  // namespace parley
