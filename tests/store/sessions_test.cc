// Sessions in the store: idempotent create, get, filtered and keyset-paginated listing,
// masked updates with optimistic concurrency, close and delete, and the input limits
// a session is checked against.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/store/store_test_helpers.h"

namespace parley::store::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

class Sessions : public StoreTest {
 protected:
  v1::Session CreateWith(void (*fill)(v1::CreateSessionRequest&)) {
    v1::CreateSessionRequest fields;
    fill(fields);
    return CreateSession(kTenant, fields);
  }

  // Ids of one page of ListSessions with these filters.
  std::vector<std::string> ListIds(const v1::ListSessionsRequest& filters) {
    auto page = ListSessions(filters);
    EXPECT_TRUE(page.ok()) << page.status();
    std::vector<std::string> ids;
    if (page.ok()) {
      for (const v1::Session& s : page->sessions()) ids.push_back(s.id());
    }
    return ids;
  }

  // Follows next_page_token from `filters` to the end (at most 20 pages).
  std::vector<std::vector<std::string>> ListPages(v1::ListSessionsRequest filters) {
    std::vector<std::vector<std::string>> pages;
    for (int i = 0; i < 20; ++i) {
      auto page = ListSessions(filters);
      EXPECT_TRUE(page.ok()) << page.status();
      if (!page.ok()) break;
      pages.emplace_back();
      for (const v1::Session& s : page->sessions()) pages.back().push_back(s.id());
      if (page->next_page_token().empty()) break;
      filters.set_page_token(page->next_page_token());
    }
    return pages;
  }

  // Five sessions created one after the other, oldest first.
  std::vector<std::string> CreateFive() {
    std::vector<std::string> ids;
    for (int i = 0; i < 5; ++i) ids.push_back(CreateSession(kTenant).id());
    return ids;
  }

  absl::StatusOr<store_pb::UpdateSessionResponse> Update(const std::string& session_id,
                                                         const v1::Session& values,
                                                         const std::vector<std::string>& paths,
                                                         uint64_t expected_version = 0) {
    store_pb::UpdateSessionRequest request;
    request.set_tenant_id(kTenant);
    request.mutable_request()->set_session_id(session_id);
    *request.mutable_request()->mutable_session() = values;
    for (const std::string& path : paths) {
      request.mutable_request()->mutable_update_mask()->add_paths(path);
    }
    request.mutable_request()->set_expected_version(expected_version);
    return Call(&Stub::UpdateSession, request);
  }

  absl::StatusOr<store_pb::CreateSessionResponse> CreateRaw(const v1::CreateSessionRequest& fields,
                                                            const std::string& tenant = kTenant) {
    store_pb::CreateSessionRequest request;
    request.set_tenant_id(tenant);
    *request.mutable_request() = fields;
    return Call(&Stub::CreateSession, request);
  }
};

// ---- Create and get ----

