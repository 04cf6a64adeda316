// SandboxManagerService: parley.sandbox.v1.SandboxManager over gRPC (callback API).
//
//   SandboxManagerService service(&manager, /*lifecycle_threads=*/8);
//   host.AddService(&service);
//
// Every call is validated first (call_validation.h); the manager behind assumes valid
// input. Reads (templates, get, list) answer inline. Lifecycle calls that block on a
// provider (create, acquire, pause, resume, destroy) run on a fixed worker pool so gRPC's
// callback threads never block. Exec and file calls go to the proxies (proxy.h), which
// forward the embedded daemon request whole and relay the daemon's answers unchanged.
//
// With several replicas (`placement` given), AcquireForSession finds the replica that
// holds the session's sandbox and forwards the call there (placement.h); every other
// call is for this replica's own sandboxes, and one for another replica's id is refused
// with SANDBOX_WRONG_REPLICA naming the owner (the manager's lookup).
#pragma once

#include <grpcpp/grpcpp.h>

#include "common/thread_pool.h"
#include "parley/sandbox/v1/sandbox.grpc.pb.h"
#include "sandbox-svc/api/placement.h"
#include "sandbox-svc/api/proxy.h"
#include "sandbox-svc/manager/manager.h"

namespace parley::sandbox {

class SandboxManagerService final : public ::parley::sandbox::v1::SandboxManager::CallbackService {
 public:
  // `placement`: null for a single instance; else it must outlive the service.
  SandboxManagerService(SandboxManager* manager, int lifecycle_threads,
                        SessionPlacement* placement = nullptr);

  grpc::ServerUnaryReactor* ListTemplates(
      grpc::CallbackServerContext* context,
      const ::parley::sandbox::v1::ListTemplatesRequest* request,
      ::parley::sandbox::v1::ListTemplatesResponse* response) override;
  grpc::ServerUnaryReactor* GetTemplate(
      grpc::CallbackServerContext* context,
      const ::parley::sandbox::v1::GetTemplateRequest* request,
      ::parley::sandbox::v1::GetTemplateResponse* response) override;
  grpc::ServerUnaryReactor* CreateSandbox(
      grpc::CallbackServerContext* context,
      const ::parley::sandbox::v1::CreateSandboxRequest* request,
      ::parley::sandbox::v1::CreateSandboxResponse* response) override;
  grpc::ServerUnaryReactor* AcquireForSession(
      grpc::CallbackServerContext* context,
      const ::parley::sandbox::v1::AcquireForSessionRequest* request,
      ::parley::sandbox::v1::AcquireForSessionResponse* response) override;
  grpc::ServerUnaryReactor* GetSandbox(
      grpc::CallbackServerContext* context, const ::parley::sandbox::v1::GetSandboxRequest* request,
      ::parley::sandbox::v1::GetSandboxResponse* response) override;
  grpc::ServerUnaryReactor* ListSandboxes(
      grpc::CallbackServerContext* context,
      const ::parley::sandbox::v1::ListSandboxesRequest* request,
      ::parley::sandbox::v1::ListSandboxesResponse* response) override;
  grpc::ServerUnaryReactor* PauseSandbox(
      grpc::CallbackServerContext* context,
      const ::parley::sandbox::v1::PauseSandboxRequest* request,
      ::parley::sandbox::v1::PauseSandboxResponse* response) override;
  grpc::ServerUnaryReactor* ResumeSandbox(
      grpc::CallbackServerContext* context,
      const ::parley::sandbox::v1::ResumeSandboxRequest* request,
      ::parley::sandbox::v1::ResumeSandboxResponse* response) override;
  grpc::ServerUnaryReactor* DestroySandbox(
      grpc::CallbackServerContext* context,
      const ::parley::sandbox::v1::DestroySandboxRequest* request,
      ::parley::sandbox::v1::DestroySandboxResponse* response) override;

  grpc::ServerWriteReactor<::parley::sandboxd::v1::ExecResponse>* Exec(
      grpc::CallbackServerContext* context,
      const ::parley::sandbox::v1::ExecRequest* request) override;
  grpc::ServerWriteReactor<::parley::sandboxd::v1::ReadFileResponse>* ReadFile(
      grpc::CallbackServerContext* context,
      const ::parley::sandbox::v1::ReadFileRequest* request) override;
  grpc::ServerReadReactor<::parley::sandbox::v1::WriteFileRequest>* WriteFile(
      grpc::CallbackServerContext* context,
      ::parley::sandboxd::v1::WriteFileResponse* response) override;
  grpc::ServerUnaryReactor* ListFiles(grpc::CallbackServerContext* context,
                                      const ::parley::sandbox::v1::ListFilesRequest* request,
                                      ::parley::sandboxd::v1::ListDirResponse* response) override;
  grpc::ServerUnaryReactor* StatFile(grpc::CallbackServerContext* context,
                                     const ::parley::sandbox::v1::StatFileRequest* request,
                                     ::parley::sandboxd::v1::StatResponse* response) override;
  grpc::ServerUnaryReactor* MakeDir(grpc::CallbackServerContext* context,
                                    const ::parley::sandbox::v1::MakeDirRequest* request,
                                    ::parley::sandboxd::v1::MakeDirResponse* response) override;
  grpc::ServerUnaryReactor* Remove(grpc::CallbackServerContext* context,
                                   const ::parley::sandbox::v1::RemoveRequest* request,
                                   ::parley::sandboxd::v1::RemoveResponse* response) override;

 private:
  // AcquireForSession on the worker pool: here, or on the peer that holds the session's
  // sandbox. `placed`: the call was forwarded by a peer.
  absl::StatusOr<::parley::sandbox::v1::AcquireForSessionResponse> Acquire(
      const ::parley::sandbox::v1::AcquireForSessionRequest& request, bool placed,
      absl::Time deadline);
  // Acquires on this replica.
  absl::StatusOr<::parley::sandbox::v1::AcquireForSessionResponse> AcquireHere(
      const ::parley::sandbox::v1::AcquireForSessionRequest& request);
  // Whether this replica holds a live sandbox of the session.
  bool HoldsSession(const std::string& tenant_id, const std::string& session_id);

  SandboxManager* manager_;
  SessionPlacement* const placement_;
  // Declared before the pool it refers to (it only keeps the reference), so it is
  // destroyed after it: the pool's destructor runs the queued tasks, which use it.
  ProxyContext proxies_{*manager_, pool_};
  ThreadPool pool_;
};

}  // namespace parley::sandbox
