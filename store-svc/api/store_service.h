// StoreServiceImpl: parley.store.v1.StoreService on Postgres.
//
// Every handler validates its whole request first (INVALID_ARGUMENT, nothing written),
// then runs its SQL through PgPool — one transaction, or one autocommit statement where a
// single statement does the whole job (claims, message pages) — then converts the result
// with ToGrpcStatus. Statements are prepared per connection (Exec in db/pool.h). The SQL of each
// resource lives in its own file:
//   tenants_and_keys.cc  tenants, API keys (SHA-256 of the secret, public prefix)
//   sessions.cc          session CRUD and listing (stable cursors on ULID order)
//   turns.cc             messages, the turn queue, leases and fencing
//   claims.cc            ClaimNextTurn: fair order between tenants, the per-tenant cap
//   events.cc            the durable event log (COPY), epochs
//
// Threading: gRPC's sync server runs each call on a pool thread; the handlers share
// only the PgPool (thread-safe) and immutable configuration.
#pragma once

#include <grpcpp/grpcpp.h>

#include "common/clock.h"
#include "common/status.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "store-svc/api/limits.h"
#include "store-svc/db/pool.h"

namespace parley::store {

namespace pb = ::parley::store::v1;
using grpc::ServerContext;
using grpc::Status;

class StoreServiceImpl final : public pb::StoreService::Service {
 public:
  // `pool` and `clock` must outlive the service.
  StoreServiceImpl(PgPool& pool, StoreLimits limits);

  Status CreateTenant(ServerContext*, const pb::CreateTenantRequest*,
                      pb::CreateTenantResponse*) override;
  Status GetTenant(ServerContext*, const pb::GetTenantRequest*, pb::GetTenantResponse*) override;
  Status ListTenants(ServerContext*, const pb::ListTenantsRequest*,
                     pb::ListTenantsResponse*) override;
  Status SetTenantDisabled(ServerContext*, const pb::SetTenantDisabledRequest*,
                           pb::SetTenantDisabledResponse*) override;
  Status CreateApiKey(ServerContext*, const pb::CreateApiKeyRequest*,
                      pb::CreateApiKeyResponse*) override;
  Status RevokeApiKey(ServerContext*, const pb::RevokeApiKeyRequest*,
                      pb::RevokeApiKeyResponse*) override;
  Status ResolveApiKey(ServerContext*, const pb::ResolveApiKeyRequest*,
                       pb::ResolveApiKeyResponse*) override;
  Status ListApiKeys(ServerContext*, const pb::ListApiKeysRequest*,
                     pb::ListApiKeysResponse*) override;

  Status CreateSession(ServerContext*, const pb::CreateSessionRequest*,
                       pb::CreateSessionResponse*) override;
  Status GetSession(ServerContext*, const pb::GetSessionRequest*, pb::GetSessionResponse*) override;
  Status ListSessions(ServerContext*, const pb::ListSessionsRequest*,
                      pb::ListSessionsResponse*) override;
  Status UpdateSession(ServerContext*, const pb::UpdateSessionRequest*,
                       pb::UpdateSessionResponse*) override;
  Status CloseSession(ServerContext*, const pb::CloseSessionRequest*,
                      pb::CloseSessionResponse*) override;
  Status DeleteSession(ServerContext*, const pb::DeleteSessionRequest*,
                       pb::DeleteSessionResponse*) override;

  Status AppendMessage(ServerContext*, const pb::AppendMessageRequest*,
                       pb::AppendMessageResponse*) override;
  Status ListMessages(ServerContext*, const pb::ListMessagesRequest*,
                      pb::ListMessagesResponse*) override;
  Status EnqueueTurn(ServerContext*, const pb::EnqueueTurnRequest*,
                     pb::EnqueueTurnResponse*) override;
  Status ClaimNextTurn(ServerContext*, const pb::ClaimNextTurnRequest*,
                       pb::ClaimNextTurnResponse*) override;
  Status HeartbeatTurn(ServerContext*, const pb::HeartbeatTurnRequest*,
                       pb::HeartbeatTurnResponse*) override;
  Status CompleteTurn(ServerContext*, const pb::CompleteTurnRequest*,
                      pb::CompleteTurnResponse*) override;
  Status CommitTurnStep(ServerContext*, const pb::CommitTurnStepRequest*,
                        pb::CommitTurnStepResponse*) override;
  Status TakeSteeringMessages(ServerContext*, const pb::TakeSteeringMessagesRequest*,
                              pb::TakeSteeringMessagesResponse*) override;
  Status CancelTurn(ServerContext*, const pb::CancelTurnRequest*, pb::CancelTurnResponse*) override;
  Status ReleaseTurn(ServerContext*, const pb::ReleaseTurnRequest*,
                     pb::ReleaseTurnResponse*) override;
  Status ReclaimExpiredLeases(ServerContext*, const pb::ReclaimExpiredLeasesRequest*,
                              pb::ReclaimExpiredLeasesResponse*) override;
  Status GetTurn(ServerContext*, const pb::GetTurnRequest*, pb::GetTurnResponse*) override;
  Status ListTurns(ServerContext*, const pb::ListTurnsRequest*, pb::ListTurnsResponse*) override;

  Status AppendEvents(ServerContext*, const pb::AppendEventsRequest*,
                      pb::AppendEventsResponse*) override;
  Status ReadEvents(ServerContext*, const pb::ReadEventsRequest*, pb::ReadEventsResponse*) override;
  Status GetLastSeq(ServerContext*, const pb::GetLastSeqRequest*, pb::GetLastSeqResponse*) override;
  Status AdvanceEpoch(ServerContext*, const pb::AdvanceEpochRequest*,
                      pb::AdvanceEpochResponse*) override;

 private:
  PgPool& pool_;
  const StoreLimits limits_;
};

// Ends a handler: the result's status, and on success the response (moved out of
// `result`, not copied: a page of events can be large).
template <typename Response>
Status Respond(absl::StatusOr<Response>&& result, Response* response) {
  if (!result.ok()) return ToGrpcStatus(result.status());
  response->Swap(&*result);
  return Status::OK;
}
template <typename Response>
Status Respond(absl::StatusOr<Response>& result, Response* response) {
  return Respond(std::move(result), response);
}

// Persists a batch of one session's events: the body of AppendEvents, shared with the
// persister. Runs in its own transaction on `pool`.
absl::StatusOr<pb::AppendEventsResponse> AppendEventBatch(PgPool& pool,
                                                          const pb::AppendEventsRequest& request);

// Shared by the handlers: the session row locked FOR UPDATE (NOT_FOUND, thrown as a
// StatusException, when it is not this tenant's).
struct LockedSession {
  int status = 0;
  int64_t message_count = 0;
  int64_t turn_count = 0;
  int64_t queued_turns = 0;
  std::string running_turn_id;
  int64_t lease_epoch = 0;
  int multitask_policy = 0;
};
LockedSession LockSession(pqxx::work& tx, const std::string& tenant_id,
                          const std::string& session_id);

}  // namespace parley::store
