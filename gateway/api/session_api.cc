#include "gateway/api/session_api.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "gateway/api/authorized_call.h"
#include "gateway/api/stream_events.h"

namespace parley::gateway {
namespace {

namespace store_pb = ::parley::store::v1;
namespace router_pb = ::parley::router::v1;

// Builds an internal request that carries the caller's tenant and the public request
// whole (the shape of most internal requests).
template <typename Internal, typename Public>
auto WithTenant(const Public* request) {
  return [request](const Principal& who, Internal* out) {
    out->set_tenant_id(who.tenant_id);
    *out->mutable_request() = *request;
    return absl::OkStatus();
  };
}

// A reply for downstream calls that answer with the public response itself.
template <typename Response>
auto AsIs(Response* response) {
  return [response](Response& out) {
    response->Swap(&out);
    return absl::OkStatus();
  };
}

// The router's request for a SendMessage or SendMessageAndStream call. A message's
// idempotency is the store's own, durable: the `idempotency-key` header stands for the
// request's idempotency_key when that is empty.
absl::Status BuildSubmit(const grpc::ServerContextBase& context, const Principal& who,
                         const v1::SendMessageRequest& request,
                         router_pb::SubmitMessageRequest* out) {
  out->set_tenant_id(who.tenant_id);
  *out->mutable_request() = request;
  absl::StatusOr<std::optional<std::string>> key = IdempotencyKeyOf(context);
  if (!key.ok()) return key.status();
  if (key->has_value() && request.idempotency_key().empty()) {
    out->mutable_request()->set_idempotency_key(**key);
  }
  return absl::OkStatus();
}

}  // namespace

SessionApi::SessionApi(Authenticator& authenticator, telemetry::GrpcTelemetry& telemetry,
                       std::shared_ptr<grpc::Channel> session_channel,
                       std::shared_ptr<store::v1::StoreService::StubInterface> store,
                       absl::Duration downstream_timeout, Hub& hub, IdempotencyStore* idempotency,
                       StreamRevalidator* revalidator)
    : authenticator_(authenticator),
      telemetry_(telemetry),
      router_(router::v1::SessionRouter::NewStub(std::move(session_channel))),
      store_(std::move(store)),
      downstream_timeout_(downstream_timeout),
      hub_(hub),
      idempotency_(idempotency),
      revalidator_(revalidator) {
  telemetry_.InstrumentInHandler(kStreamEventsMethod);
  telemetry_.InstrumentInHandler(kSendMessageAndStreamMethod);
  telemetry_.InstrumentInHandler(kSubscribeMethod);
}

grpc::ServerUnaryReactor* SessionApi::CreateSession(grpc::CallbackServerContext* context,
                                                    const v1::CreateSessionRequest* request,
                                                    v1::CreateSessionResponse* response) {
  using Call = AuthorizedCall<store_pb::CreateSessionRequest, store_pb::CreateSessionResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeSessionsWrite,
       .idempotency = idempotency_,
       .method = "CreateSession",
       .build = WithTenant<store_pb::CreateSessionRequest>(request),
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { store_->async()->CreateSession(c, req, resp, std::move(done)); },
       .reply =
           [response](store_pb::CreateSessionResponse& out) {
             response->mutable_session()->Swap(out.mutable_session());
             response->set_created(out.created());
             return absl::OkStatus();
           }});
}

grpc::ServerUnaryReactor* SessionApi::GetSession(grpc::CallbackServerContext* context,
                                                 const v1::GetSessionRequest* request,
                                                 v1::GetSessionResponse* response) {
  using Call = AuthorizedCall<store_pb::GetSessionRequest, store_pb::GetSessionResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeSessionsRead,
       .build =
           [request](const Principal& who, store_pb::GetSessionRequest* out) {
             out->set_tenant_id(who.tenant_id);
             out->set_session_id(request->session_id());
             return absl::OkStatus();
           },
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { store_->async()->GetSession(c, req, resp, std::move(done)); },
       // Lease details are internal: only the session goes out.
       .reply =
           [response](store_pb::GetSessionResponse& out) {
             response->mutable_session()->Swap(out.mutable_session());
             return absl::OkStatus();
           }});
}

grpc::ServerUnaryReactor* SessionApi::ListSessions(grpc::CallbackServerContext* context,
                                                   const v1::ListSessionsRequest* request,
                                                   v1::ListSessionsResponse* response) {
  using Call = AuthorizedCall<store_pb::ListSessionsRequest, store_pb::ListSessionsResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeSessionsRead,
       .build = WithTenant<store_pb::ListSessionsRequest>(request),
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { store_->async()->ListSessions(c, req, resp, std::move(done)); },
       .reply =
           [response](store_pb::ListSessionsResponse& out) {
             response->mutable_sessions()->Swap(out.mutable_sessions());
             response->set_next_page_token(std::move(*out.mutable_next_page_token()));
             return absl::OkStatus();
           }});
}

