// The public API through the real parley-gateway binary, over a real parley-store,
// parley-session, Postgres and Redis: every unary rpc of SessionService and
// ApiKeyService, the operator's AdminService, keys resolved through store-svc, scopes,
// tenancy, revocation and disabled tenants.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "parley/admin/v1/admin.grpc.pb.h"
#include "parley/v1/parley.grpc.pb.h"
#include "tests/session/session_fixture.h"

namespace parley::session::testing {
namespace {

using ::testing::IsEmpty;
using ::testing::SizeIs;

// A parley.v1 client holding one API key.
class Client {
 public:
  Client(const std::string& target, std::string key)
      : channel_(grpc::CreateChannel(target, grpc::InsecureChannelCredentials())),
        sessions_(v1::SessionService::NewStub(channel_)),
        keys_(v1::ApiKeyService::NewStub(channel_)),
        admin_(admin::v1::AdminService::NewStub(channel_)),
        key_(std::move(key)) {}

  // Calls `method` of `stub` with this client's key and a 30 s deadline.
  template <typename Stub, typename Request, typename Response>
  grpc::Status Call(grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*),
                    Stub& stub, const Request& request, Response* response) {
    grpc::ClientContext context;
    Prepare(context);
    return (stub.*method)(&context, request, response);
  }
  template <typename Request, typename Response>
  grpc::Status Sessions(grpc::Status (v1::SessionService::Stub::*method)(grpc::ClientContext*,
                                                                         const Request&, Response*),
                        const Request& request, Response* response) {
    return Call(method, *sessions_, request, response);
  }
  template <typename Request, typename Response>
  grpc::Status Keys(grpc::Status (v1::ApiKeyService::Stub::*method)(grpc::ClientContext*,
                                                                    const Request&, Response*),
                    const Request& request, Response* response) {
    return Call(method, *keys_, request, response);
  }
  template <typename Request, typename Response>
  grpc::Status Admin(grpc::Status (admin::v1::AdminService::Stub::*method)(grpc::ClientContext*,
                                                                           const Request&,
                                                                           Response*),
                     const Request& request, Response* response) {
    return Call(method, *admin_, request, response);
  }

  // Opens StreamEvents and returns how it ended (reading until then).
  grpc::Status StreamEventsStatus(const std::string& session) {
    grpc::ClientContext context;
    Prepare(context);
    v1::StreamEventsRequest request;
    request.set_session_id(session);
    request.set_until_turn_end(true);
    auto reader = sessions_->StreamEvents(&context, request);
    v1::StreamEventsResponse response;
    while (reader->Read(&response)) {
    }
    return reader->Finish();
  }

  // An open StreamEvents call of `session` from its first event; `context` must outlive
  // it.
  std::unique_ptr<grpc::ClientReader<v1::StreamEventsResponse>> OpenStream(
      grpc::ClientContext& context, const std::string& session) {
    Prepare(context);
    v1::StreamEventsRequest request;
    request.set_session_id(session);
    return sessions_->StreamEvents(&context, request);
  }

  // Subscribes to `session` (until its turn ends) on a Subscribe stream and returns how
  // the subscription ended, or how the stream did if it ended first.
  grpc::Status SubscribeStatus(const std::string& session) {
    grpc::ClientContext context;
    Prepare(context);
    auto stream = sessions_->Subscribe(&context);
    v1::SubscribeRequest add;
    add.mutable_add()->set_subscription_id("only");
    add.mutable_add()->mutable_request()->set_session_id(session);
    add.mutable_add()->mutable_request()->set_until_turn_end(true);
    stream->Write(add);
    v1::SubscribeResponse response;
    std::optional<grpc::Status> ended;
    while (!ended && stream->Read(&response)) {
      for (const v1::Delivery& delivery : response.deliveries()) {
        if (delivery.subscription_id() != "only" || !delivery.has_ended()) continue;
        const v1::RpcStatus& status = delivery.ended();
        ended = grpc::Status(static_cast<grpc::StatusCode>(status.code()), status.message(),
                             status.SerializeAsString());
      }
    }
    if (ended) context.TryCancel();
    const grpc::Status finished = stream->Finish();
    return ended ? *ended : finished;
  }

  // Calls SendMessageAndStream and returns how it ended (reading until then).
  grpc::Status SendMessageAndStreamStatus(const v1::SendMessageRequest& request) {
    grpc::ClientContext context;
    Prepare(context);
    auto reader = sessions_->SendMessageAndStream(&context, request);
    v1::StreamEventsResponse response;
    while (reader->Read(&response)) {
    }
    return reader->Finish();
  }

 private:
  void Prepare(grpc::ClientContext& context) {
    if (!key_.empty()) context.AddMetadata("authorization", "Bearer " + key_);
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::SessionService::Stub> sessions_;
  std::unique_ptr<v1::ApiKeyService::Stub> keys_;
  std::unique_ptr<admin::v1::AdminService::Stub> admin_;
  std::string key_;
};

// The ids of one tenant's resources that the calls below name.
struct OwnedIds {
  std::string session;
  std::string turn;
  std::string api_key;
};

class GatewayApi : public SessionFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 1, .gateway = true}));
    CreateSession(kTenantA);  // Creates both tenants in the store.
    CreateSession(kTenantB);
  }

  Client As(const std::string& key) { return Client(gateway()->grpc_target(), key); }

  // Polls GetTurn through the gateway until the turn is terminal.
  absl::StatusOr<v1::Turn> WaitForTurnThroughGateway(Client& client, const std::string& session,
                                                     const std::string& turn_id) {
    v1::Turn turn;
    const bool ended = parley::testing::WaitFor(absl::Seconds(30), [&] {
      v1::GetTurnRequest request;
      request.set_session_id(session);
      request.set_turn_id(turn_id);
      v1::GetTurnResponse response;
      if (!client.Sessions(&v1::SessionService::Stub::GetTurn, request, &response).ok()) {
        return false;
      }
      turn = response.turn();
      return turn.status() == v1::TURN_STATUS_SUCCEEDED ||
             turn.status() == v1::TURN_STATUS_FAILED || turn.status() == v1::TURN_STATUS_CANCELLED;
    });
    if (!ended) return absl::DeadlineExceededError(absl::StrCat("turn ", turn_id, " never ended"));
    return turn;
  }

  // Sends a message to tenant A's `session` with a key of its own and waits for the
  // turn to end, so the session has a history.
  void SendAndWait(const std::string& session) {
    Client writer = As(StoredKey(kTenantA, {"*"}));
    v1::SendMessageRequest send;
    send.set_session_id(session);
    send.add_content()->set_text("history");
    v1::SendMessageResponse sent;
    grpc::Status status = writer.Sessions(&v1::SessionService::Stub::SendMessage, send, &sent);
    ASSERT_TRUE(status.ok()) << Describe(status);
    ASSERT_TRUE(WaitForTurnThroughGateway(writer, session, sent.turn().id()).ok());
  }

  // Tenant A's session with a finished turn, and one of A's keys (listed by `owner`, a
  // key of A): what the calls of CallsTakingAnId name.
  OwnedIds OwnResources(Client& owner) {
    OwnedIds ids;
    ids.session = CreateSession(kTenantA);
    v1::SendMessageRequest send;
    send.set_session_id(ids.session);
    send.add_content()->set_text("mine");
    v1::SendMessageResponse sent;
    EXPECT_TRUE(owner.Sessions(&v1::SessionService::Stub::SendMessage, send, &sent).ok());
    ids.turn = sent.turn().id();
    EXPECT_TRUE(WaitForTurnThroughGateway(owner, ids.session, ids.turn).ok());
    v1::ListApiKeysResponse keys;
    EXPECT_TRUE(
        owner.Keys(&v1::ApiKeyService::Stub::ListApiKeys, v1::ListApiKeysRequest(), &keys).ok());
    if (keys.api_keys_size() > 0) ids.api_key = keys.api_keys(0).id();
    EXPECT_FALSE(ids.api_key.empty());
    return ids;
  }

  // What CallsTakingAnId's calls would have changed is as it was: the session active and
  // titled as before, its messages without the intruder's, the key not revoked.
  void ExpectUntouched(Client& owner, const OwnedIds& ids) {
    v1::GetSessionRequest get;
    get.set_session_id(ids.session);
    v1::GetSessionResponse got;
    ASSERT_TRUE(owner.Sessions(&v1::SessionService::Stub::GetSession, get, &got).ok());
    EXPECT_EQ(got.session().status(), v1::SESSION_STATUS_ACTIVE);
    EXPECT_NE(got.session().title(), "taken over");
    auto messages = ListMessages(kTenantA, ids.session);
    ASSERT_TRUE(messages.ok());
    for (const v1::Message& message : *messages) {
      for (const v1::Part& part : message.parts()) EXPECT_NE(part.text(), "intruder");
    }
    v1::ListApiKeysRequest list_keys;
    list_keys.set_include_revoked(true);
    v1::ListApiKeysResponse keys;
    ASSERT_TRUE(owner.Keys(&v1::ApiKeyService::Stub::ListApiKeys, list_keys, &keys).ok());
    bool listed = false;
    for (const v1::ApiKey& key : keys.api_keys()) {
      if (key.id() != ids.api_key) continue;
      listed = true;
      EXPECT_FALSE(key.has_revoke_time());
    }
    EXPECT_TRUE(listed) << "key " << ids.api_key << " is gone";
  }

  // The ids of every session `client`'s tenant can list.
  std::vector<std::string> ListedSessions(Client& client) {
    v1::ListSessionsRequest request;
    request.set_page_size(1000);
    v1::ListSessionsResponse response;
    grpc::Status status =
        client.Sessions(&v1::SessionService::Stub::ListSessions, request, &response);
    EXPECT_TRUE(status.ok()) << Describe(status);
    std::vector<std::string> ids;
    for (const v1::Session& session : response.sessions()) ids.push_back(session.id());
    return ids;
  }
};

