// The admin HTTP endpoint every service serves next to its gRPC port:
//
//   GET /metrics  Prometheus text from the Registry
//   GET /healthz  200 "ok" while the process runs
//   GET /readyz   200 while serving, 503 while starting or draining
//
// A single thread accepts and answers one short request at a time (Connection: close);
// scrapes and probes are rare and small, so this keeps it simple and bounded. Requests
// that do not arrive within two seconds are dropped.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "telemetry/metrics.h"

namespace parley::telemetry {

class AdminServer {
 public:
  // Binds `host_port` (port 0 picks a free one) and starts serving.
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(const std::string& host_port,
                                                            const Registry& registry);
  ~AdminServer();  // Stops the thread and closes the socket.

  void SetReady(bool ready) { ready_.store(ready); }
  int port() const { return port_; }

 private:
  AdminServer(int listen_fd, int wake_fd_read, int wake_fd_write, int port,
              const Registry& registry);
  void Run();
  void Serve(int client_fd);

  int listen_fd_;
  int wake_read_fd_;
  int wake_write_fd_;
  int port_;
  const Registry& registry_;
  std::atomic<bool> ready_{false};
  std::thread thread_;
};

// Resolves "host:port" ("[::1]:0", "localhost:9090", "0.0.0.0:0") and binds a
// listening TCP socket; returns the fd and the bound port. Exposed for tests.
absl::StatusOr<std::pair<int, int>> ListenTcp(const std::string& host_port);

}  // namespace parley::telemetry
