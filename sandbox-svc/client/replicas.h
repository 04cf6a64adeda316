// SandboxReplicas: which sandbox-svc replica a call goes to.
//
// Each `parley-sandbox` replica answers only for the sandboxes it created, and a sandbox
// id names its owner (contract/sandbox_id.h). Calls that start something — CreateSandbox,
// AcquireForSession, ListTemplates — go to the Service (any replica: `Any()`); every call
// for an existing id goes to its owner (`ForSandbox(id)`), over one cached channel per
// replica whose address comes from a template:
//
//   auto replicas = SandboxReplicas::Create(
//       {.service_address = "parley-sandbox:7003",
//        .replica_address_template = "parley-sandbox-{replica}.parley-sandbox-headless:7003"},
//       factory);
//   absl::StatusOr<Stub*> owner = (*replicas)->ForSandbox("sbx_r2_01J...");  // replica 2
//
// Without a template (one replica, `scripts/dev`, tests) every call goes to the one
// address. An id minted without an owner ("sbx_<ulid>") goes to the Service.
//
// Thread-safe; stubs live as long as the SandboxReplicas.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "parley/sandbox/v1/sandbox.grpc.pb.h"

namespace parley::sandbox {

class SandboxReplicas {
 public:
  using Stub = ::parley::sandbox::v1::SandboxManager::StubInterface;
  // Makes the channel to `address` (callers pass their telemetry-instrumented factory).
  using ChannelFactory = std::function<std::shared_ptr<grpc::Channel>(const std::string& address)>;

  struct Addresses {
    // Any replica (the Kubernetes Service); empty when only ForReplica is used (peers).
    std::string service_address;
    // Empty, or an address with "{replica}" where the owner's ordinal goes.
    std::string replica_address_template;
  };

  // INVALID_ARGUMENT when the template has no (or more than one) "{replica}", or when
  // there is neither a service address nor a template.
  static absl::StatusOr<std::unique_ptr<SandboxReplicas>> Create(Addresses addresses,
                                                                 ChannelFactory factory);
  // One stub for every call: a single replica (or a test's fake).
  explicit SandboxReplicas(std::shared_ptr<Stub> only);

  // The Service: for calls not about an existing sandbox.
  Stub& Any() { return *any_; }

  // The owner of `sandbox_id`. INVALID_ARGUMENT for an id that names no valid owner.
  absl::StatusOr<Stub*> ForSandbox(absl::string_view sandbox_id);
  // Replica `ordinal` (the Service when there is no template).
  Stub& ForReplica(uint32_t ordinal);

  // Replica `ordinal`'s address under `replica_address_template`.
  static std::string ReplicaAddress(absl::string_view replica_address_template, uint32_t ordinal);

 private:
  SandboxReplicas(Addresses addresses, ChannelFactory factory);

  const Addresses addresses_;
  const ChannelFactory factory_;
  std::shared_ptr<Stub> any_;
  absl::Mutex mu_;
  // Never erased: a replica's ordinal names the same Pod for the life of the StatefulSet.
  std::map<uint32_t, std::unique_ptr<Stub>> by_replica_ ABSL_GUARDED_BY(mu_);
};

}  // namespace parley::sandbox
