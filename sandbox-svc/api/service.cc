// The SandboxManager gRPC service: validate, then answer inline, on the worker pool, or
// through a proxy to the sandbox's daemon (proxy.h).
#include "sandbox-svc/api/service.h"

#include "common/status.h"
#include "sandbox-svc/api/call_validation.h"

namespace parley::sandbox {
namespace {

namespace sandbox_pb = ::parley::sandbox::v1;
namespace sandboxd_pb = ::parley::sandboxd::v1;

grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                    const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// Runs `op` (blocking) on the pool and finishes the call with its sandbox or error.
template <typename Response, typename Op>
grpc::ServerUnaryReactor* RunOnPool(ThreadPool& pool, grpc::CallbackServerContext* context,
                                    Response* response, Op op) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  pool.Schedule([reactor, response, op = std::move(op)] {
    absl::StatusOr<sandbox_pb::Sandbox> result = op();
    if (result.ok()) *response->mutable_sandbox() = *std::move(result);
    reactor->Finish(ToGrpcStatus(result.status()));
  });
  return reactor;
}

// A lifecycle change of one sandbox (Pause, Resume, Destroy).
using LifecycleChange = absl::StatusOr<sandbox_pb::Sandbox> (SandboxManager::*)(
    const std::string& tenant_id, const std::string& sandbox_id);

// Validates the request inline, then runs `change` on the pool.
template <typename Request, typename Response>
grpc::ServerUnaryReactor* ChangeOnPool(SandboxManager& manager, ThreadPool& pool,
                                       grpc::CallbackServerContext* context, const Request* request,
                                       Response* response, LifecycleChange change) {
  if (absl::Status s = ValidateCall(*request); !s.ok()) return FinishNow(context, s);
  return RunOnPool(pool, context, response, [&manager, request, change] {
    return (manager.*change)(request->tenant_id(), request->sandbox_id());
  });
}

}  // namespace

SandboxManagerService::SandboxManagerService(SandboxManager* manager, int lifecycle_threads,
                                             SessionPlacement* placement)
    : manager_(manager), placement_(placement), pool_(lifecycle_threads) {}

// ---------------------------------------------------------------------------------
// Templates and reads (inline)

