// The public parley.v1.SandboxService as served by the gateway: processes and files in
// the sandbox of one of the caller's sessions.
//
// Every call is authenticated and scoped (sandbox:exec for Exec, sandbox:files for the
// rest), then finds the session's sandbox in two asynchronous downstream calls —
// store-svc GetSession in the caller's tenant (another tenant's session is NOT_FOUND,
// like one that does not exist; a closed one FAILED_PRECONDITION SESSION_CLOSED) and
// sandbox-svc AcquireForSession (the session's live sandbox, resumed if paused, or a new
// one from the session's sandbox_template; any replica) — and then forwards the operation
// to the sandbox-svc replica that owns that sandbox, with the caller's tenant and its id. The agent
// loop acquires the same sandbox the same way, so a file written here is what the model's tools
// see.
//
// Streams are relayed one message at a time: the next message is read from one side
// only when the previous one was written to the other, so a slow reader of Exec slows
// the process instead of filling the gateway's memory, and a WriteFile is committed only
// when the caller half-closes (an aborted upload leaves the file untouched). A sandbox
// lost between the lookup and the operation (SANDBOX_GONE) is answered UNAVAILABLE: the
// caller's retry acquires a new one.
//
// Exec changes the sandbox, so it honours an `idempotency-key` header like the other
// mutating calls (gateway/api/idempotency.h): the command runs at most once, and a
// retry with the key gets the first run's exit again — the exit only, since the output
// is not kept — with `idempotent-replayed: true`. A run that ended UNAVAILABLE (its
// sandbox lost) or was cancelled releases the key, as for every call, so its retry runs
// the command again. WriteFile replaces the file atomically: repeating it is harmless,
// except with `append`, which a client must not retry blindly.
//
// Threading: handlers run on gRPC's callback threads and never block; each call's state
// lives in its reactor, freed when both its server and its downstream side are done.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>

#include "absl/time/time.h"
#include "gateway/api/idempotency.h"
#include "gateway/auth/authenticator.h"
#include "parley/sandbox/v1/sandbox.grpc.pb.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "parley/v1/parley.grpc.pb.h"
#include "sandbox-svc/client/replicas.h"

namespace parley::gateway {

class SandboxApi final : public v1::SandboxService::CallbackService {
 public:
  struct Downstream {
    std::shared_ptr<store::v1::StoreService::StubInterface> store;
    // AcquireForSession goes to any replica, the operation to the sandbox's owner.
    std::shared_ptr<sandbox::SandboxReplicas> sandbox;
    // Cap on the deadline of the lookups and of ListFiles/StatFile.
    absl::Duration unary_timeout = absl::Seconds(30);
    // Cap on the deadline of Exec, ReadFile and WriteFile (an Exec may run for an hour).
    absl::Duration stream_timeout = absl::Hours(2);
    // Makes an Exec with an `idempotency-key` header run at most once; null: the header
    // is ignored. Must outlive the SandboxApi.
    IdempotencyStore* idempotency = nullptr;
  };

  // `authenticator` must outlive this object.
  SandboxApi(Authenticator& authenticator, Downstream downstream);

  grpc::ServerWriteReactor<v1::ExecResponse>* Exec(grpc::CallbackServerContext* context,
                                                   const v1::ExecRequest* request) override;
  grpc::ServerWriteReactor<v1::ReadFileResponse>* ReadFile(
      grpc::CallbackServerContext* context, const v1::ReadFileRequest* request) override;
  grpc::ServerReadReactor<v1::WriteFileRequest>* WriteFile(
      grpc::CallbackServerContext* context, v1::WriteFileResponse* response) override;
  grpc::ServerUnaryReactor* ListFiles(grpc::CallbackServerContext* context,
                                      const v1::ListFilesRequest* request,
                                      v1::ListFilesResponse* response) override;
  grpc::ServerUnaryReactor* StatFile(grpc::CallbackServerContext* context,
                                     const v1::StatFileRequest* request,
                                     v1::StatFileResponse* response) override;

 private:
  Authenticator& authenticator_;
  const Downstream downstream_;
};

}  // namespace parley::gateway
