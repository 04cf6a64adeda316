#include "gateway/api/session_api.h"

#include "common/status.h"
#include "gateway/api/forwarding_reactor.h"

namespace parley::gateway {
namespace {

grpc::ServerUnaryReactor* Reject(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace

SessionApi::SessionApi(Authenticator& authenticator, std::shared_ptr<grpc::Channel> session_channel,
                       absl::Duration downstream_timeout)
    : authenticator_(authenticator),
      router_(router::v1::SessionRouter::NewStub(std::move(session_channel))),
      downstream_timeout_(downstream_timeout) {}

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
