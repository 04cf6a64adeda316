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

#include "common/status.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "store-svc/api/limits.h"
#include "store-svc/db/pool.h"

namespace parley::store {

namespace store_pb = ::parley::store::v1;

class StoreServiceImpl final : public store_pb::StoreService::Service {
 public:
  // `pool` must outlive the service.
  StoreServiceImpl(PgPool& pool, StoreLimits limits);

  grpc::Status CreateTenant(grpc::ServerContext*, const store_pb::CreateTenantRequest*,
                            store_pb::CreateTenantResponse*) override;
  grpc::Status GetTenant(grpc::ServerContext*, const store_pb::GetTenantRequest*,
                         store_pb::GetTenantResponse*) override;
  grpc::Status ListTenants(grpc::ServerContext*, const store_pb::ListTenantsRequest*,
                           store_pb::ListTenantsResponse*) override;
  grpc::Status SetTenantDisabled(grpc::ServerContext*, const store_pb::SetTenantDisabledRequest*,
                                 store_pb::SetTenantDisabledResponse*) override;
  grpc::Status CreateApiKey(grpc::ServerContext*, const store_pb::CreateApiKeyRequest*,
                            store_pb::CreateApiKeyResponse*) override;
  grpc::Status RevokeApiKey(grpc::ServerContext*, const store_pb::RevokeApiKeyRequest*,
                            store_pb::RevokeApiKeyResponse*) override;
  grpc::Status ResolveApiKey(grpc::ServerContext*, const store_pb::ResolveApiKeyRequest*,
                             store_pb::ResolveApiKeyResponse*) override;
  grpc::Status ListApiKeys(grpc::ServerContext*, const store_pb::ListApiKeysRequest*,
                           store_pb::ListApiKeysResponse*) override;

  grpc::Status CreateSession(grpc::ServerContext*, const store_pb::CreateSessionRequest*,
                             store_pb::CreateSessionResponse*) override;
  grpc::Status GetSession(grpc::ServerContext*, const store_pb::GetSessionRequest*,
                          store_pb::GetSessionResponse*) override;
  grpc::Status ListSessions(grpc::ServerContext*, const store_pb::ListSessionsRequest*,
                            store_pb::ListSessionsResponse*) override;
  grpc::Status UpdateSession(grpc::ServerContext*, const store_pb::UpdateSessionRequest*,
                             store_pb::UpdateSessionResponse*) override;
  grpc::Status CloseSession(grpc::ServerContext*, const store_pb::CloseSessionRequest*,
                            store_pb::CloseSessionResponse*) override;
  grpc::Status DeleteSession(grpc::ServerContext*, const store_pb::DeleteSessionRequest*,
                             store_pb::DeleteSessionResponse*) override;

  grpc::Status AppendMessage(grpc::ServerContext*, const store_pb::AppendMessageRequest*,
                             store_pb::AppendMessageResponse*) override;
  grpc::Status ListMessages(grpc::ServerContext*, const store_pb::ListMessagesRequest*,
                            store_pb::ListMessagesResponse*) override;
  grpc::Status EnqueueTurn(grpc::ServerContext*, const store_pb::EnqueueTurnRequest*,
                           store_pb::EnqueueTurnResponse*) override;
  grpc::Status ClaimNextTurn(grpc::ServerContext*, const store_pb::ClaimNextTurnRequest*,
                             store_pb::ClaimNextTurnResponse*) override;
  grpc::Status HeartbeatTurn(grpc::ServerContext*, const store_pb::HeartbeatTurnRequest*,
                             store_pb::HeartbeatTurnResponse*) override;
  grpc::Status CompleteTurn(grpc::ServerContext*, const store_pb::CompleteTurnRequest*,
                            store_pb::CompleteTurnResponse*) override;
  grpc::Status CommitTurnStep(grpc::ServerContext*, const store_pb::CommitTurnStepRequest*,
                              store_pb::CommitTurnStepResponse*) override;
  grpc::Status TakeSteeringMessages(grpc::ServerContext*,
                                    const store_pb::TakeSteeringMessagesRequest*,
                                    store_pb::TakeSteeringMessagesResponse*) override;
  grpc::Status CancelTurn(grpc::ServerContext*, const store_pb::CancelTurnRequest*,
                          store_pb::CancelTurnResponse*) override;
  grpc::Status ReleaseTurn(grpc::ServerContext*, const store_pb::ReleaseTurnRequest*,
                           store_pb::ReleaseTurnResponse*) override;
  grpc::Status ReclaimExpiredLeases(grpc::ServerContext*,
                                    const store_pb::ReclaimExpiredLeasesRequest*,
                                    store_pb::ReclaimExpiredLeasesResponse*) override;
  grpc::Status GetTurn(grpc::ServerContext*, const store_pb::GetTurnRequest*,
                       store_pb::GetTurnResponse*) override;
  grpc::Status ListTurns(grpc::ServerContext*, const store_pb::ListTurnsRequest*,
                         store_pb::ListTurnsResponse*) override;

  grpc::Status AppendEvents(grpc::ServerContext*, const store_pb::AppendEventsRequest*,
                            store_pb::AppendEventsResponse*) override;
  grpc::Status ReadEvents(grpc::ServerContext*, const store_pb::ReadEventsRequest*,
                          store_pb::ReadEventsResponse*) override;
  grpc::Status GetLastSeq(grpc::ServerContext*, const store_pb::GetLastSeqRequest*,
                          store_pb::GetLastSeqResponse*) override;
  grpc::Status AdvanceEpoch(grpc::ServerContext*, const store_pb::AdvanceEpochRequest*,
                            store_pb::AdvanceEpochResponse*) override;

 private:
  PgPool& pool_;
  const StoreLimits limits_;
};

// Ends a handler: the result's status, and on success the response (moved out of
// `result`, not copied: a page of events can be large).
template <typename Response>
grpc::Status Respond(absl::StatusOr<Response>&& result, Response* response) {
  if (!result.ok()) return ToGrpcStatus(result.status());
  response->Swap(&*result);
  return grpc::Status::OK;
}
template <typename Response>
grpc::Status Respond(absl::StatusOr<Response>& result, Response* response) {
  return Respond(std::move(result), response);
}

// Persists a batch of one session's events: the body of AppendEvents, shared with the
// persister. Runs in its own transaction on `pool`.
absl::StatusOr<store_pb::AppendEventsResponse> AppendEventBatch(
    PgPool& pool, const store_pb::AppendEventsRequest& request);

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