// What it proves: a page of large sessions stops at the store's byte budget and hands
// out a token for the rest, so no page outgrows a client's 4 MiB receive limit (300
// sessions of 15 KB of metadata in one answer used to fail with RESOURCE_EXHAUSTED on
// the test's default channel), and following the tokens lists every session once.
TEST_F(Sessions, APageOfLargeSessionsStopsAtTheByteBudgetAndTheTokenGoesOn) {
  std::set<std::string> created;
  for (int i = 0; i < 300; ++i) {
    v1::CreateSessionRequest fields;
    (*fields.mutable_metadata())["blob"] = std::string(15'000, 'm');
    created.insert(CreateSession(kTenant, fields).id());
  }
  v1::ListSessionsRequest filters;
  filters.set_page_size(1000);
  const std::vector<std::vector<std::string>> pages = ListPages(filters);
  ASSERT_GT(pages.size(), 1u);
  EXPECT_LT(pages[0].size(), 300u);
  std::set<std::string> listed;
  size_t total = 0;
  for (const std::vector<std::string>& page : pages) {
    listed.insert(page.begin(), page.end());
    total += page.size();
  }
  EXPECT_EQ(total, 300u);
  EXPECT_EQ(listed, created);
}

TEST_F(Sessions, CreateWithAKnownExternalIdReturnsTheExistingSession) {
  CreateTenant(kTenant);
  v1::CreateSessionRequest fields;
  fields.set_external_id("conversation-1");
  fields.set_title("first");
  auto first = CreateRaw(fields);
  ASSERT_TRUE(first.ok()) << first.status();
  fields.set_title("second");
  auto again = CreateRaw(fields);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(first->created());
  EXPECT_FALSE(again->created());
  EXPECT_EQ(Dump(again->session()), Dump(first->session()));  // Unchanged: still "first".
}

TEST_F(Sessions, ConcurrentCreatesWithOneExternalIdYieldOneSession) {
  CreateTenant(kTenant);
  v1::CreateSessionRequest fields;
  fields.set_external_id("conversation-1");
  std::vector<absl::StatusOr<store_pb::CreateSessionResponse>> results(8,
                                                                       absl::UnknownError("unrun"));
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) threads.emplace_back([&, i] { results[i] = CreateRaw(fields); });
  for (std::thread& t : threads) t.join();

  int created = 0;
  for (const auto& result : results) {
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->session().id(), results[0]->session().id());
    created += result->created() ? 1 : 0;
  }
  EXPECT_EQ(created, 1);
  EXPECT_EQ(ListIds({}).size(), 1u);
}

TEST_F(Sessions, CreateInAnUnknownTenantIsNotFound) {
  auto created = CreateRaw({}, "no_such_tenant");
  EXPECT_EQ(created.status().code(), absl::StatusCode::kNotFound) << created.status();
}

TEST_F(Sessions, GetReturnsTheCreatedSession) {
  v1::CreateSessionRequest fields;
  fields.set_title("support chat");
  fields.set_user_id("user-7");
  fields.add_tags("vip");
  fields.mutable_agent_config()->set_provider("scripted");
  v1::Session created = CreateSession(kTenant, fields);

  auto got = GetSession(created.id());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(Dump(*got), Dump(created));
  EXPECT_EQ(got->status(), v1::SESSION_STATUS_ACTIVE);
  EXPECT_EQ(got->version(), 1u);
  EXPECT_EQ(got->epoch(), 1u);
  EXPECT_EQ(got->title(), "support chat");
  EXPECT_THAT(got->tags(), ElementsAre("vip"));
}

TEST_F(Sessions, CreateKeepsTheMetadata) {
  v1::CreateSessionRequest fields;
  (*fields.mutable_metadata())["plan"] = "pro";
  v1::Session created = CreateSession(kTenant, fields);
  auto got = GetSession(created.id());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->metadata().at("plan"), "pro");
}

TEST_F(Sessions, GetOfAnUnknownIdIsNotFound) {
  CreateTenant(kTenant);
  EXPECT_EQ(GetSession(NewId("ses")).status().code(), absl::StatusCode::kNotFound);
}

// ---- List filters ----

TEST_F(Sessions, ListFiltersByStatus) {
  std::string open = CreateSession(kTenant).id();
  std::string closed = CreateSession(kTenant).id();
  ASSERT_TRUE(CloseSession(closed).ok());
  v1::ListSessionsRequest filters;
  filters.set_status(v1::SESSION_STATUS_CLOSED);
  EXPECT_THAT(ListIds(filters), ElementsAre(closed));
  filters.set_status(v1::SESSION_STATUS_ACTIVE);
  EXPECT_THAT(ListIds(filters), ElementsAre(open));
}

