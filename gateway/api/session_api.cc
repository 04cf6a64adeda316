#include "gateway/api/session_api.h"

#include "common/status.h"
#include "gateway/api/forwarding_reactor.h"
#include "gateway/api/stream_events.h"

namespace parley::gateway {
namespace {

grpc::ServerUnaryReactor* Reject(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

SessionApi::SessionApi(Authenticator& authenticator, telemetry::GrpcTelemetry& telemetry,
                       std::shared_ptr<grpc::Channel> session_channel,
                       absl::Duration downstream_timeout, Hub* hub)
    : authenticator_(authenticator),
      telemetry_(telemetry),
      router_(router::v1::SessionRouter::NewStub(std::move(session_channel))),
      downstream_timeout_(downstream_timeout),
      hub_(hub) {
  telemetry_.InstrumentInHandler(kStreamEventsMethod);
}

grpc::ServerWriteReactor<v1::StreamEventsResponse>* SessionApi::StreamEvents(
    grpc::CallbackServerContext* context, const v1::StreamEventsRequest* request) {
  auto call =
      std::make_unique<telemetry::ServerCallTelemetry>(telemetry_, *context, kStreamEventsMethod);
  absl::StatusOr<Principal> principal = authenticator_.Authenticate(*context);
  if (!principal.ok()) {
    return new RejectedStream(ToGrpcStatus(principal.status()), std::move(call));
  }
  absl::StatusOr<StreamParams> params = StreamParamsFromRequest(principal->tenant_id, *request);
  if (!params.ok()) return new RejectedStream(ToGrpcStatus(params.status()), std::move(call));
  if (hub_ == nullptr) {
    return new RejectedStream(
        grpc::Status(grpc::StatusCode::UNAVAILABLE, "event streaming is not configured"),
        std::move(call));
  }
  return new StreamEventsReactor(*hub_, *std::move(params), std::move(call));
}

grpc::ServerUnaryReactor* SessionApi::SendMessage(grpc::CallbackServerContext* context,
                                                  const v1::SendMessageRequest* request,
                                                  v1::SendMessageResponse* response) {
  absl::StatusOr<Principal> principal = authenticator_.Authenticate(*context);
  if (!principal.ok()) return Reject(context, principal.status());
  router::v1::SubmitMessageRequest forwarded;
  forwarded.set_tenant_id(principal->tenant_id);
  *forwarded.mutable_request() = *request;
  return new ForwardingReactor<router::v1::SubmitMessageRequest>(
      context, std::move(forwarded), downstream_timeout_,
      [this, response](grpc::ClientContext* client, const router::v1::SubmitMessageRequest* req,
                       std::function<void(grpc::Status)> done) {
        router_->async()->SubmitMessage(client, req, response, std::move(done));
      });
}

grpc::ServerUnaryReactor* SessionApi::CancelTurn(grpc::CallbackServerContext* context,
                                                 const v1::CancelTurnRequest* request,
                                                 v1::CancelTurnResponse* response) {
  absl::StatusOr<Principal> principal = authenticator_.Authenticate(*context);
  if (!principal.ok()) return Reject(context, principal.status());
  router::v1::CancelTurnRequest forwarded;
  forwarded.set_tenant_id(principal->tenant_id);
  *forwarded.mutable_request() = *request;
  return new ForwardingReactor<router::v1::CancelTurnRequest>(
      context, std::move(forwarded), downstream_timeout_,
      [this, response](grpc::ClientContext* client, const router::v1::CancelTurnRequest* req,
                       std::function<void(grpc::Status)> done) {
        router_->async()->CancelTurn(client, req, response, std::move(done));
      });
}

}  // namespace parley::gateway
