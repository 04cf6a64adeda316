// Proxies of the operations inside a sandbox: each pairs the caller's server reactor with
// a client reactor to the sandbox's parley-sandboxd and forwards the embedded daemon
// message whole (parley/sandboxd/v1/operations.proto), relaying the daemon's messages
// unchanged.
//
//   ProxyContext proxies(manager, pool);
//   return ProxyStream(proxies, context, *request, request->command(), &SandboxdAsync::Exec,
//                      ValidateCall(*request));
//
// One message is in flight in each direction, so flow control reaches from the caller to
// the process in the sandbox, and cancelling the caller's call cancels the daemon's (which
// kills the process tree). Proxies run on gRPC's callback threads; only obtaining an
// operation on a sandbox that must first be resumed or reconnected, and judging a daemon
// that answered UNAVAILABLE, hop onto the worker pool (through ProxyContext).
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "parley/sandbox/v1/sandbox.grpc.pb.h"
#include "parley/sandboxd/v1/operations.pb.h"
#include "parley/sandboxd/v1/sandboxd.grpc.pb.h"
#include "sandbox-svc/manager/manager.h"

namespace parley::sandbox {

// All a proxy may ask of the service besides its daemon call: an operation on a sandbox,
// and a verdict on a daemon that answered UNAVAILABLE. Both may block, so they run inline
// only when they cannot. Thread-safe; outlives every proxy (the service owns it).
class ProxyContext {
 public:
  using Operation = SandboxManager::Operation;
  using OperationReady = std::function<void(absl::StatusOr<std::unique_ptr<Operation>>)>;

  ProxyContext(SandboxManager& manager, ThreadPool& pool) : manager_(manager), pool_(pool) {}

  // Obtains an operation on the sandbox without blocking a gRPC thread: inline when it is
  // READY and connected, else on the worker pool. `then` runs exactly once, with the
  // operation or the error (NOT_FOUND, SANDBOX_GONE, UNAVAILABLE).
  void WithOperation(const std::string& tenant_id, const std::string& sandbox_id,
                     OperationReady then);

  // A daemon call ended UNAVAILABLE: is the sandbox dead or just slow? On the worker pool,
  // `finish` gets the status to answer the caller with (SANDBOX_GONE or `status`).
  void JudgeUnavailable(std::string sandbox_id, const grpc::Status& status,
                        std::function<void(absl::Status)> finish);

 private:
  SandboxManager& manager_;
  ThreadPool& pool_;
};

// The daemon's client stub, whose methods the proxies are given.
using SandboxdAsync = ::parley::sandboxd::v1::Sandboxd::StubInterface::async_interface;

// Each proxy finishes the call at once with `validation` when it is not OK (the request's
// ValidateCall result), else proxies it; it returns the reactor for gRPC and frees itself
// once both sides are done. The request and response objects are gRPC's, alive until then.

// The server-streaming proxy (Exec, ReadFile): `daemon_request` (embedded in `request`) goes
// to the daemon's `method`, whose messages are written to the caller as they arrive.
// Defined for the Exec and ReadFile requests.
//
//   return ProxyStream(proxies_, context, *request, request->command(), &SandboxdAsync::Exec,
//                      ValidateCall(*request));
template <typename DaemonReq, typename Message>
using StreamMethod = void (SandboxdAsync::*)(grpc::ClientContext*, const DaemonReq*,
                                             grpc::ClientReadReactor<Message>*);
template <typename Request, typename DaemonReq, typename Message>
grpc::ServerWriteReactor<Message>* ProxyStream(ProxyContext& proxies,
                                               grpc::CallbackServerContext* context,
                                               const Request& request,
                                               const DaemonReq& daemon_request,
                                               StreamMethod<DaemonReq, Message> method,
                                               const absl::Status& validation);

// The client-streaming proxy (WriteFile). The stream is validated as it arrives: its header
// with ValidateCall, each data chunk with ValidateWriteChunk.
grpc::ServerReadReactor<::parley::sandbox::v1::WriteFileRequest>* ProxyWriteFile(
    ProxyContext& proxies, grpc::CallbackServerContext* context,
    ::parley::sandboxd::v1::WriteFileResponse* response);

// The unary proxy's core: `launch` starts the daemon call on `daemon` and reports its end
// to `done`. Use ProxyUnary below.
using UnaryDaemonCall = std::function<void(SandboxdAsync* daemon, grpc::ClientContext* client,
                                           std::function<void(grpc::Status)> done)>;
grpc::ServerUnaryReactor* ProxyUnaryCall(ProxyContext& proxies,
                                         grpc::CallbackServerContext* context,
                                         const std::string& tenant_id,
                                         const std::string& sandbox_id,
                                         const absl::Status& validation, UnaryDaemonCall launch);

// The unary proxy (ListFiles, StatFile, MakeDir, Remove): `daemon_request` (embedded in
// `request`) goes to the daemon's `method`, whose answer lands in `response`.
//
//   return ProxyUnary(proxies_, context, *request, request->stat(), &SandboxdAsync::Stat,
//                     response, ValidateCall(*request));
template <typename DaemonReq, typename DaemonResp>
using UnaryMethod = void (SandboxdAsync::*)(grpc::ClientContext*, const DaemonReq*, DaemonResp*,
                                            std::function<void(grpc::Status)>);
template <typename Request, typename DaemonReq, typename DaemonResp>
grpc::ServerUnaryReactor* ProxyUnary(ProxyContext& proxies, grpc::CallbackServerContext* context,
                                     const Request& request, const DaemonReq& daemon_request,
                                     UnaryMethod<DaemonReq, DaemonResp> method,
                                     DaemonResp* response, const absl::Status& validation) {
  return ProxyUnaryCall(
      proxies, context, request.tenant_id(), request.sandbox_id(), validation,
      [&daemon_request, method, response](SandboxdAsync* daemon, grpc::ClientContext* client,
                                          std::function<void(grpc::Status)> done) {
        (daemon->*method)(client, &daemon_request, response, std::move(done));
      });
}

}  // namespace parley::sandbox