TEST_F(Sessions, ListTagFilterRequiresEveryTag) {
  std::string both = CreateWith([](auto& f) {
                       f.add_tags("a");
                       f.add_tags("b");
                     }).id();
  std::string only_a = CreateWith([](auto& f) { f.add_tags("a"); }).id();
  CreateWith([](auto& f) { f.add_tags("b"); });
  v1::ListSessionsRequest filters;
  filters.add_tags("a");
  filters.add_tags("b");
  EXPECT_THAT(ListIds(filters), ElementsAre(both));
  filters.clear_tags();
  filters.add_tags("a");
  EXPECT_THAT(ListIds(filters), UnorderedElementsAre(both, only_a));
}

TEST_F(Sessions, ListMetadataFilterMatchesEveryKeyValuePair) {
  std::string red_prod = CreateWith([](auto& f) {
                           (*f.mutable_metadata())["team"] = "red";
                           (*f.mutable_metadata())["env"] = "prod";
                         }).id();
  CreateWith([](auto& f) { (*f.mutable_metadata())["team"] = "red"; });
  CreateWith([](auto& f) { (*f.mutable_metadata())["team"] = "blue"; });
  v1::ListSessionsRequest filters;
  (*filters.mutable_metadata())["team"] = "red";
  (*filters.mutable_metadata())["env"] = "prod";
  EXPECT_THAT(ListIds(filters), ElementsAre(red_prod));
}

TEST_F(Sessions, ListFiltersByUserId) {
  std::string alice = CreateWith([](auto& f) { f.set_user_id("alice"); }).id();
  CreateWith([](auto& f) { f.set_user_id("bob"); });
  v1::ListSessionsRequest filters;
  filters.set_user_id("alice");
  EXPECT_THAT(ListIds(filters), ElementsAre(alice));
}

TEST_F(Sessions, ListCreatedRangeIncludesItsStartAndExcludesItsEnd) {
  v1::Session first = CreateSession(kTenant);
  v1::Session second = CreateSession(kTenant);
  v1::Session third = CreateSession(kTenant);
  v1::ListSessionsRequest filters;
  *filters.mutable_created_after() = second.create_time();
  *filters.mutable_created_before() = third.create_time();
  EXPECT_THAT(ListIds(filters), ElementsAre(second.id()));
}

TEST_F(Sessions, ListFiltersByExternalId) {
  std::string wanted = CreateWith([](auto& f) { f.set_external_id("ext-1"); }).id();
  CreateWith([](auto& f) { f.set_external_id("ext-2"); });
  CreateSession(kTenant);
  v1::ListSessionsRequest filters;
  filters.set_external_id("ext-1");
  EXPECT_THAT(ListIds(filters), ElementsAre(wanted));
}

// ---- Pagination ----

TEST_F(Sessions, ListPagesNewestFirstByDefault) {
  std::vector<std::string> s = CreateFive();
  v1::ListSessionsRequest filters;
  filters.set_page_size(2);
  EXPECT_THAT(ListPages(filters),
              ElementsAre(ElementsAre(s[4], s[3]), ElementsAre(s[2], s[1]), ElementsAre(s[0])));
}

TEST_F(Sessions, ListPagesOldestFirstWhenAsked) {
  std::vector<std::string> s = CreateFive();
  v1::ListSessionsRequest filters;
  filters.set_page_size(2);
  filters.set_order(v1::SORT_ORDER_OLDEST_FIRST);
  EXPECT_THAT(ListPages(filters),
              ElementsAre(ElementsAre(s[0], s[1]), ElementsAre(s[2], s[3]), ElementsAre(s[4])));
}

TEST_F(Sessions, SessionsCreatedBetweenPagesNeitherRepeatNorSkipRows) {
  std::vector<std::string> s = CreateFive();
  v1::ListSessionsRequest filters;
  filters.set_page_size(2);
  auto first = ListSessions(filters);
  ASSERT_TRUE(first.ok()) << first.status();
  CreateSession(kTenant);
  CreateSession(kTenant);

  filters.set_page_token(first->next_page_token());
  std::vector<std::string> seen;
  for (const v1::Session& session : first->sessions()) seen.push_back(session.id());
  for (const auto& page : ListPages(filters)) seen.insert(seen.end(), page.begin(), page.end());
  EXPECT_THAT(seen, ElementsAre(s[4], s[3], s[2], s[1], s[0]));
}