grpc::ServerUnaryReactor* SessionApi::UpdateSession(grpc::CallbackServerContext* context,
                                                    const v1::UpdateSessionRequest* request,
                                                    v1::UpdateSessionResponse* response) {
  using Call = AuthorizedCall<store_pb::UpdateSessionRequest, store_pb::UpdateSessionResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeSessionsWrite,
       .idempotency = idempotency_,
       .method = "UpdateSession",
       .build = WithTenant<store_pb::UpdateSessionRequest>(request),
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { store_->async()->UpdateSession(c, req, resp, std::move(done)); },
       .reply =
           [response](store_pb::UpdateSessionResponse& out) {
             response->mutable_session()->Swap(out.mutable_session());
             return absl::OkStatus();
           }});
}

grpc::ServerUnaryReactor* SessionApi::CloseSession(grpc::CallbackServerContext* context,
                                                   const v1::CloseSessionRequest* request,
                                                   v1::CloseSessionResponse* response) {
  // session-svc closes it: it cancels the running turn and publishes the status change.
  using Call = AuthorizedCall<router_pb::CloseSessionRequest, v1::CloseSessionResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeSessionsWrite,
       .idempotency = idempotency_,
       .method = "CloseSession",
       .build = WithTenant<router_pb::CloseSessionRequest>(request),
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { router_->async()->CloseSession(c, req, resp, std::move(done)); },
       .reply = AsIs(response)});
}

grpc::ServerUnaryReactor* SessionApi::SendMessage(grpc::CallbackServerContext* context,
                                                  const v1::SendMessageRequest* request,
                                                  v1::SendMessageResponse* response) {
  using Call = AuthorizedCall<router_pb::SubmitMessageRequest, v1::SendMessageResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeSessionsWrite,
       .build =
           [context, request](const Principal& who, router_pb::SubmitMessageRequest* out) {
             return BuildSubmit(*context, who, *request, out);
           },
       .call = [this](
                   auto* c, auto* req, auto* resp,
                   auto done) { router_->async()->SubmitMessage(c, req, resp, std::move(done)); },
       .reply = AsIs(response)});
}

grpc::ServerUnaryReactor* SessionApi::ListMessages(grpc::CallbackServerContext* context,
                                                   const v1::ListMessagesRequest* request,
                                                   v1::ListMessagesResponse* response) {
  using Call = AuthorizedCall<store_pb::ListMessagesRequest, store_pb::ListMessagesResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeSessionsRead,
       .build = WithTenant<store_pb::ListMessagesRequest>(request),
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { store_->async()->ListMessages(c, req, resp, std::move(done)); },
       .reply =
           [response](store_pb::ListMessagesResponse& out) {
             response->mutable_messages()->Swap(out.mutable_messages());
             response->set_has_more(out.has_more());
             return absl::OkStatus();
           }});
}

grpc::ServerUnaryReactor* SessionApi::GetTurn(grpc::CallbackServerContext* context,
                                              const v1::GetTurnRequest* request,
                                              v1::GetTurnResponse* response) {
  using Call = AuthorizedCall<store_pb::GetTurnRequest, store_pb::GetTurnResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeSessionsRead,
       .build =
           [request](const Principal& who, store_pb::GetTurnRequest* out) {
             if (request->session_id().empty()) {
               return InvalidArgumentError("session_id", "is required");
             }
             if (request->turn_id().empty()) return InvalidArgumentError("turn_id", "is required");
             out->set_tenant_id(who.tenant_id);
             out->set_session_id(request->session_id());
             out->set_turn_id(request->turn_id());
             return absl::OkStatus();
           },
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { store_->async()->GetTurn(c, req, resp, std::move(done)); },
       .reply =
           [response](store_pb::GetTurnResponse& out) {
             response->mutable_turn()->Swap(out.mutable_turn());
             return absl::OkStatus();
           }});
}

grpc::ServerUnaryReactor* SessionApi::ListTurns(grpc::CallbackServerContext* context,
                                                const v1::ListTurnsRequest* request,
                                                v1::ListTurnsResponse* response) {
  using Call = AuthorizedCall<store_pb::ListTurnsRequest, store_pb::ListTurnsResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeSessionsRead,
       .build =
           [request](const Principal& who, store_pb::ListTurnsRequest* out) {
             if (request->session_id().empty()) {
               return InvalidArgumentError("session_id", "is required");
             }
             for (int i = 0; i < request->statuses_size(); ++i) {
               const int status = request->statuses(i);
               if (status == v1::TURN_STATUS_UNSPECIFIED || !v1::TurnStatus_IsValid(status)) {
                 return InvalidArgumentError(absl::StrCat("statuses[", i, "]"),
                                             absl::StrCat("is not a turn status: ", status));
               }
             }
             out->set_tenant_id(who.tenant_id);
             out->set_session_id(request->session_id());
             *out->mutable_statuses() = request->statuses();
             out->set_page_size(request->page_size());
             out->set_page_token(request->page_token());
             return absl::OkStatus();
           },
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { store_->async()->ListTurns(c, req, resp, std::move(done)); },
       .reply =
           [response](store_pb::ListTurnsResponse& out) {
             response->mutable_turns()->Swap(out.mutable_turns());
             response->set_next_page_token(std::move(*out.mutable_next_page_token()));
             return absl::OkStatus();
           }});
}