grpc::ServerUnaryReactor* SandboxManagerService::ListTemplates(
    grpc::CallbackServerContext* context, const sandbox_pb::ListTemplatesRequest* request,
    sandbox_pb::ListTemplatesResponse* response) {
  for (sandbox_pb::Template& t : manager_->ListTemplates())
    *response->add_templates() = std::move(t);
  return FinishNow(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SandboxManagerService::GetTemplate(
    grpc::CallbackServerContext* context, const sandbox_pb::GetTemplateRequest* request,
    sandbox_pb::GetTemplateResponse* response) {
  absl::StatusOr<sandbox_pb::Template> result = manager_->GetTemplate(request->name());
  if (result.ok()) *response->mutable_template_() = *std::move(result);
  return FinishNow(context, result.status());
}

grpc::ServerUnaryReactor* SandboxManagerService::GetSandbox(
    grpc::CallbackServerContext* context, const sandbox_pb::GetSandboxRequest* request,
    sandbox_pb::GetSandboxResponse* response) {
  if (absl::Status s = ValidateCall(*request); !s.ok()) return FinishNow(context, s);
  absl::StatusOr<sandbox_pb::Sandbox> result =
      manager_->Get(request->tenant_id(), request->sandbox_id());
  if (result.ok()) *response->mutable_sandbox() = *std::move(result);
  return FinishNow(context, result.status());
}

grpc::ServerUnaryReactor* SandboxManagerService::ListSandboxes(
    grpc::CallbackServerContext* context, const sandbox_pb::ListSandboxesRequest* request,
    sandbox_pb::ListSandboxesResponse* response) {
  if (absl::Status s = ValidateCall(*request); !s.ok()) return FinishNow(context, s);
  const bool elsewhere = placement_ != nullptr && !request->session_id().empty() &&
                         !SessionPlacement::WasPlaced(*context) &&
                         !HoldsSession(request->tenant_id(), request->session_id());
  if (!elsewhere) {
    absl::StatusOr<sandbox_pb::ListSandboxesResponse> result = manager_->List(*request);
    if (result.ok()) *response = *std::move(result);
    return FinishNow(context, result.status());
  }
  // A session's sandboxes are listed where its live one is (session-svc releases them
  // on close this way); the lookup blocks, so it runs on the pool.
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::Time deadline = absl::FromChrono(context->deadline());
  pool_.Schedule([this, reactor, request, response, deadline] {
    std::optional<SessionPlacement::Held> holder = SessionPlacement::Earliest(
        placement_->FindHolders(request->tenant_id(), request->session_id()));
    absl::StatusOr<sandbox_pb::ListSandboxesResponse> result =
        holder ? placement_->Forward(holder->replica, &SandboxReplicas::Stub::ListSandboxes,
                                     *request, deadline)
               : manager_->List(*request);
    if (result.ok()) *response = *std::move(result);
    reactor->Finish(ToGrpcStatus(result.status()));
  });
  return reactor;
}

// ---------------------------------------------------------------------------------
// Lifecycle (on the worker pool)

grpc::ServerUnaryReactor* SandboxManagerService::CreateSandbox(
    grpc::CallbackServerContext* context, const sandbox_pb::CreateSandboxRequest* request,
    sandbox_pb::CreateSandboxResponse* response) {
  if (absl::Status s = ValidateCall(*request); !s.ok()) return FinishNow(context, s);
  return RunOnPool(pool_, context, response,
                   [this, request] { return manager_->Create(*request); });
}

grpc::ServerUnaryReactor* SandboxManagerService::AcquireForSession(
    grpc::CallbackServerContext* context, const sandbox_pb::AcquireForSessionRequest* request,
    sandbox_pb::AcquireForSessionResponse* response) {
  if (absl::Status s = ValidateCall(*request); !s.ok()) return FinishNow(context, s);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const bool placed = SessionPlacement::WasPlaced(*context);
  const absl::Time deadline = absl::FromChrono(context->deadline());
  pool_.Schedule([this, reactor, request, response, placed, deadline] {
    absl::StatusOr<sandbox_pb::AcquireForSessionResponse> result =
        Acquire(*request, placed, deadline);
    if (result.ok()) *response = *std::move(result);
    reactor->Finish(ToGrpcStatus(result.status()));
  });
  return reactor;
}

absl::StatusOr<sandbox_pb::AcquireForSessionResponse> SandboxManagerService::Acquire(
    const sandbox_pb::AcquireForSessionRequest& request, bool placed, absl::Time deadline) {
  if (placement_ == nullptr) return AcquireHere(request);
  if (!placed && !HoldsSession(request.tenant_id(), request.session_id())) {
    std::optional<SessionPlacement::Held> holder = SessionPlacement::Earliest(
        placement_->FindHolders(request.tenant_id(), request.session_id()));
    if (holder)
      return placement_->Forward(holder->replica, &SandboxReplicas::Stub::AcquireForSession,
                                 request, deadline);
  }
  absl::StatusOr<sandbox_pb::AcquireForSessionResponse> here = AcquireHere(request);
  if (!here.ok() || !here->created()) return here;
  // Another replica may have created one for the session at the same moment: the one
  // minted first stays, the other is destroyed, and both callers get the first.
  std::optional<SessionPlacement::Held> earlier = SessionPlacement::Earliest(
      placement_->FindHolders(request.tenant_id(), request.session_id()), here->sandbox().id());
  if (!earlier) return here;
  // A failed destroy leaves it to its idle timeout; the caller still gets the kept one.
  (void)manager_->Destroy(request.tenant_id(), here->sandbox().id());
  return placement_->Forward(earlier->replica, &SandboxReplicas::Stub::AcquireForSession, request,
                             deadline);
}

absl::StatusOr<sandbox_pb::AcquireForSessionResponse> SandboxManagerService::AcquireHere(
    const sandbox_pb::AcquireForSessionRequest& request) {
  absl::StatusOr<SandboxManager::Acquired> result = manager_->AcquireForSession(request);
  if (!result.ok()) return result.status();
  sandbox_pb::AcquireForSessionResponse response;
  *response.mutable_sandbox() = std::move(result->sandbox);
  response.set_created(result->created);
  response.set_resumed(result->resumed);
  return response;
}

bool SandboxManagerService::HoldsSession(const std::string& tenant_id,
                                         const std::string& session_id) {
  sandbox_pb::ListSandboxesRequest live = SessionPlacement::LiveSandboxesOf(tenant_id, session_id);
  live.set_page_size(1);
  absl::StatusOr<sandbox_pb::ListSandboxesResponse> listed = manager_->List(live);
  return listed.ok() && listed->sandboxes_size() > 0;
}

grpc::ServerUnaryReactor* SandboxManagerService::PauseSandbox(
    grpc::CallbackServerContext* context, const sandbox_pb::PauseSandboxRequest* request,
    sandbox_pb::PauseSandboxResponse* response) {
  return ChangeOnPool(*manager_, pool_, context, request, response, &SandboxManager::Pause);
}

grpc::ServerUnaryReactor* SandboxManagerService::ResumeSandbox(
    grpc::CallbackServerContext* context, const sandbox_pb::ResumeSandboxRequest* request,
    sandbox_pb::ResumeSandboxResponse* response) {
  return ChangeOnPool(*manager_, pool_, context, request, response, &SandboxManager::Resume);
}

grpc::ServerUnaryReactor* SandboxManagerService::DestroySandbox(
    grpc::CallbackServerContext* context, const sandbox_pb::DestroySandboxRequest* request,
    sandbox_pb::DestroySandboxResponse* response) {
  return ChangeOnPool(*manager_, pool_, context, request, response, &SandboxManager::Destroy);
}

// ---------------------------------------------------------------------------------
// Operations inside a sandbox (proxied)

grpc::ServerWriteReactor<sandboxd_pb::ExecResponse>* SandboxManagerService::Exec(
    grpc::CallbackServerContext* context, const sandbox_pb::ExecRequest* request) {
  return ProxyStream(proxies_, context, *request, request->command(), &SandboxdAsync::Exec,
                     ValidateCall(*request));
}

grpc::ServerWriteReactor<sandboxd_pb::ReadFileResponse>* SandboxManagerService::ReadFile(
    grpc::CallbackServerContext* context, const sandbox_pb::ReadFileRequest* request) {
  return ProxyStream(proxies_, context, *request, request->file(), &SandboxdAsync::ReadFile,
                     ValidateCall(*request));
}

grpc::ServerReadReactor<sandbox_pb::WriteFileRequest>* SandboxManagerService::WriteFile(
    grpc::CallbackServerContext* context, sandboxd_pb::WriteFileResponse* response) {
  return ProxyWriteFile(proxies_, context, response);
}

grpc::ServerUnaryReactor* SandboxManagerService::ListFiles(
    grpc::CallbackServerContext* context, const sandbox_pb::ListFilesRequest* request,
    sandboxd_pb::ListDirResponse* response) {
  return ProxyUnary(proxies_, context, *request, request->list(), &SandboxdAsync::ListDir, response,
                    ValidateCall(*request));
}

grpc::ServerUnaryReactor* SandboxManagerService::StatFile(
    grpc::CallbackServerContext* context, const sandbox_pb::StatFileRequest* request,
    sandboxd_pb::StatResponse* response) {
  return ProxyUnary(proxies_, context, *request, request->stat(), &SandboxdAsync::Stat, response,
                    ValidateCall(*request));
}

grpc::ServerUnaryReactor* SandboxManagerService::MakeDir(grpc::CallbackServerContext* context,
                                                         const sandbox_pb::MakeDirRequest* request,
                                                         sandboxd_pb::MakeDirResponse* response) {
  return ProxyUnary(proxies_, context, *request, request->make_dir(), &SandboxdAsync::MakeDir,
                    response, ValidateCall(*request));
}

grpc::ServerUnaryReactor* SandboxManagerService::Remove(grpc::CallbackServerContext* context,
                                                        const sandbox_pb::RemoveRequest* request,
                                                        sandboxd_pb::RemoveResponse* response) {
  return ProxyUnary(proxies_, context, *request, request->remove(), &SandboxdAsync::Remove,
                    response, ValidateCall(*request));
}

}  // namespace parley::sandbox
