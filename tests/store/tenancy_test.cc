// Tenant isolation in the store: every tenant-scoped rpc treats another tenant's
// resource exactly like one that does not exist, and changes nothing of it.
#include <gtest/gtest.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "tests/store/store_test_helpers.h"

namespace parley::store::testing {
namespace {

constexpr char kOther[] = "tenant_b";

// The ids a call is aimed at: tenant A's, or fresh ones that exist nowhere.
struct Target {
  std::string session_id;
  std::string turn_id;
  std::string api_key_id;
};

class Tenancy : public StoreTest {
 protected:
  // Everything an rpc answered: code, message, details and response.
  template <typename Request, typename Response>
  std::string Outcome(StubMethod<Request, Response> method, const Request& request) {
    grpc::ClientContext context;
    Response response;
    grpc::Status status = (stub()->*method)(&context, request, &response);
    return absl::StrCat("code=", status.error_code(), " message=\"", status.error_message(),
                        "\" details=", absl::BytesToHexString(status.error_details()),
                        " response={", Dump(response), "}");
  }

  // Tenant A's state as A reads it.
  std::string SnapshotOfA(const std::string& session_id) {
    std::string out = Dump(*GetSession(session_id));
    for (const v1::Message& m : AllMessages(session_id)) absl::StrAppend(&out, "\n", Dump(m));
    for (const v1::Turn& t : AllTurns(session_id)) absl::StrAppend(&out, "\n", Dump(t));
    absl::StrAppend(&out, "\n", Dump(*ReadEvents(session_id)));
    store_pb::ListApiKeysRequest keys;
    keys.set_tenant_id(kTenant);
    keys.set_include_revoked(true);
    absl::StrAppend(&out, "\n", Dump(*Call(&Stub::ListApiKeys, keys)));
    return out;
  }
};

TEST_F(Tenancy, AnotherTenantsResourcesBehaveExactlyLikeMissingOnes) {
  // Tenant A: a session with a message, a running turn, events and an API key.
  const std::string session_id = CreateSession(kTenant).id();
  ASSERT_TRUE(AppendMessage(session_id, "be nice").ok());
  ASSERT_TRUE(Enqueue(session_id, "hello").ok());
  auto claim = Claim();
  ASSERT_TRUE(claim.ok() && claim->has_turn()) << claim.status();
  ASSERT_TRUE(
      AppendEvents(session_id, {TextEvent(session_id, 1, "a"), TextEvent(session_id, 2, "b")})
          .ok());
  auto key = CreateApiKey({"*"});
  ASSERT_TRUE(key.ok()) << key.status();
  CreateTenant(kOther);
  const std::string before = SnapshotOfA(session_id);

  const Target of_a{session_id, claim->turn().id(), key->api_key().id()};
  const Target missing{NewId("ses"), NewId("turn"), NewId("key")};
  const uint64_t epoch = claim->lease_epoch();

  // Each call is made by tenant B; `expected` is what a missing resource gives.
  struct Case {
    const char* rpc;
    grpc::StatusCode expected;
    std::function<std::string(const Target&)> call;
  };
  const std::vector<Case> cases = {
      {"GetSession", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::GetSessionRequest r;
         r.set_tenant_id(kOther);
         r.set_session_id(t.session_id);
         return Outcome(&Stub::GetSession, r);
       }},
      {"UpdateSession", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::UpdateSessionRequest r;
         r.set_tenant_id(kOther);
         r.mutable_request()->set_session_id(t.session_id);
         r.mutable_request()->mutable_session()->set_title("taken over");
         r.mutable_request()->mutable_update_mask()->add_paths("title");
         return Outcome(&Stub::UpdateSession, r);
       }},
      {"CloseSession", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::CloseSessionRequest r;
         r.set_tenant_id(kOther);
         r.set_session_id(t.session_id);
         return Outcome(&Stub::CloseSession, r);
       }},
      // Deleting a missing session is OK with deleted = false.
      {"DeleteSession", grpc::OK,
       [&](const Target& t) {
         store_pb::DeleteSessionRequest r;
         r.set_tenant_id(kOther);
         r.set_session_id(t.session_id);
         return Outcome(&Stub::DeleteSession, r);
       }},
      {"AppendMessage", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::AppendMessageRequest r;
         r.set_tenant_id(kOther);
         r.mutable_message()->set_session_id(t.session_id);
         r.mutable_message()->set_role(v1::ROLE_SYSTEM);
         *r.mutable_message()->add_parts() = TextPart("injected");
         return Outcome(&Stub::AppendMessage, r);
       }},
      {"ListMessages", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::ListMessagesRequest r;
         r.set_tenant_id(kOther);
         r.mutable_request()->set_session_id(t.session_id);
         return Outcome(&Stub::ListMessages, r);
       }},
      {"EnqueueTurn", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::EnqueueTurnRequest r;
         r.set_tenant_id(kOther);
         r.mutable_request()->set_session_id(t.session_id);
         *r.mutable_request()->add_content() = TextPart("injected");
         return Outcome(&Stub::EnqueueTurn, r);
       }},
      {"GetTurn", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::GetTurnRequest r;
         r.set_tenant_id(kOther);
         r.set_turn_id(t.turn_id);
         return Outcome(&Stub::GetTurn, r);
       }},
      {"ListTurns", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::ListTurnsRequest r;
         r.set_tenant_id(kOther);
         r.set_session_id(t.session_id);
         return Outcome(&Stub::ListTurns, r);
       }},
      {"CancelTurn", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::CancelTurnRequest r;
         r.set_tenant_id(kOther);
         r.set_session_id(t.session_id);
         r.set_turn_id(t.turn_id);
         return Outcome(&Stub::CancelTurn, r);
       }},
      {"HeartbeatTurn", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::HeartbeatTurnRequest r;
         r.set_tenant_id(kOther);
         r.set_turn_id(t.turn_id);
         r.set_owner(kOwner);
         r.set_lease_epoch(epoch);
         r.set_lease_ttl_ms(kLeaseTtlMs);
         r.set_steps(7);
         return Outcome(&Stub::HeartbeatTurn, r);
       }},
      {"CompleteTurn", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::CompleteTurnRequest r = Completion(*claim);
         r.set_tenant_id(kOther);
         r.set_turn_id(t.turn_id);
         return Outcome(&Stub::CompleteTurn, r);
       }},
      {"AppendEvents", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::AppendEventsRequest r;
         r.set_tenant_id(kOther);
         r.set_session_id(t.session_id);
         *r.add_events() = TextEvent(t.session_id, 3, "injected");
         return Outcome(&Stub::AppendEvents, r);
       }},
      {"ReadEvents", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::ReadEventsRequest r;
         r.set_tenant_id(kOther);
         r.set_session_id(t.session_id);
         return Outcome(&Stub::ReadEvents, r);
       }},
      {"GetLastSeq", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::GetLastSeqRequest r;
         r.set_tenant_id(kOther);
         r.set_session_id(t.session_id);
         return Outcome(&Stub::GetLastSeq, r);
       }},
      {"AdvanceEpoch", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::AdvanceEpochRequest r;
         r.set_tenant_id(kOther);
         r.set_session_id(t.session_id);
         r.set_expected_epoch(1);
         return Outcome(&Stub::AdvanceEpoch, r);
       }},
      {"RevokeApiKey", grpc::NOT_FOUND,
       [&](const Target& t) {
         store_pb::RevokeApiKeyRequest r;
         r.set_tenant_id(kOther);
         r.set_api_key_id(t.api_key_id);
         return Outcome(&Stub::RevokeApiKey, r);
       }},
  };

  for (const Case& c : cases) {
    SCOPED_TRACE(c.rpc);
    const std::string on_missing = c.call(missing);
    EXPECT_EQ(c.call(of_a), on_missing);
    EXPECT_EQ(on_missing.substr(0, on_missing.find(' ')),
              absl::StrCat("code=", static_cast<int>(c.expected)));
  }
  EXPECT_EQ(SnapshotOfA(session_id), before);
}

