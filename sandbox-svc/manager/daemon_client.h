// DaemonConnection: a gRPC channel to one sandbox's parley-sandboxd that has passed the
// protocol handshake.
//
//   auto daemon = DaemonConnection::Connect(endpoint, absl::Seconds(10));
//   grpc::ClientContext context;
//   (*daemon)->Prepare(context);   // adds the token, when the daemon has one
//   (*daemon)->stub().Stat(&context, request, &response);
//
// Connect() calls Hello with wait-for-ready, so it also waits for a daemon that is still
// starting (bounded by `timeout`). A daemon that speaks another protocol version is
// FAILED_PRECONDITION "PROTOCOL_MISMATCH" naming both versions, whichever side noticed.
// Thread-safe; shared by every operation on the sandbox.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "parley/sandboxd/v1/sandboxd.grpc.pb.h"
#include "sandbox-svc/provider/provider.h"

namespace parley::sandbox {

// The protocol version this manager speaks.
inline constexpr uint32_t kClientProtocolVersion = 1;

class DaemonConnection {
 public:
  static absl::StatusOr<std::shared_ptr<DaemonConnection>> Connect(const DaemonEndpoint& endpoint,
                                                                   absl::Duration timeout);

  ::parley::sandboxd::v1::Sandboxd::Stub& stub() { return *stub_; }
  // Adds per-call metadata (the token). Call on every context used with stub().
  void Prepare(grpc::ClientContext& context) const;
  const ::parley::sandboxd::v1::HelloResponse& hello() const { return hello_; }
  const std::string& target() const { return endpoint_.target; }

 private:
  DaemonConnection(DaemonEndpoint endpoint, std::shared_ptr<grpc::Channel> channel);

  DaemonEndpoint endpoint_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<::parley::sandboxd::v1::Sandboxd::Stub> stub_;
  ::parley::sandboxd::v1::HelloResponse hello_;
};

}  // namespace parley::sandbox