TEST_F(Sessions, SessionsCreatedBetweenPagesComeLastWhenOldestFirst) {
  std::vector<std::string> s = CreateFive();
  v1::ListSessionsRequest filters;
  filters.set_page_size(2);
  filters.set_order(v1::SORT_ORDER_OLDEST_FIRST);
  auto first = ListSessions(filters);
  ASSERT_TRUE(first.ok()) << first.status();
  std::string late = CreateSession(kTenant).id();

  filters.set_page_token(first->next_page_token());
  std::vector<std::string> seen;
  for (const v1::Session& session : first->sessions()) seen.push_back(session.id());
  for (const auto& page : ListPages(filters)) seen.insert(seen.end(), page.begin(), page.end());
  EXPECT_THAT(seen, ElementsAre(s[0], s[1], s[2], s[3], s[4], late));
}

TEST_F(Sessions, PageTokenReusedWithOtherFiltersIsInvalidArgument) {
  CreateFive();
  v1::ListSessionsRequest filters;
  filters.set_page_size(2);
  auto first = ListSessions(filters);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_FALSE(first->next_page_token().empty());

  filters.set_page_token(first->next_page_token());
  filters.set_user_id("someone-else");
  auto reused = ListSessions(filters);
  EXPECT_EQ(reused.status().code(), absl::StatusCode::kInvalidArgument) << reused.status();
  EXPECT_EQ(Violation(reused.status()).field(), "page_token");
}

TEST_F(Sessions, ListWithAnUnknownStatusOrOrderIsInvalidArgumentNamingIt) {
  v1::ListSessionsRequest filters;
  filters.set_status(static_cast<v1::SessionStatus>(7));
  auto status = ListSessions(filters);
  EXPECT_EQ(status.status().code(), absl::StatusCode::kInvalidArgument) << status.status();
  EXPECT_EQ(Violation(status.status()).field(), "status");
  filters.clear_status();
  filters.set_order(static_cast<v1::SortOrder>(-1));
  auto order = ListSessions(filters);
  EXPECT_EQ(order.status().code(), absl::StatusCode::kInvalidArgument) << order.status();
  EXPECT_EQ(Violation(order.status()).field(), "order");
}

// ---- Update ----

TEST_F(Sessions, UpdateReplacesOnlyTheMaskedFields) {
  v1::Session session = CreateWith([](auto& f) {
    f.set_title("old");
    f.set_user_id("alice");
    f.add_tags("a");
    (*f.mutable_metadata())["k"] = "v";
    f.mutable_agent_config()->set_model("model-1");
    f.mutable_agent_config()->set_system_prompt("be brief");
  });
  v1::Session values;
  values.set_title("new");
  values.set_user_id("ignored: not in the mask");
  values.add_tags("b");
  values.add_tags("c");
  (*values.mutable_metadata())["k2"] = "v2";
  values.mutable_agent_config()->set_model("model-2");
  values.mutable_agent_config()->set_system_prompt("ignored: not in the mask");

  auto updated = Update(session.id(), values, {"title", "tags", "metadata", "agent_config.model"});
  ASSERT_TRUE(updated.ok()) << updated.status();
  const v1::Session& after = updated->session();
  EXPECT_EQ(after.title(), "new");
  EXPECT_THAT(after.tags(), ElementsAre("b", "c"));
  EXPECT_EQ(after.metadata().size(), 1u);
  EXPECT_EQ(after.metadata().at("k2"), "v2");
  EXPECT_EQ(after.agent_config().model(), "model-2");
  EXPECT_EQ(after.agent_config().system_prompt(), "be brief");
  EXPECT_EQ(after.user_id(), "alice");
  EXPECT_EQ(Dump(*GetSession(session.id())), Dump(after));
}

