// Routing sandbox-svc calls to the replica that owns the sandbox: the per-replica stub
// cache and the address template.
#include "sandbox-svc/client/replicas.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "sandbox-svc/contract/sandbox_id.h"

namespace parley::sandbox {

namespace {
constexpr absl::string_view kPlaceholder = "{replica}";

size_t CountPlaceholders(absl::string_view text) {
  size_t count = 0;
  for (size_t at = text.find(kPlaceholder); at != absl::string_view::npos;
       at = text.find(kPlaceholder, at + kPlaceholder.size())) {
    ++count;
  }
  return count;
}
}  // namespace

absl::StatusOr<std::unique_ptr<SandboxReplicas>> SandboxReplicas::Create(Addresses addresses,
                                                                         ChannelFactory factory) {
  if (addresses.service_address.empty() && addresses.replica_address_template.empty()) {
    return absl::InvalidArgumentError("sandbox-svc needs an address or an address template");
  }
  if (!addresses.replica_address_template.empty() &&
      CountPlaceholders(addresses.replica_address_template) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("sandbox replica address template \"", addresses.replica_address_template,
                     "\" must contain \"{replica}\" exactly once (e.g. "
                     "parley-sandbox-{replica}.parley-sandbox-headless:7003)"));
  }
  return std::unique_ptr<SandboxReplicas>(
      new SandboxReplicas(std::move(addresses), std::move(factory)));
}

SandboxReplicas::SandboxReplicas(Addresses addresses, ChannelFactory factory)
    : addresses_(std::move(addresses)),
      factory_(std::move(factory)),
      any_(addresses_.service_address.empty()
               ? nullptr
               : v1::SandboxManager::NewStub(factory_(addresses_.service_address))) {}

SandboxReplicas::SandboxReplicas(std::shared_ptr<Stub> only) : any_(std::move(only)) {}

std::string SandboxReplicas::ReplicaAddress(absl::string_view replica_address_template,
                                            uint32_t ordinal) {
  return absl::StrReplaceAll(replica_address_template, {{kPlaceholder, absl::StrCat(ordinal)}});
}

absl::StatusOr<SandboxReplicas::Stub*> SandboxReplicas::ForSandbox(absl::string_view sandbox_id) {
  absl::StatusOr<std::optional<uint32_t>> owner = SandboxIdOwner(sandbox_id);
  if (!owner.ok()) return owner.status();
  if (!owner->has_value()) return any_.get();
  return &ForReplica(**owner);
}

SandboxReplicas::Stub& SandboxReplicas::ForReplica(uint32_t ordinal) {
  if (addresses_.replica_address_template.empty()) return *any_;
  absl::MutexLock lock(&mu_);
  std::unique_ptr<Stub>& stub = by_replica_[ordinal];
  if (stub == nullptr) {
    // Creating a channel does no I/O: it connects on the first call.
    stub = v1::SandboxManager::NewStub(
        factory_(ReplicaAddress(addresses_.replica_address_template, ordinal)));
  }
  return *stub;
}

}  // namespace parley::sandbox