// A refusal by the rate limit `limit` ("tenant" or "key") with a retry delay of at most
// `max_delay_ms`.
void ExpectRateLimited(const grpc::Status& status, const std::string& limit, int64_t max_delay_ms) {
  ASSERT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(status);
  auto info = GetErrorInfo(FromGrpcStatus(status));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->reason(), "RATE_LIMITED");
  EXPECT_EQ(info->metadata().at("limit"), limit);
  auto retry = GetRetryInfo(FromGrpcStatus(status));
  ASSERT_TRUE(retry.has_value()) << Describe(status);
  EXPECT_GT(retry->retry_delay_ms(), 0);
  EXPECT_LE(retry->retry_delay_ms(), max_delay_ms);
}

void ExpectMissingScope(const grpc::Status& status, const std::string& scope) {
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Describe(status);
  auto info = GetErrorInfo(FromGrpcStatus(status));
  ASSERT_TRUE(info.has_value()) << Describe(status);
  EXPECT_EQ(info->reason(), "MISSING_SCOPE");
  EXPECT_EQ(info->metadata().at("scope"), scope);
}

TEST_F(GatewayApi, ASessionsWholeLifeThroughThePublicApi) {
  Client client = As(StoredKey(kTenantA, {"sessions:read", "sessions:write"}));

  v1::CreateSessionRequest create;
  create.set_external_id("order-42");
  create.set_title("first");
  v1::CreateSessionResponse created;
  ASSERT_TRUE(client.Sessions(&v1::SessionService::Stub::CreateSession, create, &created).ok());
  EXPECT_TRUE(created.created());
  const std::string session = created.session().id();
  EXPECT_EQ(created.session().tenant_id(), kTenantA);
  // The same external id again: the same session, not a new one.
  v1::CreateSessionResponse again;
  ASSERT_TRUE(client.Sessions(&v1::SessionService::Stub::CreateSession, create, &again).ok());
  EXPECT_FALSE(again.created());
  EXPECT_EQ(again.session().id(), session);

  v1::GetSessionRequest get;
  get.set_session_id(session);
  v1::GetSessionResponse got;
  ASSERT_TRUE(client.Sessions(&v1::SessionService::Stub::GetSession, get, &got).ok());
  EXPECT_EQ(got.session().title(), "first");
  EXPECT_THAT(ListedSessions(client), ::testing::Contains(session));

  v1::UpdateSessionRequest update;
  update.set_session_id(session);
  update.mutable_session()->set_title("renamed");
  update.mutable_update_mask()->add_paths("title");
  v1::UpdateSessionResponse updated;
  grpc::Status status = client.Sessions(&v1::SessionService::Stub::UpdateSession, update, &updated);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(updated.session().title(), "renamed");

  v1::SendMessageRequest send;
  send.set_session_id(session);
  send.add_content()->set_text("hello there");
  v1::SendMessageResponse sent;
  status = client.Sessions(&v1::SessionService::Stub::SendMessage, send, &sent);
  ASSERT_TRUE(status.ok()) << Describe(status);
  auto turn = WaitForTurnThroughGateway(client, session, sent.turn().id());
  ASSERT_TRUE(turn.ok()) << turn.status();
  EXPECT_EQ(turn->status(), v1::TURN_STATUS_SUCCEEDED);
  v1::ListTurnsRequest list_turns;
  list_turns.set_session_id(session);
  list_turns.add_statuses(v1::TURN_STATUS_SUCCEEDED);
  v1::ListTurnsResponse turns;
  status = client.Sessions(&v1::SessionService::Stub::ListTurns, list_turns, &turns);
  ASSERT_TRUE(status.ok()) << Describe(status);
  ASSERT_EQ(turns.turns_size(), 1);
  EXPECT_EQ(turns.turns(0).id(), sent.turn().id());
  list_turns.set_statuses(0, v1::TURN_STATUS_QUEUED);
  ASSERT_TRUE(client.Sessions(&v1::SessionService::Stub::ListTurns, list_turns, &turns).ok());
  EXPECT_THAT(turns.turns(), IsEmpty());
  list_turns.set_statuses(0, static_cast<v1::TurnStatus>(77));
  status = client.Sessions(&v1::SessionService::Stub::ListTurns, list_turns, &turns);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);

  v1::ListMessagesRequest list;
  list.set_session_id(session);
  v1::ListMessagesResponse messages;
  ASSERT_TRUE(client.Sessions(&v1::SessionService::Stub::ListMessages, list, &messages).ok());
  ASSERT_GE(messages.messages_size(), 2);
  EXPECT_EQ(messages.messages(0).id(), sent.message().id());
  EXPECT_EQ(messages.messages(0).role(), v1::ROLE_USER);
  EXPECT_EQ(messages.messages(messages.messages_size() - 1).role(), v1::ROLE_ASSISTANT);

  v1::CloseSessionRequest close;
  close.set_session_id(session);
  v1::CloseSessionResponse closed;
  ASSERT_TRUE(client.Sessions(&v1::SessionService::Stub::CloseSession, close, &closed).ok());
  EXPECT_EQ(closed.session().status(), v1::SESSION_STATUS_CLOSED);
  ASSERT_TRUE(client.Sessions(&v1::SessionService::Stub::GetSession, get, &got).ok());
  EXPECT_EQ(got.session().status(), v1::SESSION_STATUS_CLOSED);
  // A closed session takes no more messages.
  send.set_idempotency_key("after-close");
  EXPECT_EQ(client.Sessions(&v1::SessionService::Stub::SendMessage, send, &sent).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

// One public rpc that takes an id, the scope it needs, and a call of it by `caller` on
// `ids` that would change something if it were allowed.
struct IdCall {
  const char* rpc;
  const char* scope;
  std::function<grpc::Status(Client& caller)> call;
};

// Every unary and streaming rpc of SessionService and ApiKeyService that takes an id
// (the SandboxService's have their own table in gateway_sandbox_test.cc).
std::vector<IdCall> CallsTakingAnId(const OwnedIds& ids) {
  return {
      {"GetSession", "sessions:read",
       [ids](Client& c) {
         v1::GetSessionRequest r;
         r.set_session_id(ids.session);
         v1::GetSessionResponse out;
         return c.Sessions(&v1::SessionService::Stub::GetSession, r, &out);
       }},
      {"UpdateSession", "sessions:write",
       [ids](Client& c) {
         v1::UpdateSessionRequest r;
         r.set_session_id(ids.session);
         r.mutable_session()->set_title("taken over");
         r.mutable_update_mask()->add_paths("title");
         v1::UpdateSessionResponse out;
         return c.Sessions(&v1::SessionService::Stub::UpdateSession, r, &out);
       }},
      {"CloseSession", "sessions:write",
       [ids](Client& c) {
         v1::CloseSessionRequest r;
         r.set_session_id(ids.session);
         v1::CloseSessionResponse out;
         return c.Sessions(&v1::SessionService::Stub::CloseSession, r, &out);
       }},
      {"SendMessage", "sessions:write",
       [ids](Client& c) {
         v1::SendMessageRequest r;
         r.set_session_id(ids.session);
         r.add_content()->set_text("intruder");
         r.set_idempotency_key("intruder");
         v1::SendMessageResponse out;
         return c.Sessions(&v1::SessionService::Stub::SendMessage, r, &out);
       }},
      {"SendMessageAndStream", "sessions:write",
       [ids](Client& c) {
         v1::SendMessageRequest r;
         r.set_session_id(ids.session);
         r.add_content()->set_text("intruder");
         return c.SendMessageAndStreamStatus(r);
       }},
      {"ListMessages", "sessions:read",
       [ids](Client& c) {
         v1::ListMessagesRequest r;
         r.set_session_id(ids.session);
         v1::ListMessagesResponse out;
         return c.Sessions(&v1::SessionService::Stub::ListMessages, r, &out);
       }},
      {"GetTurn", "sessions:read",
       [ids](Client& c) {
         v1::GetTurnRequest r;
         r.set_session_id(ids.session);
         r.set_turn_id(ids.turn);
         v1::GetTurnResponse out;
         return c.Sessions(&v1::SessionService::Stub::GetTurn, r, &out);
       }},
      {"ListTurns", "sessions:read",
       [ids](Client& c) {
         v1::ListTurnsRequest r;
         r.set_session_id(ids.session);
         v1::ListTurnsResponse out;
         return c.Sessions(&v1::SessionService::Stub::ListTurns, r, &out);
       }},
      {"CancelTurn", "sessions:write",
       [ids](Client& c) {
         v1::CancelTurnRequest r;
         r.set_session_id(ids.session);
         r.set_turn_id(ids.turn);
         v1::CancelTurnResponse out;
         return c.Sessions(&v1::SessionService::Stub::CancelTurn, r, &out);
       }},
      {"StreamEvents", "sessions:read",
       [ids](Client& c) { return c.StreamEventsStatus(ids.session); }},
      {"Subscribe", "sessions:read", [ids](Client& c) { return c.SubscribeStatus(ids.session); }},
      {"RevokeApiKey", "api_keys:admin",
       [ids](Client& c) {
         v1::RevokeApiKeyRequest r;
         r.set_api_key_id(ids.api_key);
         v1::RevokeApiKeyResponse out;
         return c.Keys(&v1::ApiKeyService::Stub::RevokeApiKey, r, &out);
       }},
  };
}

TEST_F(GatewayApi, AnotherTenantsIdsAreNotFoundAndItsListsShowNothingOfTheFirst) {
  Client owner = As(StoredKey(kTenantA, {"*"}));
  const OwnedIds ids = OwnResources(owner);
  Client other = As(StoredKey(kTenantB, {"*"}));
  for (const IdCall& c : CallsTakingAnId(ids)) {
    grpc::Status status = c.call(other);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND)
        << c.rpc << ": " << Describe(status);
  }

  // Lists as B show nothing of A.
  EXPECT_THAT(ListedSessions(other), ::testing::Not(::testing::Contains(ids.session)));
  v1::ListApiKeysResponse other_keys;
  ASSERT_TRUE(
      other.Keys(&v1::ApiKeyService::Stub::ListApiKeys, v1::ListApiKeysRequest(), &other_keys)
          .ok());
  for (const v1::ApiKey& key : other_keys.api_keys()) EXPECT_EQ(key.tenant_id(), kTenantB);

  // And none of B's calls changed anything of A's.
  ExpectUntouched(owner, ids);
}