TEST_F(Sessions, EveryUpdateIncrementsTheVersion) {
  v1::Session session = CreateSession(kTenant);
  v1::Session values;
  values.set_title("t");
  auto first = Update(session.id(), values, {"title"});
  auto second = Update(session.id(), values, {"title"});
  ASSERT_TRUE(first.ok() && second.ok()) << first.status() << second.status();
  EXPECT_EQ(first->session().version(), session.version() + 1);
  EXPECT_EQ(second->session().version(), session.version() + 2);
}

TEST_F(Sessions, UpdateWithTheCurrentExpectedVersionApplies) {
  v1::Session session = CreateSession(kTenant);
  v1::Session values;
  values.set_title("checked");
  auto updated = Update(session.id(), values, {"title"}, session.version());
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_EQ(updated->session().title(), "checked");
}

TEST_F(Sessions, UpdateWithAStaleExpectedVersionIsAbortedAndChangesNothing) {
  v1::Session session = CreateSession(kTenant);
  v1::Session values;
  values.set_title("t");
  ASSERT_TRUE(Update(session.id(), values, {"title"}).ok());  // Now at version 2.
  v1::Session before = *GetSession(session.id());

  values.set_title("lost update");
  auto stale = Update(session.id(), values, {"title"}, /*expected_version=*/1);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kAborted) << stale.status();
  EXPECT_EQ(Reason(stale.status()), "VERSION_MISMATCH");
  EXPECT_EQ(ReasonMetadata(stale.status(), "version"), "2");
  EXPECT_EQ(Dump(*GetSession(session.id())), Dump(before));
}

TEST_F(Sessions, UpdateOfAFieldOutsideTheAllowedPathsIsInvalidArgument) {
  v1::Session session = CreateSession(kTenant);
  v1::Session values;
  values.set_status(v1::SESSION_STATUS_CLOSED);
  auto updated = Update(session.id(), values, {"status"});
  EXPECT_EQ(updated.status().code(), absl::StatusCode::kInvalidArgument) << updated.status();
  EXPECT_EQ(Violation(updated.status()).field(), "update_mask.paths[0]");
  EXPECT_EQ(Dump(*GetSession(session.id())), Dump(session));
}

TEST_F(Sessions, UpdateOfAnUnknownAgentConfigFieldIsInvalidArgument) {
  v1::Session session = CreateSession(kTenant);
  auto updated = Update(session.id(), v1::Session(), {"title", "agent_config.no_such_field"});
  EXPECT_EQ(updated.status().code(), absl::StatusCode::kInvalidArgument) << updated.status();
  EXPECT_EQ(Violation(updated.status()).field(), "update_mask.paths[1]");
}

// ---- Close ----

TEST_F(Sessions, CloseIsIdempotent) {
  v1::Session session = CreateSession(kTenant);
  auto first = CloseSession(session.id());
  auto second = CloseSession(session.id());
  ASSERT_TRUE(first.ok() && second.ok()) << first.status() << second.status();
  EXPECT_TRUE(first->changed());
  EXPECT_EQ(first->session().status(), v1::SESSION_STATUS_CLOSED);
  EXPECT_TRUE(first->session().has_close_time());
  EXPECT_FALSE(second->changed());
  EXPECT_EQ(Dump(second->session()), Dump(first->session()));
}

TEST_F(Sessions, CloseCancelsQueuedTurns) {
  v1::Session session = CreateSession(kTenant);
  std::string first = Enqueue(session.id(), "one")->turn().id();
  std::string second = Enqueue(session.id(), "two")->turn().id();

  auto closed = CloseSession(session.id());
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_THAT(closed->cancelled_turn_ids(), UnorderedElementsAre(first, second));
  EXPECT_THAT(closed->running_turn_id(), IsEmpty());
  for (const std::string& id : {first, second}) {
    EXPECT_EQ(GetTurn(id)->status(), v1::TURN_STATUS_CANCELLED);
    EXPECT_EQ(GetTurn(id)->finish_reason(), v1::FINISH_REASON_CANCELLED);
  }
}

