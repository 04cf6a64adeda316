// The public parley.v1.SessionService as served by the gateway.
//
// Unary calls are AuthorizedCalls (gateway/api/authorized_call.h): what changes a
// session's turns (SendMessage, CancelTurn, CloseSession) goes to any session-svc
// replica, the rest to store-svc, with the caller's tenant attached. StreamEvents is
// and Subscribe are served from this node's fan-out hub.
//
// Threading: handlers run on gRPC's callback threads and never block.
#pragma once

#include <memory>

#include "absl/time/time.h"
#include "gateway/api/idempotency.h"
#include "gateway/api/stream_events.h"
#include "gateway/api/stream_revalidator.h"
#include "gateway/api/subscribe.h"
#include "gateway/auth/authenticator.h"
#include "gateway/fanout/hub.h"
#include "parley/router/v1/router.grpc.pb.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "parley/v1/parley.grpc.pb.h"
#include "telemetry/grpc_telemetry.h"

namespace parley::gateway {

// gRPC's paths of the streams, whose calls SessionApi records itself.
inline constexpr char kStreamEventsMethod[] = "/parley.v1.SessionService/StreamEvents";
inline constexpr char kSendMessageAndStreamMethod[] =
    "/parley.v1.SessionService/SendMessageAndStream";

inline constexpr char kSubscribeMethod[] = "/parley.v1.SessionService/Subscribe";

// Every method a callback; the three streams on raw bytes, so their events go out as
// laid out around bytes serialized once for every stream (StreamEventsBytes,
// SubscribeBatch). Their requests are parsed by the handlers (ParseRequest).
using SessionServiceBase = v1::SessionService::WithCallbackMethod_CreateSession<
    v1::SessionService::WithCallbackMethod_GetSession<
        v1::SessionService::WithCallbackMethod_ListSessions<
            v1::SessionService::WithCallbackMethod_UpdateSession<
                v1::SessionService::WithCallbackMethod_CloseSession<
                    v1::SessionService::WithCallbackMethod_SendMessage<
                        v1::SessionService::WithCallbackMethod_ListMessages<
                            v1::SessionService::WithCallbackMethod_GetTurn<
                                v1::SessionService::WithCallbackMethod_ListTurns<
                                    v1::SessionService::WithCallbackMethod_CancelTurn<
                                        v1::SessionService::WithRawCallbackMethod_StreamEvents<
                                            v1::SessionService::
                                                WithRawCallbackMethod_SendMessageAndStream<
                                                    v1::SessionService::
                                                        WithRawCallbackMethod_Subscribe<
                                                            v1::SessionService::
                                                                Service>>>>>>>>>>>>>;

class SessionApi final : public SessionServiceBase {
 public:
  // `authenticator`, `telemetry`, `hub`, `idempotency` and `revalidator` (which ends
  // the open streams of a revoked key; optional) must outlive this object; construct it
  // before the server is built (StreamEvents calls are recorded by their handler, not by an
  // interceptor: see GrpcTelemetry::InstrumentInHandler).
  SessionApi(Authenticator& authenticator, telemetry::GrpcTelemetry& telemetry,
             std::shared_ptr<grpc::Channel> session_channel,
             std::shared_ptr<store::v1::StoreService::StubInterface> store,
             absl::Duration downstream_timeout, Hub& hub, IdempotencyStore* idempotency,
             StreamRevalidator* revalidator = nullptr);

  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const v1::CreateSessionRequest* request,
                                          v1::CreateSessionResponse* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const v1::GetSessionRequest* request,
                                       v1::GetSessionResponse* response) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* context,
                                         const v1::ListSessionsRequest* request,
                                         v1::ListSessionsResponse* response) override;
  grpc::ServerUnaryReactor* UpdateSession(grpc::CallbackServerContext* context,
                                          const v1::UpdateSessionRequest* request,
                                          v1::UpdateSessionResponse* response) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* context,
                                         const v1::CloseSessionRequest* request,
                                         v1::CloseSessionResponse* response) override;
  grpc::ServerUnaryReactor* SendMessage(grpc::CallbackServerContext* context,
                                        const v1::SendMessageRequest* request,
                                        v1::SendMessageResponse* response) override;
  grpc::ServerUnaryReactor* ListMessages(grpc::CallbackServerContext* context,
                                         const v1::ListMessagesRequest* request,
                                         v1::ListMessagesResponse* response) override;
  grpc::ServerUnaryReactor* GetTurn(grpc::CallbackServerContext* context,
                                    const v1::GetTurnRequest* request,
                                    v1::GetTurnResponse* response) override;
  grpc::ServerUnaryReactor* ListTurns(grpc::CallbackServerContext* context,
                                      const v1::ListTurnsRequest* request,
                                      v1::ListTurnsResponse* response) override;
  grpc::ServerUnaryReactor* CancelTurn(grpc::CallbackServerContext* context,
                                       const v1::CancelTurnRequest* request,
                                       v1::CancelTurnResponse* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* StreamEvents(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) override;
  // SendMessage through session-svc, then the hub's stream of that turn: its answer is
  // written first, and the stream opens only after that write completed.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Subscribe(
      grpc::CallbackServerContext* context) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* SendMessageAndStream(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) override;

 private:
  Authenticator& authenticator_;
  telemetry::GrpcTelemetry& telemetry_;
  std::unique_ptr<router::v1::SessionRouter::Stub> router_;
  std::shared_ptr<store::v1::StoreService::StubInterface> store_;
  absl::Duration downstream_timeout_;
  // The hook that lets `revalidator_` watch a stream's key; null without one.
  StreamEventsReactor::OnOpen WatchKeyOf(grpc::CallbackServerContext* context);

  Hub& hub_;
  IdempotencyStore* idempotency_;
  StreamRevalidator* revalidator_;
};

}  // namespace parley::gateway