grpc::ServerUnaryReactor* SessionApi::CancelTurn(grpc::CallbackServerContext* context,
                                                 const v1::CancelTurnRequest* request,
                                                 v1::CancelTurnResponse* response) {
  using Call = AuthorizedCall<router_pb::CancelTurnRequest, v1::CancelTurnResponse>;
  return Call::Start(
      context, authenticator_, downstream_timeout_,
      {.scope = kScopeSessionsWrite,
       .idempotency = idempotency_,
       .method = "CancelTurn",
       .build = WithTenant<router_pb::CancelTurnRequest>(request),
       .call = [this](auto* c, auto* req, auto* resp,
                      auto done) { router_->async()->CancelTurn(c, req, resp, std::move(done)); },
       .reply = AsIs(response)});
}

StreamEventsReactor::OnOpen SessionApi::WatchKeyOf(grpc::CallbackServerContext* context) {
  if (revalidator_ == nullptr) return nullptr;
  return [revalidator = revalidator_, context](std::weak_ptr<Endable> stream) {
    revalidator->Watch(*context, std::move(stream));
  };
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* SessionApi::StreamEvents(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* bytes) {
  auto* stream = new StreamEventsReactor(
      hub_, telemetry::ServerCallTelemetry(telemetry_, *context, kStreamEventsMethod),
      WatchKeyOf(context));
  auto request = std::make_shared<v1::StreamEventsRequest>();
  if (absl::Status parsed = ParseRequest(*bytes, *request); !parsed.ok()) {
    stream->Reject(ToGrpcStatus(parsed));
    return stream;
  }
  authenticator_.Authenticate(*context, [stream, request](absl::StatusOr<Principal> who) {
    absl::Status allowed = who.ok() ? who->Require(kScopeSessionsRead) : who.status();
    if (!allowed.ok()) return stream->Reject(ToGrpcStatus(allowed));
    absl::StatusOr<StreamParams> params = StreamParamsFromRequest(who->tenant_id, *request);
    if (!params.ok()) return stream->Reject(ToGrpcStatus(params.status()));
    stream->Open(*std::move(params));
  });
  return stream;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* SessionApi::Subscribe(
    grpc::CallbackServerContext* context) {
  auto* stream = new SubscribeReactor(
      hub_, telemetry::ServerCallTelemetry(telemetry_, *context, kSubscribeMethod),
      WatchKeyOf(context));
  // Each subscription's session is checked in the tenant by its own start (before it
  // subscribes to anything); the key's scope is checked here, once for all of them.
  authenticator_.Authenticate(*context, [stream](absl::StatusOr<Principal> who) {
    absl::Status allowed = who.ok() ? who->Require(kScopeSessionsRead) : who.status();
    if (!allowed.ok()) return stream->Reject(ToGrpcStatus(allowed));
    stream->Open(who->tenant_id);
  });
  return stream;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* SessionApi::SendMessageAndStream(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* bytes) {
  auto* stream = new StreamEventsReactor(
      hub_, telemetry::ServerCallTelemetry(telemetry_, *context, kSendMessageAndStreamMethod),
      WatchKeyOf(context));
  auto request = std::make_shared<v1::SendMessageRequest>();
  if (absl::Status parsed = ParseRequest(*bytes, *request); !parsed.ok()) {
    stream->Reject(ToGrpcStatus(parsed));
    return stream;
  }
  // `context` lives until the call is done, which is after `stream` has been opened or
  // rejected below.
  authenticator_.Authenticate(
      *context, [this, context, stream, request](absl::StatusOr<Principal> who) {
        absl::Status allowed = who.ok() ? who->Require(kScopeSessionsWrite) : who.status();
        if (allowed.ok()) allowed = who->Require(kScopeSessionsRead);
        if (!allowed.ok()) return stream->Reject(ToGrpcStatus(allowed));
        struct Submit {
          grpc::ClientContext context;
          router_pb::SubmitMessageRequest request;
          v1::SendMessageResponse response;
        };
        auto submit = std::make_shared<Submit>();
        absl::Status built = BuildSubmit(*context, *who, *request, &submit->request);
        if (!built.ok()) return stream->Reject(ToGrpcStatus(built));
        telemetry::PrepareDownstream(*context, submit->context, downstream_timeout_);
        router_->async()->SubmitMessage(
            &submit->context, &submit->request, &submit->response,
            [submit, stream, tenant_id = who->tenant_id](grpc::Status status) {
              if (!status.ok()) return stream->Reject(status);
              StreamParams params;
              params.tenant_id = tenant_id;
              params.session_id = submit->request.request().session_id();
              params.start = StreamParams::Start::kTurn;
              params.turn_id = submit->response.turn().id();
              params.until_turn_end = true;
              v1::StreamEventsResponse sent;
              *sent.mutable_sent() = std::move(submit->response);
              stream->OpenAfter(std::move(sent), std::move(params));
            });
      });
  return stream;
}

}  // namespace parley::gateway
