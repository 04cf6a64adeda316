// SandboxdService: parley.sandboxd.v1.Sandboxd, the daemon inside every sandbox.
//
//   SandboxdService service(options, std::move(workspace));
//   builder.RegisterService(&service);
//
// Hello checks the protocol version; Exec starts an ExecReactor (exec_reactor.h), which
// runs a ProcessTree (exec.h) and streams its output from a pump thread under gRPC flow
// control; file calls go to the Workspace (files.h) inline in their reactors, one bounded
// read or write per step. The requests are the shared operation messages
// (parley/sandboxd/v1/operations.proto), checked by the same validators parley-sandbox
// uses. When a token is configured every call must carry `x-parley-sandbox-token`.
// Thread-safe: per-call state lives in the reactors; the service holds only settings
// and the exec slots.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "parley/sandboxd/v1/sandboxd.grpc.pb.h"
#include "sandbox-svc/sandboxd/exec.h"
#include "sandbox-svc/sandboxd/exec_reactor.h"
#include "sandbox-svc/sandboxd/files.h"

namespace parley::sandbox {

// The protocol version this daemon speaks (sandboxd.proto ProtocolVersion).
inline constexpr uint32_t kSandboxdProtocolVersion = 1;

struct SandboxdOptions {
  ExecLimits limits;                  // Applied to every exec'd program.
  int max_concurrent_execs = 64;      // More: RESOURCE_EXHAUSTED "TOO_MANY_PROCESSES".
  std::string token;                  // Empty: no token required.
  std::vector<std::string> base_env;  // "NAME=value"; exec env is added on top.
  std::string version = "0.0.0";      // Reported by Hello.
};

class SandboxdService final : public ::parley::sandboxd::v1::Sandboxd::CallbackService {
 public:
  SandboxdService(SandboxdOptions options, std::unique_ptr<Workspace> workspace);

  grpc::ServerUnaryReactor* Hello(grpc::CallbackServerContext* context,
                                  const ::parley::sandboxd::v1::HelloRequest* request,
                                  ::parley::sandboxd::v1::HelloResponse* response) override;
  grpc::ServerWriteReactor< ::parley::sandboxd::v1::ExecResponse>* Exec(
      grpc::CallbackServerContext* context,
      const ::parley::sandboxd::v1::ExecRequest* request) override;
  grpc::ServerWriteReactor< ::parley::sandboxd::v1::ReadFileResponse>* ReadFile(
      grpc::CallbackServerContext* context,
      const ::parley::sandboxd::v1::ReadFileRequest* request) override;
  grpc::ServerReadReactor< ::parley::sandboxd::v1::WriteFileRequest>* WriteFile(
      grpc::CallbackServerContext* context,
      ::parley::sandboxd::v1::WriteFileResponse* response) override;
  grpc::ServerUnaryReactor* ListDir(grpc::CallbackServerContext* context,
                                    const ::parley::sandboxd::v1::ListDirRequest* request,
                                    ::parley::sandboxd::v1::ListDirResponse* response) override;
  grpc::ServerUnaryReactor* Stat(grpc::CallbackServerContext* context,
                                 const ::parley::sandboxd::v1::StatRequest* request,
                                 ::parley::sandboxd::v1::StatResponse* response) override;
  grpc::ServerUnaryReactor* MakeDir(grpc::CallbackServerContext* context,
                                    const ::parley::sandboxd::v1::MakeDirRequest* request,
                                    ::parley::sandboxd::v1::MakeDirResponse* response) override;
  grpc::ServerUnaryReactor* Remove(grpc::CallbackServerContext* context,
                                   const ::parley::sandboxd::v1::RemoveRequest* request,
                                   ::parley::sandboxd::v1::RemoveResponse* response) override;

 private:
  // OK when no token is configured or the call carries the right one; else UNAUTHENTICATED.
  absl::Status CheckToken(grpc::CallbackServerContext* context) const;

  const SandboxdOptions options_;
  const std::unique_ptr<Workspace> workspace_;
  ExecSlots exec_slots_;
  const ExecContext exec_context_;  // Refers to the three members above.
};

}  // namespace parley::sandbox