TEST_F(GatewayApi, EveryCallTakingAnIdIsDeniedToAKeyLackingItsScopeAndChangesNothing) {
  Client owner = As(StoredKey(kTenantA, {"*"}));
  const OwnedIds ids = OwnResources(owner);
  auto messages_before = ListMessages(kTenantA, ids.session);
  ASSERT_TRUE(messages_before.ok());

  const std::vector<std::string> tenant_scopes = {"sessions:read", "sessions:write", "sandbox:exec",
                                                  "sandbox:files", "api_keys:admin"};
  for (const IdCall& c : CallsTakingAnId(ids)) {
    SCOPED_TRACE(c.rpc);
    // The tenant's own key with every scope but the one this call needs.
    std::vector<std::string> others;
    std::copy_if(tenant_scopes.begin(), tenant_scopes.end(), std::back_inserter(others),
                 [&](const std::string& scope) { return scope != c.scope; });
    Client lacking = As(StoredKey(kTenantA, others));
    ExpectMissingScope(c.call(lacking), c.scope);
  }

  ExpectUntouched(owner, ids);
  auto messages = ListMessages(kTenantA, ids.session);
  ASSERT_TRUE(messages.ok());
  EXPECT_EQ(messages->size(), messages_before->size());
}

TEST_F(GatewayApi, AKeyWithoutTheScopeIsDeniedNamingItAndNothingIsWritten) {
  const std::string session = CreateSession(kTenantA);
  Client reader = As(StoredKey(kTenantA, {"sessions:read"}));
  Client sandbox_only = As(StoredKey(kTenantA, {"sandbox:exec"}));
  const std::vector<std::string> sessions_before = ListedSessions(reader);

  v1::CreateSessionRequest create;
  create.set_title("not allowed");
  v1::CreateSessionResponse created;
  ExpectMissingScope(reader.Sessions(&v1::SessionService::Stub::CreateSession, create, &created),
                     "sessions:write");
  v1::SendMessageRequest send;
  send.set_session_id(session);
  send.add_content()->set_text("not allowed");
  v1::SendMessageResponse sent;
  ExpectMissingScope(reader.Sessions(&v1::SessionService::Stub::SendMessage, send, &sent),
                     "sessions:write");
  v1::CloseSessionRequest close;
  close.set_session_id(session);
  v1::CloseSessionResponse closed;
  ExpectMissingScope(reader.Sessions(&v1::SessionService::Stub::CloseSession, close, &closed),
                     "sessions:write");
  v1::CreateApiKeyRequest create_key;
  create_key.set_name("more");
  create_key.add_scopes("sessions:read");
  v1::CreateApiKeyResponse key;
  ExpectMissingScope(reader.Keys(&v1::ApiKeyService::Stub::CreateApiKey, create_key, &key),
                     "api_keys:admin");
  ExpectMissingScope(sandbox_only.StreamEventsStatus(session), "sessions:read");
  v1::GetSessionRequest get;
  get.set_session_id(session);
  v1::GetSessionResponse got;
  ExpectMissingScope(sandbox_only.Sessions(&v1::SessionService::Stub::GetSession, get, &got),
                     "sessions:read");

  // The read key reads; nothing above was written.
  ASSERT_TRUE(reader.Sessions(&v1::SessionService::Stub::GetSession, get, &got).ok());
  EXPECT_EQ(got.session().status(), v1::SESSION_STATUS_ACTIVE);
  EXPECT_EQ(ListedSessions(reader), sessions_before);
  auto messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok());
  EXPECT_THAT(*messages, IsEmpty());
}

