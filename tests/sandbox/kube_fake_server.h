// FakeKubeApiServer: a stand-in Kubernetes API server for the kubernetes provider's
// tests. It speaks the real JSON API over HTTP/1.1 for exactly the calls the provider
// makes — create (201; 409 AlreadyExists), get, delete (404 NotFound) and list with an
// equality labelSelector of Pods, NetworkPolicies, PersistentVolumeClaims and Secrets,
// and a watch on Pods (chunked stream of {"type","object"} events, starting with ADDED
// for what exists) — with bearer-token auth and Status objects for errors.
//
// A created Pod starts Pending; the server then does what a kubelet would: resolves the
// container's env (secretKeyRef from the stored Secret; a missing one leaves the Pod
// Pending in CreateContainerConfigError) and its workspace volume (a claim's own
// directory, which outlives Pods as a volume does; a missing claim leaves the Pod
// Pending, unschedulable), starts a real parley-sandboxd on the Pod's own loopback
// "Pod IP" (127.X.Y.Z, a block per process), and marks the Pod Running and Ready once the
// daemon accepts connections. Deleting the Pod kills the daemon; deleting the claim
// removes its directory. `fail_pods` makes new Pods end Failed instead.
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

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "tests/harness/services.h"

namespace parley::testing {

class FakeKubeApiServer {
 public:
  FakeKubeApiServer(std::string token, int daemon_port);
  ~FakeKubeApiServer();

  std::string url() const;
  void set_fail_pods(bool fail) { fail_pods_ = fail; }

  // A stored object ("pods", "networkpolicies", "persistentvolumeclaims", "secrets"), or
  // null when absent.
  nlohmann::json Object(const std::string& kind, const std::string& ns, const std::string& name);
  // Names of the stored objects of one kind in a namespace.
  std::vector<std::string> Names(const std::string& kind, const std::string& ns);
  // The directory standing for a claim's volume (exists while the claim does).
  std::string VolumePath(const std::string& ns, const std::string& claim) const;
  // "METHOD path" of every request, in order.
  std::vector<std::string> Requests();
  // "namespace/name" of every Pod watch (?watch=1 with a metadata.name fieldSelector), in
  // the order the watches were opened.
  std::vector<std::string> Watches();
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
  void Create(int fd, const std::string& kind, const std::string& ns, const std::string& body);
  void List(int fd, const std::string& kind, const std::string& ns, const std::string& query);
  // The Pod's environment as a kubelet would build it, or why it cannot (the reason a
  // kubelet gives, e.g. a missing Secret).
  absl::StatusOr<std::map<std::string, std::string>> PodEnv(const std::string& ns,
                                                            const nlohmann::json& container);
  // The directory to mount at `mount_path`, or why the Pod cannot be scheduled.
  absl::StatusOr<std::string> PodVolume(const std::string& ns, const nlohmann::json& pod,
                                        const std::string& mount_path);
  // Leaves the Pod (if it is still the same one) Pending with `status`.
  void SetPending(const std::string& ns, const nlohmann::json& pod, const nlohmann::json& status);
  bool ClaimInUse(const std::string& ns, const std::string& claim)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Finishes deleting claims that waited for their Pods (pvc-protection).
  void ReleaseClaims(const std::string& ns) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Watch(int fd, const std::string& ns, const std::string& name, int timeout_s);
  void StartPod(const std::string& ns, const std::string& name);
  void Changed(const std::string& kind, const std::string& ns, const std::string& name,
               const std::string& type) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::string token_;
  int daemon_port_;
  std::string volumes_dir_;  // Claims' and emptyDirs' directories.
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
  std::vector<std::string> watches_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(mu_);
  int next_ip_ ABSL_GUARDED_BY(mu_) = 1;
  int next_version_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace parley::testing
