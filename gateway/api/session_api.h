// The public parley.v1.SessionService as served by the gateway.
//
// Every call is authenticated first (UNAUTHENTICATED otherwise). Calls that change a
// session's turns (SendMessage, CancelTurn) go to any session-svc replica with the
// caller's tenant attached; StreamEvents is served from this node's fan-out hub; the
// rest are served by later parts of the gateway and answer UNIMPLEMENTED until then.
//
// Threading: handlers run on gRPC's callback threads and never block; forwarding is
// asynchronous (ForwardingReactor).
#pragma once

#include <memory>

#include "absl/time/time.h"
#include "common/status.h"
#include "gateway/api/forwarding_reactor.h"
#include "gateway/auth/authenticator.h"
#include "gateway/fanout/hub.h"
#include "parley/router/v1/router.grpc.pb.h"
#include "parley/v1/parley.grpc.pb.h"
#include "telemetry/grpc_telemetry.h"

namespace parley::gateway {

// gRPC's path of StreamEvents, whose calls SessionApi records itself.
inline constexpr char kStreamEventsMethod[] = "/parley.v1.SessionService/StreamEvents";

class SessionApi final : public v1::SessionService::CallbackService {
 public:
  // `authenticator` and `telemetry` must outlive this object; construct it before the
  // server is built (StreamEvents calls are recorded by their handler, not by an
  // interceptor: see GrpcTelemetry::InstrumentInHandler).
  SessionApi(Authenticator& authenticator, telemetry::GrpcTelemetry& telemetry,
             std::shared_ptr<grpc::Channel> session_channel, absl::Duration downstream_timeout,
             Hub& hub);

  grpc::ServerUnaryReactor* SendMessage(grpc::CallbackServerContext* context,
                                        const v1::SendMessageRequest* request,
                                        v1::SendMessageResponse* response) override;
  grpc::ServerUnaryReactor* CancelTurn(grpc::CallbackServerContext* context,
                                       const v1::CancelTurnRequest* request,
                                       v1::CancelTurnResponse* response) override;
  grpc::ServerWriteReactor<v1::StreamEventsResponse>* StreamEvents(
      grpc::CallbackServerContext* context, const v1::StreamEventsRequest* request) override;

 private:
  // Authenticates the caller, then forwards `request` with the caller's tenant to
  // session-svc as a `Forwarded`; `start` makes the downstream call.
  template <typename Forwarded, typename Request>
  grpc::ServerUnaryReactor* Forward(grpc::CallbackServerContext* context, const Request& request,
                                    const typename ForwardingReactor<Forwarded>::Start& start) {
    absl::StatusOr<Principal> principal = authenticator_.Authenticate(*context);
    if (!principal.ok()) {
      grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
      reactor->Finish(ToGrpcStatus(principal.status()));
      return reactor;
    }
    Forwarded forwarded;
    forwarded.set_tenant_id(principal->tenant_id);
    *forwarded.mutable_request() = request;
    return new ForwardingReactor<Forwarded>(context, std::move(forwarded), downstream_timeout_,
                                            start);
  }

  Authenticator& authenticator_;
  telemetry::GrpcTelemetry& telemetry_;
  std::unique_ptr<router::v1::SessionRouter::Stub> router_;
  absl::Duration downstream_timeout_;
  Hub& hub_;
};

}  // namespace parley::gateway
