#include "gateway/api/session_api.h"

#include "gateway/api/stream_events.h"

namespace parley::gateway {

SessionApi::SessionApi(Authenticator& authenticator, telemetry::GrpcTelemetry& telemetry,
                       std::shared_ptr<grpc::Channel> session_channel,
                       absl::Duration downstream_timeout, Hub& hub)
    : authenticator_(authenticator),
      telemetry_(telemetry),
      router_(router::v1::SessionRouter::NewStub(std::move(session_channel))),
      downstream_timeout_(downstream_timeout),
      hub_(hub) {
  telemetry_.InstrumentInHandler(kStreamEventsMethod);
}

grpc::ServerWriteReactor<v1::StreamEventsResponse>* SessionApi::StreamEvents(
    grpc::CallbackServerContext* context, const v1::StreamEventsRequest* request) {
  telemetry::ServerCallTelemetry call(telemetry_, *context, kStreamEventsMethod);
  absl::StatusOr<Principal> principal = authenticator_.Authenticate(*context);
  if (!principal.ok()) {
    return new RejectedStream(ToGrpcStatus(principal.status()), std::move(call));
  }
  absl::StatusOr<StreamParams> params = StreamParamsFromRequest(principal->tenant_id, *request);
  if (!params.ok()) return new RejectedStream(ToGrpcStatus(params.status()), std::move(call));
  return new StreamEventsReactor(hub_, *std::move(params), std::move(call));
}

grpc::ServerUnaryReactor* SessionApi::SendMessage(grpc::CallbackServerContext* context,
                                                  const v1::SendMessageRequest* request,
                                                  v1::SendMessageResponse* response) {
  return Forward<router::v1::SubmitMessageRequest>(
      context, *request,
      [this, response](grpc::ClientContext* client, const router::v1::SubmitMessageRequest* req,
                       ForwardingReactor<router::v1::SubmitMessageRequest>::Done done) {
        router_->async()->SubmitMessage(client, req, response, std::move(done));
      });
}

grpc::ServerUnaryReactor* SessionApi::CancelTurn(grpc::CallbackServerContext* context,
                                                 const v1::CancelTurnRequest* request,
                                                 v1::CancelTurnResponse* response) {
  return Forward<router::v1::CancelTurnRequest>(
      context, *request,
      [this, response](grpc::ClientContext* client, const router::v1::CancelTurnRequest* req,
                       ForwardingReactor<router::v1::CancelTurnRequest>::Done done) {
        router_->async()->CancelTurn(client, req, response, std::move(done));
      });
}

}  // namespace parley::gateway
