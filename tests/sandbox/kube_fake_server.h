// FakeKubeApiServer: a stand-in Kubernetes API server for the kubernetes provider's
// tests. It speaks the real JSON API over HTTP/1.1 for exactly the calls the provider
// makes — create, get and delete of Pods and NetworkPolicies, and a watch on Pods
// (chunked stream of {"type","object"} events, starting with ADDED for what exists) —
// with bearer-token auth and Status objects for errors.
//
// A created Pod starts Pending; the server then starts a real parley-sandboxd for it
// on its own loopback "Pod IP" (127.X.Y.Z, a block per process), with the token from the Pod's env,
// and marks the Pod Running and Ready once the daemon accepts connections. Deleting the Pod kills
// the daemon. `fail_pods` makes new Pods end Failed instead.
//
//   FakeKubeApiServer api("secret-token", /*daemon_port=*/17080);
//   KubeConfig config{.server = api.url(), .token = "secret-token"};
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "tests/harness/services.h"

namespace parley::testing {

class FakeKubeApiServer {
 public:
  FakeKubeApiServer(std::string token, int daemon_port);
  ~FakeKubeApiServer();

  std::string url() const;
  void set_fail_pods(bool fail) { fail_pods_ = fail; }

  // Stored objects ("pods" or "networkpolicies"), or null when absent.
  nlohmann::json Object(const std::string& kind, const std::string& ns, const std::string& name);
  // "METHOD path" of every request, in order.
  std::vector<std::string> Requests();
  // True while the Pod's daemon process runs.
  bool DaemonRunning(const std::string& ns, const std::string& name);

 private:
  struct Request {
    std::string method;
    std::string path;                            // Without the query.
    std::string query;                           // After '?'.
    std::map<std::string, std::string> headers;  // Lower-case names.
    std::string body;
  };

  void AcceptLoop();
  void Serve(int fd);
  void Route(int fd, const Request& request);
  void Watch(int fd, const std::string& ns, const std::string& name, int timeout_s);
  void StartPod(const std::string& ns, const std::string& name);
  void Changed(const std::string& kind, const std::string& ns, const std::string& name,
               const std::string& type) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::string token_;
  int daemon_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> fail_pods_{false};
  std::thread acceptor_;

  absl::Mutex mu_;
  // (kind, ns, name) → object.
  std::map<std::tuple<std::string, std::string, std::string>, nlohmann::json> objects_
      ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, std::unique_ptr<ServiceProcess>> daemons_
      ABSL_GUARDED_BY(mu_);
  // Watch events per Pod, in order; watchers read from an index.
  std::map<std::pair<std::string, std::string>, std::vector<nlohmann::json>> events_
      ABSL_GUARDED_BY(mu_);
  std::vector<std::string> requests_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(mu_);
  int next_ip_ ABSL_GUARDED_BY(mu_) = 1;
  int next_version_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace parley::testing