TEST_F(GatewayApi, MissingUnknownAndMalformedKeysAreUnauthenticatedWithoutEchoingThem) {
  const std::string session = CreateSession(kTenantA);
  v1::GetSessionRequest get;
  get.set_session_id(session);
  v1::GetSessionResponse got;
  const std::string real = StoredKey(kTenantA, {"*"});
  // A well-formed secret that was never issued, and the real one with a changed letter.
  std::string forged = real;
  forged.back() = forged.back() == 'a' ? 'b' : 'a';
  for (const std::string& key : {std::string(), std::string("pk_nope"), forged}) {
    Client client = As(key);
    grpc::Status status = client.Sessions(&v1::SessionService::Stub::GetSession, get, &got);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << "key \"" << key << "\"";
    if (!key.empty()) {
      EXPECT_EQ(status.error_message().find(key), std::string::npos);
    }
    EXPECT_EQ(client.StreamEventsStatus(session).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  Client client = As(real);
  EXPECT_TRUE(client.Sessions(&v1::SessionService::Stub::GetSession, get, &got).ok());
  EXPECT_EQ(gateway()->Output().find(real), std::string::npos) << "a secret was logged";
}

TEST_F(GatewayApi, AKeyMadeThroughTheApiWorksAtOnceAndStopsWithinFiveSecondsOfItsRevocation) {
  const std::string session = CreateSession(kTenantA);
  Client admin = As(kGatewayApiKey);
  v1::CreateApiKeyRequest create;
  create.set_name("short-lived");
  create.add_scopes("sessions:read");
  v1::CreateApiKeyResponse created;
  grpc::Status status = admin.Keys(&v1::ApiKeyService::Stub::CreateApiKey, create, &created);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(created.api_key().tenant_id(), kTenantA);
  EXPECT_THAT(created.api_key().scopes(), ::testing::ElementsAre("sessions:read"));

  Client client = As(created.secret());
  v1::GetSessionRequest get;
  get.set_session_id(session);
  v1::GetSessionResponse got;
  // The refusal of a secret is cached too, yet a new key works at once: its secret was
  // never presented before.
  status = client.Sessions(&v1::SessionService::Stub::GetSession, get, &got);
  ASSERT_TRUE(status.ok()) << Describe(status);
  // A stream the key opened: it has read the session's history and waits for more.
  SendAndWait(session);
  grpc::ClientContext stream_context;
  auto stream = client.OpenStream(stream_context, session);
  v1::StreamEventsResponse item;
  ASSERT_TRUE(stream->Read(&item));

  v1::RevokeApiKeyRequest revoke;
  revoke.set_api_key_id(created.api_key().id());
  v1::RevokeApiKeyResponse revoked;
  ASSERT_TRUE(admin.Keys(&v1::ApiKeyService::Stub::RevokeApiKey, revoke, &revoked).ok());
  EXPECT_TRUE(revoked.api_key().has_revoke_time());
  const absl::Time revoke_time = absl::Now();
  const bool refused = parley::testing::WaitFor(absl::Seconds(5), [&] {
    return client.Sessions(&v1::SessionService::Stub::GetSession, get, &got).error_code() ==
           grpc::StatusCode::UNAUTHENTICATED;
  });
  EXPECT_TRUE(refused) << "the revoked key still worked " << absl::Now() - revoke_time
                       << " after its revocation";
  // The open stream ends too, refused the same way, rather than outliving its key.
  while (stream->Read(&item)) {
  }
  status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(status);
  // Revoking again returns it unchanged; it stays refused.
  ASSERT_TRUE(admin.Keys(&v1::ApiKeyService::Stub::RevokeApiKey, revoke, &revoked).ok());
  EXPECT_EQ(client.Sessions(&v1::SessionService::Stub::GetSession, get, &got).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(GatewayApi, AKeyCannotHandOutAScopeItDoesNotHold) {
  Client limited = As(StoredKey(kTenantA, {"api_keys:admin", "sessions:read"}));
  auto create = [&](const std::vector<std::string>& scopes, v1::CreateApiKeyResponse* out) {
    v1::CreateApiKeyRequest request;
    request.set_name("child");
    for (const std::string& scope : scopes) request.add_scopes(scope);
    return limited.Keys(&v1::ApiKeyService::Stub::CreateApiKey, request, out);
  };
  v1::ListApiKeysResponse before;
  ASSERT_TRUE(
      limited.Keys(&v1::ApiKeyService::Stub::ListApiKeys, v1::ListApiKeysRequest(), &before).ok());

  v1::CreateApiKeyResponse created;
  for (const std::vector<std::string>& scopes :
       std::vector<std::vector<std::string>>{{"sessions:write"}, {"sessions:read", "*"}}) {
    grpc::Status status = create(scopes, &created);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Describe(status);
    auto info = GetErrorInfo(FromGrpcStatus(status));
    ASSERT_TRUE(info.has_value());
    EXPECT_EQ(info->reason(), "SCOPE_ESCALATION");
  }
  // Bad input is INVALID_ARGUMENT naming the field.
  grpc::Status bad = create({"sessions:reed"}, &created);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(bad);
  auto violations = GetBadRequest(FromGrpcStatus(bad));
  ASSERT_TRUE(violations.has_value());
  EXPECT_EQ(violations->field_violations(0).field(), "scopes[0]");
  v1::CreateApiKeyRequest unnamed;
  unnamed.add_scopes("sessions:read");
  bad = limited.Keys(&v1::ApiKeyService::Stub::CreateApiKey, unnamed, &created);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(bad);

  v1::ListApiKeysResponse after;
  ASSERT_TRUE(
      limited.Keys(&v1::ApiKeyService::Stub::ListApiKeys, v1::ListApiKeysRequest(), &after).ok());
  EXPECT_EQ(after.api_keys_size(), before.api_keys_size()) << "a refused create wrote a key";
  // What it holds, it can give.
  grpc::Status status = create({"sessions:read"}, &created);
  EXPECT_TRUE(status.ok()) << Describe(status);
}

// The operator onboards a tenant without touching the database: creates it, gives it a
// key, and disabling the tenant stops that key on the gateway within 5 s (enabling it
// again brings it back).
TEST_F(GatewayApi, TheOperatorOnboardsATenantAndDisablingItStopsItsKeys) {
  Client operator_client = As(kGatewayApiKey);
  admin::v1::CreateTenantRequest create;
  create.set_tenant_id("acme");
  create.set_name("Acme Corp");
  admin::v1::CreateTenantResponse created;
  grpc::Status status =
      operator_client.Admin(&admin::v1::AdminService::Stub::CreateTenant, create, &created);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_TRUE(created.created());
  EXPECT_EQ(created.tenant().name(), "Acme Corp");
  ASSERT_TRUE(
      operator_client.Admin(&admin::v1::AdminService::Stub::CreateTenant, create, &created).ok());
  EXPECT_FALSE(created.created()) << "creating a tenant again is idempotent";

  admin::v1::CreateApiKeyRequest make_key;
  make_key.set_tenant_id("acme");
  make_key.set_name("acme backend");
  make_key.add_scopes("*");
  admin::v1::CreateApiKeyResponse key;
  status = operator_client.Admin(&admin::v1::AdminService::Stub::CreateApiKey, make_key, &key);
  ASSERT_TRUE(status.ok()) << Describe(status);
  EXPECT_EQ(key.api_key().tenant_id(), "acme");
  Client acme = As(key.secret());
  auto create_session = [&] {
    v1::CreateSessionResponse out;
    return acme.Sessions(&v1::SessionService::Stub::CreateSession, v1::CreateSessionRequest(),
                         &out);
  };
  v1::CreateSessionResponse session;
  status =
      acme.Sessions(&v1::SessionService::Stub::CreateSession, v1::CreateSessionRequest(), &session);
  ASSERT_TRUE(status.ok()) << Describe(status);
  v1::SendMessageRequest send;
  send.set_session_id(session.session().id());
  send.add_content()->set_text("hello");
  v1::SendMessageResponse sent;
  ASSERT_TRUE(acme.Sessions(&v1::SessionService::Stub::SendMessage, send, &sent).ok());
  grpc::ClientContext stream_context;
  auto stream = acme.OpenStream(stream_context, session.session().id());
  v1::StreamEventsResponse item;
  ASSERT_TRUE(stream->Read(&item)) << "the stream opened";

  admin::v1::ListTenantsResponse listed;
  ASSERT_TRUE(operator_client
                  .Admin(&admin::v1::AdminService::Stub::ListTenants,
                         admin::v1::ListTenantsRequest(), &listed)
                  .ok());
  std::vector<std::string> ids;
  for (const admin::v1::Tenant& t : listed.tenants()) ids.push_back(t.id());
  EXPECT_THAT(ids, ::testing::Contains("acme"));
  admin::v1::ListApiKeysRequest list_keys;
  list_keys.set_tenant_id("acme");
  admin::v1::ListApiKeysResponse keys;
  ASSERT_TRUE(
      operator_client.Admin(&admin::v1::AdminService::Stub::ListApiKeys, list_keys, &keys).ok());
  ASSERT_EQ(keys.api_keys_size(), 1);
  EXPECT_EQ(keys.api_keys(0).id(), key.api_key().id());

  admin::v1::DisableTenantRequest disable;
  disable.set_tenant_id("acme");
  admin::v1::DisableTenantResponse disabled;
  ASSERT_TRUE(
      operator_client.Admin(&admin::v1::AdminService::Stub::DisableTenant, disable, &disabled)
          .ok());
  EXPECT_TRUE(disabled.tenant().has_disable_time());
  const absl::Time disabled_at = absl::Now();
  EXPECT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] {
    return create_session().error_code() == grpc::StatusCode::UNAUTHENTICATED;
  }));
  EXPECT_LE(absl::Now() - disabled_at, absl::Seconds(5)) << "the key outlived the cache's TTL";
  // Its open stream ends as well.
  while (stream->Read(&item)) {
  }
  status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(status);
  // Disabled tenants are left out of the listing unless asked for.
  ASSERT_TRUE(operator_client
                  .Admin(&admin::v1::AdminService::Stub::ListTenants,
                         admin::v1::ListTenantsRequest(), &listed)
                  .ok());
  for (const admin::v1::Tenant& t : listed.tenants()) EXPECT_NE(t.id(), "acme");

  admin::v1::EnableTenantRequest enable;
  enable.set_tenant_id("acme");
  admin::v1::EnableTenantResponse enabled;
  ASSERT_TRUE(
      operator_client.Admin(&admin::v1::AdminService::Stub::EnableTenant, enable, &enabled).ok());
  EXPECT_FALSE(enabled.tenant().has_disable_time());
  EXPECT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] { return create_session().ok(); }));

  admin::v1::RevokeApiKeyRequest revoke;
  revoke.set_tenant_id("acme");
  revoke.set_api_key_id(key.api_key().id());
  admin::v1::RevokeApiKeyResponse revoked;
  ASSERT_TRUE(
      operator_client.Admin(&admin::v1::AdminService::Stub::RevokeApiKey, revoke, &revoked).ok());
  EXPECT_TRUE(revoked.api_key().has_revoke_time());
  EXPECT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] {
    return create_session().error_code() == grpc::StatusCode::UNAUTHENTICATED;
  }));
}

