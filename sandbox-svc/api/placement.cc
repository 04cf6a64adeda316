// Finding the replica that holds a session's sandbox: a parallel ListSandboxes to every
// peer, and the acquire forwarded to the holder. See placement.h.
#include "sandbox-svc/api/placement.h"

#include <memory>
#include <tuple>
#include <utility>

#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "sandbox-svc/contract/sandbox_id.h"

namespace parley::sandbox {

namespace sandbox_pb = ::parley::sandbox::v1;

SessionPlacement::SessionPlacement(Options options, SandboxReplicas* peers)
    : options_(options), peers_(peers) {}

sandbox_pb::ListSandboxesRequest SessionPlacement::LiveSandboxesOf(const std::string& tenant_id,
                                                                   const std::string& session_id) {
  sandbox_pb::ListSandboxesRequest request;
  request.set_tenant_id(tenant_id);
  request.set_session_id(session_id);
  request.add_states(sandbox_pb::SANDBOX_STATE_CREATING);
  request.add_states(sandbox_pb::SANDBOX_STATE_READY);
  request.add_states(sandbox_pb::SANDBOX_STATE_PAUSED);
  return request;
}

bool SessionPlacement::WasPlaced(grpc::ServerContextBase& context) {
  return context.client_metadata().count(kPlacedHeader) > 0;
}

std::vector<SessionPlacement::Held> SessionPlacement::FindHolders(const std::string& tenant_id,
                                                                  const std::string& session_id) {
  // One call per peer, all in flight at once; each owns its context and answer until the
  // counter says every callback ran.
  struct Lookup {
    uint32_t replica = 0;
    grpc::ClientContext context;
    sandbox_pb::ListSandboxesResponse response;
    grpc::Status status;
  };
  const sandbox_pb::ListSandboxesRequest request = LiveSandboxesOf(tenant_id, session_id);
  std::vector<std::unique_ptr<Lookup>> lookups;
  for (uint32_t replica = 0; replica < options_.max_replicas; ++replica) {
    if (replica == options_.self) continue;
    auto lookup = std::make_unique<Lookup>();
    lookup->replica = replica;
    lookup->context.set_deadline(absl::ToChronoTime(absl::Now() + options_.lookup_timeout));
    // A peer answers from its own table only: without the mark it would ask its peers
    // in turn (and they it), each hop holding a worker until the deadline.
    lookup->context.AddMetadata(kPlacedHeader, "1");
    lookups.push_back(std::move(lookup));
  }
  absl::BlockingCounter pending(static_cast<int>(lookups.size()));
  for (const std::unique_ptr<Lookup>& lookup : lookups) {
    Lookup* call = lookup.get();
    peers_->ForReplica(call->replica)
        .async()
        ->ListSandboxes(&call->context, &request, &call->response,
                        [call, &pending](grpc::Status status) {
                          call->status = std::move(status);
                          pending.DecrementCount();
                        });
  }
  pending.Wait();
  std::vector<Held> holders;
  for (const std::unique_ptr<Lookup>& lookup : lookups) {
    if (!lookup->status.ok()) continue;  // Unreachable or gone: it holds nothing we can use.
    for (const sandbox_pb::Sandbox& sandbox : lookup->response.sandboxes()) {
      holders.push_back({.replica = lookup->replica, .sandbox_id = sandbox.id()});
    }
  }
  return holders;
}

std::optional<SessionPlacement::Held> SessionPlacement::Earliest(
    const std::vector<Held>& holders, std::optional<std::string> before) {
  auto key = [](const std::string& id) { return std::make_tuple(SandboxIdCreationKey(id), id); };
  std::optional<Held> earliest;
  for (const Held& held : holders) {
    if (before && key(held.sandbox_id) >= key(*before)) continue;
    if (!earliest || key(held.sandbox_id) < key(earliest->sandbox_id)) earliest = held;
  }
  return earliest;
}

}  // namespace parley::sandbox