TEST_F(Sessions, CloseFlagsTheRunningTurnCancelRequested) {
  v1::Session session = CreateSession(kTenant);
  std::string running = Enqueue(session.id(), "one")->turn().id();
  std::string queued = Enqueue(session.id(), "two")->turn().id();
  ASSERT_EQ(Claim()->turn().id(), running);

  auto closed = CloseSession(session.id());
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(closed->running_turn_id(), running);
  EXPECT_THAT(closed->cancelled_turn_ids(), ElementsAre(queued));
  auto turn = GetTurn(running);
  EXPECT_EQ(turn->status(), v1::TURN_STATUS_RUNNING);
  EXPECT_TRUE(turn->cancel_requested());
}

// ---- Delete ----

TEST_F(Sessions, DeleteRemovesMessagesTurnsEventsAndIdempotencyKeys) {
  v1::Session session = CreateSession(kTenant);
  ASSERT_TRUE(Enqueue(session.id(), "hello", "key-1").ok());
  ASSERT_TRUE(AppendEvents(session.id(), {TextEvent(session.id(), 1, "hi")}).ok());

  auto deleted = DeleteSession(session.id());
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_TRUE(deleted->deleted());
  EXPECT_EQ(GetSession(session.id()).status().code(), absl::StatusCode::kNotFound);

  // A new session under the same id starts empty: nothing of the old one survived.
  store_pb::CreateSessionRequest again;
  again.set_tenant_id(kTenant);
  again.set_session_id(session.id());
  ASSERT_TRUE(Call(&Stub::CreateSession, again).ok());
  EXPECT_THAT(AllMessages(session.id()), IsEmpty());
  EXPECT_THAT(AllTurns(session.id()), IsEmpty());
  EXPECT_EQ(ReadEvents(session.id())->events_size(), 0);
  EXPECT_FALSE(Enqueue(session.id(), "hello", "key-1")->duplicate());
}

TEST_F(Sessions, DeleteIsIdempotent) {
  v1::Session session = CreateSession(kTenant);
  ASSERT_TRUE(DeleteSession(session.id()).ok());
  auto again = DeleteSession(session.id());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->deleted());
}

TEST_F(Sessions, DeleteWithARunningTurnIsRefusedAsBusy) {
  v1::Session session = CreateSession(kTenant);
  ASSERT_TRUE(Enqueue(session.id(), "hello").ok());
  ASSERT_TRUE(Claim()->has_turn());

  auto deleted = DeleteSession(session.id());
  EXPECT_EQ(deleted.status().code(), absl::StatusCode::kFailedPrecondition) << deleted.status();
  EXPECT_EQ(Reason(deleted.status()), "SESSION_BUSY");
  EXPECT_TRUE(GetSession(session.id()).ok());
}

// ---- Limits ----

TEST_F(Sessions, MetadataOver16KiBIsRejectedAndNothingIsCreated) {
  CreateTenant(kTenant);
  v1::CreateSessionRequest fields;
  (*fields.mutable_metadata())["k"] = std::string(16 * 1024, 'x');  // 16 KiB + 1 byte.
  auto created = CreateRaw(fields);
  EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument) << created.status();
  EXPECT_EQ(Violation(created.status()).field(), "metadata");
  EXPECT_EQ(Violation(created.status()).limit(), "16384 bytes");
  EXPECT_THAT(ListIds({}), IsEmpty());
}

TEST_F(Sessions, ThirtyThreeTagsAreRejectedAndNothingIsCreated) {
  CreateTenant(kTenant);
  v1::CreateSessionRequest fields;
  for (int i = 0; i < 33; ++i) fields.add_tags("tag-" + std::to_string(i));
  auto created = CreateRaw(fields);
  EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument) << created.status();
  EXPECT_EQ(Violation(created.status()).field(), "tags");
  EXPECT_EQ(Violation(created.status()).limit(), "32");
  EXPECT_THAT(ListIds({}), IsEmpty());
}

}  // namespace
}  // namespace parley::store::testing