// "admin" is held only by name: a tenant's "*" key is not an operator, cannot make itself
// one through ApiKeyService, and an operator key made by the admin API works.
TEST_F(GatewayApi, OnlyKeysHoldingAdminByNameReachTheOperatorApi) {
  Client tenant_root = As(StoredKey(kTenantB, {"*"}));
  admin::v1::ListTenantsResponse listed;
  ExpectMissingScope(tenant_root.Admin(&admin::v1::AdminService::Stub::ListTenants,
                                       admin::v1::ListTenantsRequest(), &listed),
                     "admin");
  admin::v1::CreateTenantRequest grab;
  grab.set_tenant_id("grabbed");
  admin::v1::CreateTenantResponse grabbed;
  ExpectMissingScope(
      tenant_root.Admin(&admin::v1::AdminService::Stub::CreateTenant, grab, &grabbed), "admin");

  v1::CreateApiKeyRequest escalate;
  escalate.set_name("sneaky");
  escalate.add_scopes("admin");
  v1::CreateApiKeyResponse escalated;
  grpc::Status status =
      tenant_root.Keys(&v1::ApiKeyService::Stub::CreateApiKey, escalate, &escalated);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Describe(status);
  auto info = GetErrorInfo(FromGrpcStatus(status));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->reason(), "SCOPE_ESCALATION");

  Client operator_client = As(kGatewayApiKey);
  admin::v1::GetTenantRequest get;
  get.set_tenant_id("grabbed");
  admin::v1::GetTenantResponse got;
  EXPECT_EQ(
      operator_client.Admin(&admin::v1::AdminService::Stub::GetTenant, get, &got).error_code(),
      grpc::StatusCode::NOT_FOUND)
      << "a refused CreateTenant wrote a tenant";

  admin::v1::CreateApiKeyRequest make_operator;
  make_operator.set_tenant_id(kTenantB);
  make_operator.set_name("second operator");
  make_operator.add_scopes("admin");
  admin::v1::CreateApiKeyResponse second;
  status =
      operator_client.Admin(&admin::v1::AdminService::Stub::CreateApiKey, make_operator, &second);
  ASSERT_TRUE(status.ok()) << Describe(status);
  Client second_operator = As(second.secret());
  status = second_operator.Admin(&admin::v1::AdminService::Stub::ListTenants,
                                 admin::v1::ListTenantsRequest(), &listed);
  EXPECT_TRUE(status.ok()) << Describe(status);
  // ... and only that: "admin" alone reads no sessions.
  v1::ListSessionsResponse sessions;
  ExpectMissingScope(second_operator.Sessions(&v1::SessionService::Stub::ListSessions,
                                              v1::ListSessionsRequest(), &sessions),
                     "sessions:read");
}

TEST_F(GatewayApi, TheAdminApiRefusesMalformedTenantIdsAndUnknownScopesBeforeWriting) {
  Client operator_client = As(kGatewayApiKey);
  for (const std::string& id : {std::string("has space"), std::string("a/b"), std::string(65, 't'),
                                std::string("caf\xc3\xa9")}) {
    admin::v1::CreateTenantRequest create;
    create.set_tenant_id(id);
    admin::v1::CreateTenantResponse created;
    grpc::Status status =
        operator_client.Admin(&admin::v1::AdminService::Stub::CreateTenant, create, &created);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << id;
    auto violations = GetBadRequest(FromGrpcStatus(status));
    ASSERT_TRUE(violations.has_value()) << Describe(status);
    EXPECT_EQ(violations->field_violations(0).field(), "tenant_id");
  }
  admin::v1::CreateApiKeyRequest make_key;
  make_key.set_tenant_id(kTenantA);
  make_key.set_name("typo");
  make_key.add_scopes("sessions:reed");
  admin::v1::CreateApiKeyResponse key;
  grpc::Status status =
      operator_client.Admin(&admin::v1::AdminService::Stub::CreateApiKey, make_key, &key);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  make_key.set_tenant_id("no_such_tenant");
  make_key.set_scopes(0, "sessions:read");
  status = operator_client.Admin(&admin::v1::AdminService::Stub::CreateApiKey, make_key, &key);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << Describe(status);

  admin::v1::ListTenantsRequest all;
  all.set_include_disabled(true);
  admin::v1::ListTenantsResponse listed;
  ASSERT_TRUE(
      operator_client.Admin(&admin::v1::AdminService::Stub::ListTenants, all, &listed).ok());
  std::vector<std::string> ids;
  for (const admin::v1::Tenant& t : listed.tenants()) ids.push_back(t.id());
  EXPECT_THAT(ids, ::testing::UnorderedElementsAre(kTenantA, kTenantB));
  // With no id, the operator gets a generated one.
  admin::v1::CreateTenantResponse generated;
  ASSERT_TRUE(operator_client
                  .Admin(&admin::v1::AdminService::Stub::CreateTenant,
                         admin::v1::CreateTenantRequest(), &generated)
                  .ok());
  EXPECT_THAT(generated.tenant().id(), ::testing::StartsWith("ten_"));
}

// A stream from a turn's start begins with its TurnStarted even while session-svc has not
// yet reported the turn's first seq to the store (its first heartbeat, a third of the
// lease later: 20 s here): the start is found in the hot window.
class GatewayStreamFromTurn : public SessionFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(
        StartCluster({.replicas = 1, .lease_ttl = absl::Seconds(60), .gateway = true}));
  }
};

TEST_F(GatewayStreamFromTurn, StartsAtTheTurnsFirstEventBeforeItsFirstSeqIsStored) {
  const std::string session = CreateSession(kTenantA);
  auto turn_id = SubmitTurn(kTenantA, session, "@delay_ms 100\n@words 8");
  ASSERT_TRUE(turn_id.ok()) << turn_id.status();
  auto running = WaitForTurnStatus(kTenantA, *turn_id, v1::TURN_STATUS_RUNNING);
  ASSERT_TRUE(running.ok()) << running.status();
  ASSERT_EQ(running->first_seq(), 0u) << "the witness needs the first seq not yet stored";

  grpc::ClientContext context;
  context.AddMetadata("authorization", std::string("Bearer ") + kGatewayApiKey);
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto stub = v1::SessionService::NewStub(
      grpc::CreateChannel(gateway()->grpc_target(), grpc::InsecureChannelCredentials()));
  v1::StreamEventsRequest request;
  request.set_session_id(session);
  request.set_from_turn_id(*turn_id);
  request.set_until_turn_end(true);
  auto reader = stub->StreamEvents(&context, request);
  std::vector<v1::Event> events;
  v1::StreamEventsResponse item;
  while (reader->Read(&item)) {
    if (item.has_event()) events.push_back(item.event());
  }
  grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << Describe(status);
  ASSERT_THAT(events, ::testing::Not(IsEmpty()));
  EXPECT_TRUE(events.front().has_turn_started()) << events.front().ShortDebugString();
  EXPECT_EQ(events.front().turn_id(), *turn_id);
  std::string text;
  for (const v1::Event& event : events) {
    if (event.has_text_delta()) text += event.text_delta().text();
  }
  EXPECT_EQ(text, "w1 w2 w3 w4 w5 w6 w7 w8");
  EXPECT_TRUE(events.back().has_turn_sealed());
}

// How many calls the gateway has made to store-svc's `method`, whatever their outcome
// (its parley_grpc_client_handled_total); -1 when /metrics cannot be read.
int64_t StoreCalls(parley::testing::ServiceProcess& gateway, const std::string& method) {
  auto page = parley::testing::HttpGet(gateway.admin_port(), "/metrics");
  if (!page.ok() || page->first != 200) return -1;
  const std::string prefix = absl::StrCat(
      "parley_grpc_client_handled_total{method=\"/parley.store.v1.StoreService/", method, "\",");
  int64_t total = 0;
  for (size_t at = page->second.find(prefix); at != std::string::npos;
       at = page->second.find(prefix, at + 1)) {
    const size_t value = page->second.find("} ", at);
    if (value != std::string::npos) total += std::atoll(page->second.c_str() + value + 2);
  }
  return total;
}

// A stream that starts from a turn, with an epoch to check, costs one store-svc call:
// the access check, the durable last seq, the epoch and the turn come in one answer.
TEST_F(GatewayStreamFromTurn, AStreamStartIsOneStoreCall) {
  const std::string session = CreateSession(kTenantA);
  auto turn_id = SubmitTurn(kTenantA, session, "@words 3");
  ASSERT_TRUE(turn_id.ok()) << turn_id.status();
  ASSERT_TRUE(WaitForTurnStatus(kTenantA, *turn_id, v1::TURN_STATUS_SUCCEEDED).ok());
  auto stub = v1::SessionService::NewStub(
      grpc::CreateChannel(gateway()->grpc_target(), grpc::InsecureChannelCredentials()));
  auto stream_from_turn = [&] {
    grpc::ClientContext context;
    context.AddMetadata("authorization", std::string("Bearer ") + kGatewayApiKey);
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    v1::StreamEventsRequest request;
    request.set_session_id(session);
    request.set_from_turn_id(*turn_id);
    request.set_epoch(1);
    request.set_until_turn_end(true);
    auto reader = stub->StreamEvents(&context, request);
    int events = 0;
    v1::StreamEventsResponse item;
    while (reader->Read(&item)) events += item.has_event() ? 1 : 0;
    grpc::Status status = reader->Finish();
    EXPECT_TRUE(status.ok()) << Describe(status);
    return events;
  };
  ASSERT_GT(stream_from_turn(), 0);  // Warms the key cache.
  const std::vector<std::string> start_methods = {"GetLastSeq", "GetSession", "GetTurn"};
  std::vector<int64_t> before;
  for (const std::string& method : start_methods) before.push_back(StoreCalls(*gateway(), method));
  ASSERT_GT(stream_from_turn(), 0);
  for (size_t i = 0; i < start_methods.size(); ++i) {
    ASSERT_GE(before[i], 0);
    EXPECT_EQ(StoreCalls(*gateway(), start_methods[i]) - before[i],
              start_methods[i] == "GetLastSeq" ? 1 : 0)
        << start_methods[i];
  }
}

