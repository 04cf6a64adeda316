// RouterService: parley.router.v1.SessionRouter, the calls the gateway forwards.
//
// Each call validates its request (INVALID_ARGUMENT naming the field, before any
// write), does its one store-svc transaction (tenant-scoped: another tenant's session
// is NOT_FOUND), then signals the schedulers: a wake for new work, a cancel for a
// running turn (delivered to whichever replica runs it). Signals are hints: a lost one
// costs a poll interval or a heartbeat, never correctness.
//
// Sync gRPC API: every handler blocks on store-svc, like store-svc's own handlers.
#pragma once

#include <memory>

#include "common/events/publisher.h"
#include "parley/router/v1/router.grpc.pb.h"
#include "parley/sandbox/v1/sandbox.grpc.pb.h"
#include "sandbox-svc/client/replicas.h"
#include "session-svc/scheduler/scheduler.h"
#include "session-svc/scheduler/signals.h"
#include "session-svc/store_call.h"
#include "telemetry/log.h"

namespace parley::session {

class RouterService final : public router::v1::SessionRouter::Service {
 public:
  // Everything passed in must outlive the service. `sandbox` may be null (no sandbox
  // service configured: nothing to release on close).
  RouterService(StoreStub& store, sandbox::SandboxReplicas* sandbox, Signals& signals,
                Scheduler& scheduler, RedisEndpoint redis, std::string redis_key_prefix,
                std::string owner, const telemetry::Logger& logger);

  grpc::Status SubmitMessage(grpc::ServerContext* context,
                             const router::v1::SubmitMessageRequest* request,
                             v1::SendMessageResponse* response) override;
  grpc::Status CancelTurn(grpc::ServerContext* context,
                          const router::v1::CancelTurnRequest* request,
                          v1::CancelTurnResponse* response) override;
  grpc::Status CloseSession(grpc::ServerContext* context,
                            const router::v1::CloseSessionRequest* request,
                            v1::CloseSessionResponse* response) override;
  grpc::Status GetSessionStatus(grpc::ServerContext* context,
                                const router::v1::GetSessionStatusRequest* request,
                                router::v1::GetSessionStatusResponse* response) override;

 private:
  void SignalCancel(const std::string& turn_id, const std::string& reason);
  void ReleaseSandboxes(const std::string& tenant_id, const std::string& session_id);
  // Publishes SessionStatusChanged(ACTIVE → CLOSED) under the epoch CloseSession took
  // for an idle session (a running turn's owner publishes it otherwise).
  absl::Status PublishClosed(const v1::Session& session, uint64_t lease_epoch);

  StoreStub& store_;
  sandbox::SandboxReplicas* sandbox_;
  Signals& signals_;
  Scheduler& scheduler_;
  const RedisEndpoint redis_;
  const std::string key_prefix_;
  const RedisKeys keys_;
  const std::string owner_;
  const telemetry::Logger& logger_;
};

}  // namespace parley::session
