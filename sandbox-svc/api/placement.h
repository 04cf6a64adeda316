// SessionPlacement: where a session's sandbox lives when sandbox-svc runs N replicas.
//
// A session has at most one live sandbox, and it lives on one replica. AcquireForSession
// arrives at any replica (callers send it to the Service); the replica that receives it
//
//   1. serves it itself when it holds a live sandbox of the session (the common case once
//      callers route by the returned id);
//   2. else asks every peer (`ListSandboxes` of the session, in parallel, short deadline)
//      and forwards the acquire to the peer that holds one (`FindHolders`, `Forward`);
//   3. else creates the sandbox itself — and then asks the peers once more: when two
//      replicas created one for the same session at the same moment, the one minted
//      later is destroyed and the acquire forwarded to the earlier one, so both callers
//      end on the same sandbox (`Earliest`).
//
// The record of which replica holds a session's sandbox is therefore the replicas' own
// tables (each sandbox's record names its session), not a second copy that could
// disagree with them. A peer that does not answer (restarting, or gone for good after a
// scale-down) holds nothing as far as placement is concerned: its sandboxes are lost like
// a node's, and the session gets a new one.
//
// ListSandboxes of one session is answered the same way (by the holder), so releasing a
// closed session's sandboxes finds them. A forwarded call carries `kPlacedHeader`, so its receiver
// does step 1 or 3 (or lists its own) and never forwards again. Blocking calls: run on the
// lifecycle worker pool.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/status.h"
#include "parley/sandbox/v1/sandbox.pb.h"
#include "sandbox-svc/client/replicas.h"

namespace parley::sandbox {

// Metadata on an acquire one replica forwards to another.
inline constexpr char kPlacedHeader[] = "x-parley-sandbox-placed";

class SessionPlacement {
 public:
  struct Options {
    uint32_t self = 0;          // This replica's ordinal.
    uint32_t max_replicas = 1;  // Peers are ordinals [0, max_replicas) but self.
    absl::Duration lookup_timeout = absl::Seconds(2);
  };
  // `peers` routes to replicas by ordinal and must outlive this object.
  SessionPlacement(Options options, SandboxReplicas* peers);

  // A live sandbox (CREATING, READY or PAUSED) of the session on a peer.
  struct Held {
    uint32_t replica = 0;
    std::string sandbox_id;
  };
  // Every peer's live sandboxes of (tenant, session); peers that do not answer within
  // the lookup timeout count as holding none.
  std::vector<Held> FindHolders(const std::string& tenant_id, const std::string& session_id);

  // Forwards a call to `replica` (marked placed), with `deadline`:
  //   placement.Forward(2, &SandboxReplicas::Stub::AcquireForSession, request, deadline);
  template <typename Request, typename Response>
  absl::StatusOr<Response> Forward(uint32_t replica,
                                   grpc::Status (SandboxReplicas::Stub::*method)(
                                       grpc::ClientContext*, const Request&, Response*),
                                   const Request& request, absl::Time deadline) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(deadline));
    context.AddMetadata(kPlacedHeader, "1");
    Response response;
    grpc::Status status = (peers_->ForReplica(replica).*method)(&context, request, &response);
    if (!status.ok()) return FromGrpcStatus(status);
    return response;
  }

  // ListSandboxes of the session's live sandboxes (CREATING, READY, PAUSED).
  static ::parley::sandbox::v1::ListSandboxesRequest LiveSandboxesOf(const std::string& tenant_id,
                                                                     const std::string& session_id);

  // Whether `context`'s call was forwarded by a peer.
  static bool WasPlaced(grpc::ServerContextBase& context);

  // The holder minted first (ids sort by creation time after their replica prefix) and,
  // when `before` is given, before it: the sandbox racing replicas agree to keep.
  static std::optional<Held> Earliest(const std::vector<Held>& holders,
                                      std::optional<std::string> before = std::nullopt);

 private:
  const Options options_;
  SandboxReplicas* const peers_;
};

}  // namespace parley::sandbox