// Everything one SendMessageAndStream call delivered.
struct SentAndStreamed {
  grpc::Status status;
  std::vector<v1::StreamEventsResponse> items;
};

// Calls SendMessageAndStream (with an `idempotency-key` header when `header_key` is
// given) and reads it to its end.
SentAndStreamed SendAndStream(const std::string& target, const std::string& key,
                              const v1::SendMessageRequest& request,
                              const std::string& header_key = "") {
  auto stub =
      v1::SessionService::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer " + key);
  if (!header_key.empty()) context.AddMetadata("idempotency-key", header_key);
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto reader = stub->SendMessageAndStream(&context, request);
  SentAndStreamed out;
  v1::StreamEventsResponse item;
  while (reader->Read(&item)) out.items.push_back(item);
  out.status = reader->Finish();
  return out;
}

TEST_F(GatewayApi, SendMessageAndStreamAnswersFirstThenStreamsThatTurnUntilSealed) {
  const std::string key = StoredKey(kTenantA, {"sessions:read", "sessions:write"});
  const std::string session = CreateSession(kTenantA);
  v1::SendMessageRequest request;
  request.set_session_id(session);
  request.add_content()->set_text("stream me");
  request.set_idempotency_key("once");

  SentAndStreamed first = SendAndStream(gateway()->grpc_target(), key, request);
  ASSERT_TRUE(first.status.ok()) << Describe(first.status);
  ASSERT_GE(first.items.size(), 3u);
  ASSERT_TRUE(first.items.front().has_sent());
  const v1::SendMessageResponse& sent = first.items.front().sent();
  EXPECT_FALSE(sent.duplicate());
  std::string text;
  std::vector<uint64_t> seqs;
  for (size_t i = 1; i < first.items.size(); ++i) {
    const v1::StreamEventsResponse& item = first.items[i];
    EXPECT_FALSE(item.has_sent()) << "the answer comes once, first";
    if (!item.has_event()) continue;
    EXPECT_EQ(item.event().turn_id(), sent.turn().id());
    seqs.push_back(item.event().seq());
    if (item.event().has_text_delta()) text += item.event().text_delta().text();
  }
  EXPECT_TRUE(first.items[1].event().has_turn_started());
  EXPECT_TRUE(first.items.back().event().has_turn_sealed());
  for (size_t i = 1; i < seqs.size(); ++i) EXPECT_EQ(seqs[i], seqs[i - 1] + 1);
  EXPECT_EQ(text, "Echo: stream me");

  // The same idempotency key again: the same turn, streamed again, nothing new written.
  SentAndStreamed again = SendAndStream(gateway()->grpc_target(), key, request);
  ASSERT_TRUE(again.status.ok()) << Describe(again.status);
  ASSERT_TRUE(again.items.front().has_sent());
  EXPECT_TRUE(again.items.front().sent().duplicate());
  EXPECT_EQ(again.items.front().sent().turn().id(), sent.turn().id());
  EXPECT_EQ(again.items.size(), first.items.size());
  auto turns = ListTurns(kTenantA, session);
  ASSERT_TRUE(turns.ok());
  EXPECT_EQ(turns->size(), 1u);

  // The `idempotency-key` header serves as well as the field.
  v1::SendMessageRequest by_header = request;
  by_header.clear_idempotency_key();
  SentAndStreamed header_first =
      SendAndStream(gateway()->grpc_target(), key, by_header, "by-header");
  ASSERT_TRUE(header_first.status.ok()) << Describe(header_first.status);
  ASSERT_TRUE(header_first.items.front().has_sent());
  EXPECT_FALSE(header_first.items.front().sent().duplicate());
  SentAndStreamed header_again =
      SendAndStream(gateway()->grpc_target(), key, by_header, "by-header");
  ASSERT_TRUE(header_again.status.ok()) << Describe(header_again.status);
  ASSERT_TRUE(header_again.items.front().has_sent());
  EXPECT_TRUE(header_again.items.front().sent().duplicate());
  EXPECT_EQ(header_again.items.front().sent().turn().id(),
            header_first.items.front().sent().turn().id());
  turns = ListTurns(kTenantA, session);
  ASSERT_TRUE(turns.ok());
  EXPECT_EQ(turns->size(), 2u);

  // Both scopes are needed, and another tenant's session is NOT_FOUND; neither writes.
  request.set_idempotency_key("refused");
  SentAndStreamed write_only =
      SendAndStream(gateway()->grpc_target(), StoredKey(kTenantA, {"sessions:write"}), request);
  ExpectMissingScope(write_only.status, "sessions:read");
  EXPECT_TRUE(write_only.items.empty());
  SentAndStreamed other =
      SendAndStream(gateway()->grpc_target(), StoredKey(kTenantB, {"*"}), request);
  EXPECT_EQ(other.status.error_code(), grpc::StatusCode::NOT_FOUND) << Describe(other.status);
  auto messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok());
  EXPECT_EQ(messages->size(), 4u) << "only the two first sends' messages and their answers";
}

// A tenant's own limit (1/s, burst 2) is enforced across its keys with a retry delay,
// nothing of a refused call reaches the services behind, and calls succeed again later.
TEST_F(GatewayApi, ATenantsRateLimitRefusesWithARetryDelayAndRecovers) {
  Client operator_client = As(kGatewayApiKey);
  admin::v1::CreateTenantRequest create;
  create.set_tenant_id("slow");
  create.set_rate_limit_per_s(1);
  create.set_rate_limit_burst(2);
  admin::v1::CreateTenantResponse created;
  ASSERT_TRUE(
      operator_client.Admin(&admin::v1::AdminService::Stub::CreateTenant, create, &created).ok());
  admin::v1::CreateApiKeyRequest make_key;
  make_key.set_tenant_id("slow");
  make_key.set_name("slow key");
  make_key.add_scopes("*");
  admin::v1::CreateApiKeyResponse key;
  ASSERT_TRUE(
      operator_client.Admin(&admin::v1::AdminService::Stub::CreateApiKey, make_key, &key).ok());
  Client slow = As(key.secret());

  auto create_session = [&](const std::string& title) {
    v1::CreateSessionRequest request;
    request.set_title(title);
    v1::CreateSessionResponse out;
    return slow.Sessions(&v1::SessionService::Stub::CreateSession, request, &out);
  };
  grpc::Status refused;
  int admitted = 0;
  for (int i = 0; i < 100 && refused.ok(); ++i) {
    refused = create_session("burst");
    if (refused.ok()) ++admitted;
  }
  // One request a second: never a longer wait.
  ExpectRateLimited(refused, "tenant", 1000);

  // A refused call wrote nothing: only the admitted ones made sessions.
  v1::ListSessionsRequest list;
  list.set_page_size(1000);
  v1::ListSessionsResponse listed;
  EXPECT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] {
    return slow.Sessions(&v1::SessionService::Stub::ListSessions, list, &listed).ok();
  }));
  EXPECT_EQ(listed.sessions_size(), admitted);
  // And it recovers: after the delay a call is admitted again.
  EXPECT_TRUE(
      parley::testing::WaitFor(absl::Seconds(30), [&] { return create_session("later").ok(); }));
}

// Every key limited on its own (--key_rate_limit), well below its tenant's limit.
class GatewayKeyRateLimit : public GatewayApi {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(
        StartCluster({.replicas = 1,
                      .gateway = true,
                      .gateway_flags = {"--key_rate_limit=1", "--key_rate_burst=2"}}));
  }
};

TEST_F(GatewayKeyRateLimit, OneKeyOverItsLimitIsRefusedWhileAnotherKeyOfTheTenantIsNot) {
  const std::string session = CreateSession(kTenantA);
  Client busy = As(StoredKey(kTenantA, {"*"}));
  Client calm = As(StoredKey(kTenantA, {"*"}));
  v1::GetSessionRequest get;
  get.set_session_id(session);
  v1::GetSessionResponse got;

  grpc::Status refused;
  for (int i = 0; i < 100 && refused.ok(); ++i) {
    refused = busy.Sessions(&v1::SessionService::Stub::GetSession, get, &got);
  }
  ExpectRateLimited(refused, "key", 1000);

  // The tenant's other key has its own budget.
  grpc::Status other = calm.Sessions(&v1::SessionService::Stub::GetSession, get, &got);
  EXPECT_TRUE(other.ok()) << Describe(other);
  // And the busy key recovers after the delay.
  EXPECT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] {
    return busy.Sessions(&v1::SessionService::Stub::GetSession, get, &got).ok();
  }));
}