TEST_F(Tenancy, GetTenantReturnsTheTenantAsCreatedAndNotFoundForAnUnknownOne) {
  store_pb::CreateTenantRequest create;
  create.set_tenant_id("tenant_get");
  create.set_name("Get Co");
  create.set_rate_limit_per_s(7);
  create.set_rate_limit_burst(21);
  auto created = Call(&Stub::CreateTenant, create);
  ASSERT_TRUE(created.ok()) << created.status();

  store_pb::GetTenantRequest get;
  get.set_tenant_id("tenant_get");
  auto got = Call(&Stub::GetTenant, get);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(Dump(got->tenant()), Dump(created->tenant()));
  EXPECT_EQ(got->tenant().name(), "Get Co");
  EXPECT_EQ(got->tenant().rate_limit_per_s(), 7u);
  EXPECT_EQ(got->tenant().rate_limit_burst(), 21u);

  get.set_tenant_id("tenant_nobody");
  EXPECT_EQ(Call(&Stub::GetTenant, get).status().code(), absl::StatusCode::kNotFound);
}

// The list rpcs filter by tenant inside the query: tenant B sees exactly its own
// sessions and keys, whatever A holds, and a tenant with nothing sees nothing.
TEST_F(Tenancy, ListsMadeAsAnotherTenantShowNothingOfTheFirst) {
  std::set<std::string> sessions_of_a;
  for (int i = 0; i < 3; ++i) sessions_of_a.insert(CreateSession(kTenant).id());
  auto key_a = CreateApiKey({"*"}, "a-live");
  ASSERT_TRUE(key_a.ok()) << key_a.status();
  auto revoked_a = CreateApiKey({"*"}, "a-revoked");
  ASSERT_TRUE(revoked_a.ok()) << revoked_a.status();
  store_pb::RevokeApiKeyRequest revoke;
  revoke.set_tenant_id(kTenant);
  revoke.set_api_key_id(revoked_a->api_key().id());
  ASSERT_TRUE(Call(&Stub::RevokeApiKey, revoke).ok());
  const std::string session_of_b = CreateSession(kOther).id();
  auto key_b = CreateApiKey({"*"}, "b", kOther);
  ASSERT_TRUE(key_b.ok()) << key_b.status();
  CreateTenant("tenant_empty");

  auto session_ids = [&](const std::string& tenant) {
    auto listed = ListSessions(v1::ListSessionsRequest(), tenant);
    EXPECT_TRUE(listed.ok()) << listed.status();
    std::set<std::string> ids;
    if (listed.ok()) {
      for (const v1::Session& s : listed->sessions()) ids.insert(s.id());
    }
    return ids;
  };
  auto key_ids = [&](const std::string& tenant) {
    store_pb::ListApiKeysRequest request;
    request.set_tenant_id(tenant);
    request.set_include_revoked(true);
    auto listed = Call(&Stub::ListApiKeys, request);
    EXPECT_TRUE(listed.ok()) << listed.status();
    std::set<std::string> ids;
    if (listed.ok()) {
      for (const v1::ApiKey& k : listed->api_keys()) ids.insert(k.id());
    }
    return ids;
  };

  // A's own lists hold A's resources, so the lists below are not empty by accident.
  EXPECT_EQ(session_ids(kTenant), sessions_of_a);
  EXPECT_EQ(key_ids(kTenant),
            (std::set<std::string>{key_a->api_key().id(), revoked_a->api_key().id()}));
  EXPECT_EQ(session_ids(kOther), std::set<std::string>{session_of_b});
  EXPECT_EQ(key_ids(kOther), std::set<std::string>{key_b->api_key().id()});
  EXPECT_TRUE(session_ids("tenant_empty").empty());
  EXPECT_TRUE(key_ids("tenant_empty").empty());
  EXPECT_TRUE(session_ids("tenant_nobody").empty());
  EXPECT_TRUE(key_ids("tenant_nobody").empty());

  // A page token of A's list, replayed by B, still reads only B's rows.
  v1::ListSessionsRequest first_page;
  first_page.set_page_size(1);
  auto page = ListSessions(first_page, kTenant);
  ASSERT_TRUE(page.ok()) << page.status();
  ASSERT_FALSE(page->next_page_token().empty());
  v1::ListSessionsRequest next_page;
  next_page.set_page_token(page->next_page_token());
  auto replayed = ListSessions(next_page, kOther);
  if (replayed.ok()) {
    for (const v1::Session& s : replayed->sessions()) {
      EXPECT_FALSE(sessions_of_a.contains(s.id())) << s.id();
    }
  } else {
    EXPECT_EQ(replayed.status().code(), absl::StatusCode::kInvalidArgument) << replayed.status();
  }
}

}  // namespace
}  // namespace parley::store::testing
