// Connecting to a daemon. Reconnect backoff is short (10 ms to 1 s) because a daemon
// that is not there yet is usually milliseconds away from accepting.
#include "sandbox-svc/manager/daemon_client.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"

namespace parley::sandbox {

DaemonConnection::DaemonConnection(DaemonEndpoint endpoint, std::shared_ptr<grpc::Channel> channel)
    : endpoint_(std::move(endpoint)),
      channel_(std::move(channel)),
      stub_(::parley::sandboxd::v1::Sandboxd::NewStub(channel_)) {}

void DaemonConnection::Prepare(grpc::ClientContext& context) const {
  if (!endpoint_.token.empty()) context.AddMetadata("x-parley-sandbox-token", endpoint_.token);
}

absl::StatusOr<std::shared_ptr<DaemonConnection>> DaemonConnection::Connect(
    const DaemonEndpoint& endpoint, absl::Duration timeout) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 10);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 10);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // Each sandbox gets its own connection; never share subchannels between daemons.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel =
      grpc::CreateCustomChannel(endpoint.target, grpc::InsecureChannelCredentials(), args);
  std::shared_ptr<DaemonConnection> connection(new DaemonConnection(endpoint, std::move(channel)));

  grpc::ClientContext context;
  connection->Prepare(context);
  context.set_wait_for_ready(true);
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  ::parley::sandboxd::v1::HelloRequest request;
  request.set_client_protocol_version(kClientProtocolVersion);
  grpc::Status status = connection->stub().Hello(&context, request, &connection->hello_);
  if (!status.ok()) {
    absl::Status error = FromGrpcStatus(status);
    if (error.code() == absl::StatusCode::kFailedPrecondition) return error;  // Mismatch.
    return absl::UnavailableError(absl::StrCat("sandbox daemon at ", endpoint.target,
                                               " did not answer: ", status.error_message()));
  }
  if (connection->hello_.daemon_protocol_version() != kClientProtocolVersion) {
    absl::Status error = absl::FailedPreconditionError(
        absl::StrCat("sandboxd protocol mismatch: client ", kClientProtocolVersion, ", daemon ",
                     connection->hello_.daemon_protocol_version()));
    SetErrorInfo(
        error, "PROTOCOL_MISMATCH",
        {{"client_protocol_version", absl::StrCat(kClientProtocolVersion)},
         {"daemon_protocol_version", absl::StrCat(connection->hello_.daemon_protocol_version())}});
    return error;
  }
  return connection;
}

}  // namespace parley::sandbox