// A tenant may hold --max_streams_per_tenant open streams on a gateway: one more is
// refused with TOO_MANY_STREAMS, other tenants are unaffected, and a closed stream
// frees its place.
class GatewayStreamCap : public SessionFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartCluster(
        {.replicas = 1, .gateway = true, .gateway_flags = {"--max_streams_per_tenant=2"}}));
  }

  // The gateway's count of open streams (its parley_fanout_streams gauge); -1 unread.
  int OpenStreams() {
    auto page = parley::testing::HttpGet(gateway()->admin_port(), "/metrics");
    if (!page.ok() || page->first != 200) return -1;
    const std::string name = "\nparley_fanout_streams ";
    const size_t at = page->second.find(name);
    if (at == std::string::npos) return -1;
    return std::atoi(page->second.c_str() + at + name.size());
  }

  // An open StreamEvents call (live only, so it stays open until cancelled).
  struct OpenStream {
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<grpc::ClientReader<v1::StreamEventsResponse>> reader;
  };
  OpenStream Open(v1::SessionService::Stub& stub, const std::string& key,
                  const std::string& session) {
    OpenStream open{std::make_unique<grpc::ClientContext>(), nullptr};
    open.context->AddMetadata("authorization", "Bearer " + key);
    open.context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    v1::StreamEventsRequest request;
    request.set_session_id(session);
    request.set_from_latest(true);
    open.reader = stub.StreamEvents(open.context.get(), request);
    return open;
  }
};

TEST_F(GatewayStreamCap, OneStreamOverTheTenantsCapIsRefusedAndAClosedOneFreesItsPlace) {
  auto stub = v1::SessionService::NewStub(
      grpc::CreateChannel(gateway()->grpc_target(), grpc::InsecureChannelCredentials()));
  const std::string session_a = CreateSession(kTenantA);
  const std::string session_b = CreateSession(kTenantB);
  const std::string key_a = kGatewayApiKey;
  const std::string key_b = [&] {
    grpc::ClientContext context;
    store::v1::CreateApiKeyRequest request;
    request.set_tenant_id(kTenantB);
    request.set_name("b");
    request.add_scopes("*");
    store::v1::CreateApiKeyResponse response;
    EXPECT_TRUE(store().CreateApiKey(&context, request, &response).ok());
    return response.secret();
  }();

  OpenStream first = Open(*stub, key_a, session_a);
  OpenStream second = Open(*stub, key_a, session_a);
  // Both are counted once the gateway has them: wait until its gauge says so.
  ASSERT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] { return OpenStreams() >= 2; }));
  OpenStream third = Open(*stub, key_a, session_a);
  v1::StreamEventsResponse item;
  EXPECT_FALSE(third.reader->Read(&item));
  grpc::Status refused = third.reader->Finish();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(refused);
  auto info = GetErrorInfo(FromGrpcStatus(refused));
  ASSERT_TRUE(info.has_value()) << Describe(refused);
  EXPECT_EQ(info->reason(), "TOO_MANY_STREAMS");

  // Another tenant has its own budget.
  OpenStream other = Open(*stub, key_b, session_b);
  ASSERT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] { return OpenStreams() >= 3; }));

  // Closing one of A's frees a place for the next.
  first.context->TryCancel();
  first.reader->Finish();
  ASSERT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] { return OpenStreams() == 2; }));
  OpenStream again = Open(*stub, key_a, session_a);
  ASSERT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] { return OpenStreams() >= 3; }));
  for (OpenStream* open : {&second, &other, &again}) {
    open->context->TryCancel();
    grpc::Status ended = open->reader->Finish();
    EXPECT_EQ(ended.error_code(), grpc::StatusCode::CANCELLED) << Describe(ended);
  }
}

TEST_F(GatewayApi, TenConcurrentSendsWithOneIdempotencyKeyMakeOneMessageAndOneTurn) {
  const std::string session = CreateSession(kTenantA);
  const std::string key = StoredKey(kTenantA, {"sessions:write"});
  absl::Mutex mu;
  std::vector<v1::SendMessageResponse> answers;
  std::vector<grpc::Status> failures;
  std::vector<std::thread> senders;
  for (int i = 0; i < 10; ++i) {
    senders.emplace_back([&] {
      Client client = As(key);
      v1::SendMessageRequest send;
      send.set_session_id(session);
      send.add_content()->set_text("once");
      send.set_idempotency_key("retry-me");
      v1::SendMessageResponse sent;
      grpc::Status status = client.Sessions(&v1::SessionService::Stub::SendMessage, send, &sent);
      absl::MutexLock lock(&mu);
      if (status.ok()) {
        answers.push_back(sent);
      } else {
        failures.push_back(status);
      }
    });
  }
  for (std::thread& sender : senders) sender.join();
  ASSERT_THAT(failures, IsEmpty());
  ASSERT_THAT(answers, SizeIs(10));
  int firsts = 0;
  for (const v1::SendMessageResponse& answer : answers) {
    firsts += answer.duplicate() ? 0 : 1;
    EXPECT_EQ(answer.turn().id(), answers[0].turn().id());
    EXPECT_EQ(answer.message().id(), answers[0].message().id());
  }
  EXPECT_EQ(firsts, 1);
  auto turns = ListTurns(kTenantA, session);
  ASSERT_TRUE(turns.ok());
  EXPECT_THAT(*turns, SizeIs(1));
  auto messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok());
  int user_messages = 0;
  for (const v1::Message& message : *messages) user_messages += message.role() == v1::ROLE_USER;
  EXPECT_EQ(user_messages, 1);
}

TEST_F(GatewayApi, OversizedAndMalformedInputIsInvalidArgumentAndWritesNothing) {
  Client client = As(StoredKey(kTenantA, {"*"}));
  const std::vector<std::string> before = ListedSessions(client);
  v1::CreateSessionRequest create;
  create.set_title(std::string(64 * 1024, 't'));
  v1::CreateSessionResponse created;
  grpc::Status status = client.Sessions(&v1::SessionService::Stub::CreateSession, create, &created);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  auto bad_request = GetBadRequest(FromGrpcStatus(status));
  ASSERT_TRUE(bad_request.has_value());
  EXPECT_EQ(bad_request->field_violations(0).field(), "title");

  const std::string session = CreateSession(kTenantA);
  v1::SendMessageRequest send;
  send.set_session_id(session);  // No content.
  v1::SendMessageResponse sent;
  status = client.Sessions(&v1::SessionService::Stub::SendMessage, send, &sent);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  v1::GetTurnRequest get_turn;  // No ids.
  v1::GetTurnResponse turn;
  status = client.Sessions(&v1::SessionService::Stub::GetTurn, get_turn, &turn);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);
  v1::ListSessionsRequest list;
  list.set_page_size(5000);
  v1::ListSessionsResponse listed;
  status = client.Sessions(&v1::SessionService::Stub::ListSessions, list, &listed);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(status);

  // Each refusal names its field: too many parts, parts over the message size, a policy
  // no enum value names, ids too long or with control characters.
  auto expect_field = [](const grpc::Status& refused, const std::string& field) {
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(refused);
    auto violations = GetBadRequest(FromGrpcStatus(refused));
    ASSERT_TRUE(violations.has_value()) << Describe(refused);
    EXPECT_EQ(violations->field_violations(0).field(), field) << Describe(refused);
  };
  v1::SendMessageRequest many_parts;
  many_parts.set_session_id(session);
  for (int i = 0; i < 65; ++i) many_parts.add_content()->set_text("part");
  expect_field(client.Sessions(&v1::SessionService::Stub::SendMessage, many_parts, &sent),
               "content");
  v1::SendMessageRequest too_big;
  too_big.set_session_id(session);
  too_big.add_content()->set_text(std::string((1 << 20) + 1, 'b'));
  expect_field(client.Sessions(&v1::SessionService::Stub::SendMessage, too_big, &sent), "content");
  v1::SendMessageRequest bad_policy;
  bad_policy.set_session_id(session);
  bad_policy.add_content()->set_text("hello");
  bad_policy.set_multitask_policy(static_cast<v1::MultitaskPolicy>(99));
  expect_field(client.Sessions(&v1::SessionService::Stub::SendMessage, bad_policy, &sent),
               "multitask_policy");
  for (const std::string& bad_id : {std::string(300, 's'), std::string("ses_\x01")}) {
    v1::GetSessionRequest get;
    get.set_session_id(bad_id);
    v1::GetSessionResponse got;
    expect_field(client.Sessions(&v1::SessionService::Stub::GetSession, get, &got), "session_id");
  }
  // Over the gateway's --max_message_bytes (4 MiB): refused by gRPC before any handler.
  v1::SendMessageRequest over_limit;
  over_limit.set_session_id(session);
  over_limit.add_content()->set_text(std::string(5 << 20, 'o'));
  status = client.Sessions(&v1::SessionService::Stub::SendMessage, over_limit, &sent);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(status);

  std::vector<std::string> after = ListedSessions(client);
  after.erase(std::remove(after.begin(), after.end(), session), after.end());
  EXPECT_EQ(after, before);
  auto messages = ListMessages(kTenantA, session);
  ASSERT_TRUE(messages.ok());
  EXPECT_THAT(*messages, IsEmpty());
}

}  // namespace
}  // namespace parley::session::testing

namespace parley::session::testing {
namespace {

// A unary call through the gateway with an `idempotency-key` header: how it ended, and
// whether the gateway said it replayed an earlier outcome.
struct Keyed {
  grpc::Status status;
  bool replayed = false;
};

template <typename Stub, typename Request, typename Response>
Keyed CallWithKey(Stub& stub,
                  grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*),
                  const std::string& api_key, const std::string& idempotency_key,
                  const Request& request, Response* response) {
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer " + api_key);
  context.AddMetadata("idempotency-key", idempotency_key);
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  Keyed keyed;
  keyed.status = (stub.*method)(&context, request, response);
  auto replayed = context.GetServerTrailingMetadata().find("idempotent-replayed");
  keyed.replayed = replayed != context.GetServerTrailingMetadata().end() &&
                   replayed->second == grpc::string_ref("true");
  return keyed;
}

std::string Reason(const grpc::Status& status) {
  auto info = GetErrorInfo(FromGrpcStatus(status));
  return info.has_value() ? info->reason() : "";
}

TEST_F(GatewayApi, AnIdempotencyKeyMakesARetryGetTheFirstOutcomeAgain) {
  const std::string admin = StoredKey(kTenantA, {"api_keys:admin"});
  auto keys = v1::ApiKeyService::NewStub(
      grpc::CreateChannel(gateway()->grpc_target(), grpc::InsecureChannelCredentials()));
  v1::CreateApiKeyRequest create;
  create.set_name("deploy bot");
  create.add_scopes("api_keys:admin");
  v1::CreateApiKeyResponse first, again;
  Keyed made =
      CallWithKey(*keys, &v1::ApiKeyService::Stub::CreateApiKey, admin, "key-op-1", create, &first);
  ASSERT_TRUE(made.status.ok()) << Describe(made.status);
  EXPECT_FALSE(made.replayed);
  // The retry gets the same key, secret included, and makes no second one.
  Keyed retried =
      CallWithKey(*keys, &v1::ApiKeyService::Stub::CreateApiKey, admin, "key-op-1", create, &again);
  ASSERT_TRUE(retried.status.ok()) << Describe(retried.status);
  EXPECT_TRUE(retried.replayed);
  EXPECT_EQ(again.api_key().id(), first.api_key().id());
  EXPECT_EQ(again.secret(), first.secret());
  Client client = As(admin);
  v1::ListApiKeysRequest list;
  v1::ListApiKeysResponse listed;
  ASSERT_TRUE(client.Keys(&v1::ApiKeyService::Stub::ListApiKeys, list, &listed).ok());
  int named = 0;
  for (const v1::ApiKey& key : listed.api_keys()) named += key.name() == "deploy bot";
  EXPECT_EQ(named, 1);

  // The same key for a different request is refused, and nothing is made.
  create.set_name("another bot");
  v1::CreateApiKeyResponse other;
  Keyed reused =
      CallWithKey(*keys, &v1::ApiKeyService::Stub::CreateApiKey, admin, "key-op-1", create, &other);
  EXPECT_EQ(reused.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Reason(reused.status), "IDEMPOTENCY_KEY_REUSED");

  // A tenant the gateway names itself (no tenant_id): the retry gets the same tenant,
  // not a second one, though the id is made up anew on every attempt.
  auto admin_stub = admin::v1::AdminService::NewStub(
      grpc::CreateChannel(gateway()->grpc_target(), grpc::InsecureChannelCredentials()));
  admin::v1::CreateTenantRequest tenant;
  tenant.set_name("Named by the gateway");
  admin::v1::CreateTenantResponse tenant_first, tenant_again;
  Keyed onboarded = CallWithKey(*admin_stub, &admin::v1::AdminService::Stub::CreateTenant,
                                kGatewayApiKey, "tenant-op-1", tenant, &tenant_first);
  ASSERT_TRUE(onboarded.status.ok()) << Describe(onboarded.status);
  Keyed onboarded_again = CallWithKey(*admin_stub, &admin::v1::AdminService::Stub::CreateTenant,
                                      kGatewayApiKey, "tenant-op-1", tenant, &tenant_again);
  ASSERT_TRUE(onboarded_again.status.ok()) << Describe(onboarded_again.status);
  EXPECT_TRUE(onboarded_again.replayed);
  EXPECT_EQ(tenant_again.tenant().id(), tenant_first.tenant().id());

  // A failure a retry cannot change is kept too.
  auto sessions = v1::SessionService::NewStub(
      grpc::CreateChannel(gateway()->grpc_target(), grpc::InsecureChannelCredentials()));
  const std::string writer = StoredKey(kTenantA, {"sessions:write"});
  v1::CancelTurnRequest cancel;
  cancel.set_session_id(CreateSession(kTenantA));
  cancel.set_turn_id("turn_missing");
  v1::CancelTurnResponse cancelled;
  Keyed missing = CallWithKey(*sessions, &v1::SessionService::Stub::CancelTurn, writer, "cancel-1",
                              cancel, &cancelled);
  EXPECT_EQ(missing.status.error_code(), grpc::StatusCode::NOT_FOUND);
  Keyed missing_again = CallWithKey(*sessions, &v1::SessionService::Stub::CancelTurn, writer,
                                    "cancel-1", cancel, &cancelled);
  EXPECT_EQ(missing_again.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(missing_again.replayed);

  // A malformed key is refused before anything runs.
  v1::CreateApiKeyResponse none;
  Keyed malformed = CallWithKey(*keys, &v1::ApiKeyService::Stub::CreateApiKey, admin,
                                std::string(300, 'k'), create, &none);
  EXPECT_EQ(malformed.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(client.Keys(&v1::ApiKeyService::Stub::ListApiKeys, list, &listed).ok());
  for (const v1::ApiKey& key : listed.api_keys()) EXPECT_NE(key.name(), "another bot");
}

TEST_F(GatewayApi, TenConcurrentCreatesWithOneIdempotencyKeyMakeOneSession) {
  const std::string writer = StoredKey(kTenantA, {"sessions:write", "sessions:read"});
  Client reader = As(writer);
  const size_t before = ListedSessions(reader).size();
  auto sessions = v1::SessionService::NewStub(
      grpc::CreateChannel(gateway()->grpc_target(), grpc::InsecureChannelCredentials()));
  absl::Mutex mu;
  std::vector<std::string> created;
  std::vector<grpc::Status> refused;
  std::vector<std::thread> callers;
  for (int i = 0; i < 10; ++i) {
    callers.emplace_back([&] {
      v1::CreateSessionRequest request;
      request.set_title("made once");
      v1::CreateSessionResponse response;
      Keyed keyed = CallWithKey(*sessions, &v1::SessionService::Stub::CreateSession, writer,
                                "create-once", request, &response);
      absl::MutexLock lock(&mu);
      if (keyed.status.ok()) {
        created.push_back(response.session().id());
      } else {
        refused.push_back(keyed.status);
      }
    });
  }
  for (std::thread& caller : callers) caller.join();
  // Each call either got the one session or was told the first was still running.
  ASSERT_FALSE(created.empty());
  for (const std::string& id : created) EXPECT_EQ(id, created[0]);
  for (const grpc::Status& status : refused) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::ABORTED) << Describe(status);
    EXPECT_EQ(Reason(status), "IDEMPOTENCY_KEY_IN_USE");
  }
  EXPECT_EQ(ListedSessions(reader).size(), before + 1);
  // Once it ended, every retry gets it.
  v1::CreateSessionRequest request;
  request.set_title("made once");
  v1::CreateSessionResponse response;
  Keyed late = CallWithKey(*sessions, &v1::SessionService::Stub::CreateSession, writer,
                           "create-once", request, &response);
  ASSERT_TRUE(late.status.ok()) << Describe(late.status);
  EXPECT_TRUE(late.replayed);
  EXPECT_EQ(response.session().id(), created[0]);

  // Keys are the tenant's own: another tenant's same key is another call.
  CreateSession(kTenantB);
  const std::string other = StoredKey(kTenantB, {"sessions:write"});
  v1::CreateSessionResponse theirs;
  Keyed separate = CallWithKey(*sessions, &v1::SessionService::Stub::CreateSession, other,
                               "create-once", request, &theirs);
  ASSERT_TRUE(separate.status.ok()) << Describe(separate.status);
  EXPECT_FALSE(separate.replayed);
  EXPECT_NE(theirs.session().id(), created[0]);
}

}  // namespace
}  // namespace parley::session::testing
