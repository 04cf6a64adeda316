// API keys in the store: the secret is returned once and only its hash is kept, a
// secret resolves to its key and tenant until the key is revoked, scopes are checked.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/store/store_test_helpers.h"

namespace parley::store::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

class ApiKeys : public StoreTest {
 protected:
  void SetUp() override {
    StoreTest::SetUp();
    if (!HasFatalFailure()) CreateTenant(kTenant);
  }

  absl::StatusOr<store_pb::ResolveApiKeyResponse> Resolve(const std::string& secret) {
    store_pb::ResolveApiKeyRequest request;
    request.set_secret(secret);
    return Call(&Stub::ResolveApiKey, request);
  }

  absl::StatusOr<store_pb::RevokeApiKeyResponse> Revoke(const std::string& key_id) {
    store_pb::RevokeApiKeyRequest request;
    request.set_tenant_id(kTenant);
    request.set_api_key_id(key_id);
    return Call(&Stub::RevokeApiKey, request);
  }

  std::vector<std::string> ListedIds(bool include_revoked = false) {
    store_pb::ListApiKeysRequest request;
    request.set_tenant_id(kTenant);
    request.set_include_revoked(include_revoked);
    auto listed = Call(&Stub::ListApiKeys, request);
    EXPECT_TRUE(listed.ok()) << listed.status();
    std::vector<std::string> ids;
    if (listed.ok()) {
      for (const v1::ApiKey& key : listed->api_keys()) ids.push_back(key.id());
    }
    return ids;
  }
};

TEST_F(ApiKeys, CreateReturnsASecretThatTheListingNeverShows) {
  auto created = CreateApiKey({"sessions:read"});
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_THAT(created->secret(), StartsWith("pk_" + created->api_key().prefix()));
  EXPECT_EQ(created->api_key().tenant_id(), kTenant);

  store_pb::ListApiKeysRequest request;
  request.set_tenant_id(kTenant);
  auto listed = Call(&Stub::ListApiKeys, request);
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->api_keys_size(), 1);
  EXPECT_EQ(listed->api_keys(0).id(), created->api_key().id());
  EXPECT_THAT(listed->SerializeAsString(), Not(HasSubstr(created->secret())));
}

TEST_F(ApiKeys, ResolveReturnsTheKeysTenantAndScopes) {
  auto created = CreateApiKey({"sessions:read", "sessions:write"});
  ASSERT_TRUE(created.ok()) << created.status();

  auto resolved = Resolve(created->secret());
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->api_key().id(), created->api_key().id());
  EXPECT_EQ(resolved->api_key().tenant_id(), kTenant);
  EXPECT_THAT(resolved->api_key().scopes(), ElementsAre("sessions:read", "sessions:write"));
  EXPECT_EQ(resolved->tenant().id(), kTenant);
}

TEST_F(ApiKeys, AnUnknownSecretDoesNotResolve) {
  auto created = CreateApiKey({"*"});
  ASSERT_TRUE(created.ok()) << created.status();
  std::string forged = created->secret();
  forged.back() = forged.back() == 'a' ? 'b' : 'a';
  EXPECT_EQ(Resolve(forged).status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(ApiKeys, ARevokedKeyNoLongerResolves) {
  auto created = CreateApiKey({"*"});
  ASSERT_TRUE(created.ok()) << created.status();
  auto revoked = Revoke(created->api_key().id());
  ASSERT_TRUE(revoked.ok()) << revoked.status();
  EXPECT_TRUE(revoked->api_key().has_revoke_time());

  EXPECT_EQ(Resolve(created->secret()).status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(ApiKeys, RevokeIsIdempotentAndKeepsTheFirstRevokeTime) {
  auto created = CreateApiKey({"*"});
  ASSERT_TRUE(created.ok()) << created.status();
  auto first = Revoke(created->api_key().id());
  auto second = Revoke(created->api_key().id());
  ASSERT_TRUE(first.ok() && second.ok()) << first.status() << second.status();
  EXPECT_EQ(Dump(second->api_key()), Dump(first->api_key()));
}

TEST_F(ApiKeys, ListingLeavesRevokedKeysOutUnlessAsked) {
  std::string kept = CreateApiKey({"*"})->api_key().id();
  std::string revoked = CreateApiKey({"*"})->api_key().id();
  ASSERT_TRUE(Revoke(revoked).ok());
  EXPECT_THAT(ListedIds(), ElementsAre(kept));
  EXPECT_EQ(ListedIds(/*include_revoked=*/true).size(), 2u);
}

TEST_F(ApiKeys, ListingShowsTheNewestKeyFirst) {
  std::string older = CreateApiKey({"*"}, "older")->api_key().id();
  std::string newer = CreateApiKey({"*"}, "newer")->api_key().id();
  EXPECT_THAT(ListedIds(), ElementsAre(newer, older));
}

TEST_F(ApiKeys, AnUnknownScopeIsInvalidArgumentAndCreatesNothing) {
  auto created = CreateApiKey({"sessions:read", "root"});
  EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument) << created.status();
  EXPECT_EQ(Violation(created.status()).field(), "scopes[1]");
  EXPECT_THAT(ListedIds(/*include_revoked=*/true), IsEmpty());
}

TEST_F(ApiKeys, AMissingOrOverlongNameIsInvalidArgumentAndCreatesNothing) {
  for (const std::string& name : {std::string(), std::string(129, 'n')}) {
    auto created = CreateApiKey({"sessions:read"}, name);
    EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument) << created.status();
    EXPECT_EQ(Violation(created.status()).field(), "name");
  }
  EXPECT_THAT(ListedIds(/*include_revoked=*/true), IsEmpty());
  EXPECT_TRUE(CreateApiKey({"sessions:read"}, std::string(128, 'n')).ok());
}

TEST_F(ApiKeys, CreateForAnUnknownTenantIsNotFound) {
  auto created = CreateApiKey({"*"}, "ci", "no_such_tenant");
  EXPECT_EQ(created.status().code(), absl::StatusCode::kNotFound) << created.status();
}

// An operator disables a tenant: its keys stop resolving, exactly like unknown ones, and
// work again once it is enabled; disabling twice keeps the first time.
TEST_F(ApiKeys, KeysOfADisabledTenantDoNotResolveUntilItIsEnabledAgain) {
  auto created = CreateApiKey({"sessions:read"});
  ASSERT_TRUE(created.ok()) << created.status();
  store_pb::SetTenantDisabledRequest disable;
  disable.set_tenant_id(kTenant);
  disable.set_disabled(true);
  auto disabled = Call(&Stub::SetTenantDisabled, disable);
  ASSERT_TRUE(disabled.ok()) << disabled.status();
  ASSERT_TRUE(disabled->tenant().has_disable_time());

  auto refused = Resolve(created->secret());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated) << refused.status();
  EXPECT_EQ(refused.status().message(), Resolve("pk_unknown").status().message());
  auto again = Call(&Stub::SetTenantDisabled, disable);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(Dump(again->tenant().disable_time()), Dump(disabled->tenant().disable_time()));

  disable.set_disabled(false);
  auto enabled = Call(&Stub::SetTenantDisabled, disable);
  ASSERT_TRUE(enabled.ok()) << enabled.status();
  EXPECT_FALSE(enabled->tenant().has_disable_time());
  EXPECT_TRUE(Resolve(created->secret()).ok());

  disable.set_tenant_id("no_such_tenant");
  EXPECT_EQ(Call(&Stub::SetTenantDisabled, disable).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ApiKeys, ListTenantsPagesInIdOrderAndHidesDisabledOnesUnlessAsked) {
  for (const char* id : {"t_c", "t_a", "t_b"}) CreateTenant(id);
  store_pb::SetTenantDisabledRequest disable;
  disable.set_tenant_id("t_b");
  disable.set_disabled(true);
  ASSERT_TRUE(Call(&Stub::SetTenantDisabled, disable).ok());

  auto listed_ids = [&](bool include_disabled) {
    std::vector<std::string> ids;
    store_pb::ListTenantsRequest request;
    request.set_page_size(1);
    request.set_include_disabled(include_disabled);
    for (int page = 0; page < 10; ++page) {
      auto listed = Call(&Stub::ListTenants, request);
      EXPECT_TRUE(listed.ok()) << listed.status();
      if (!listed.ok()) break;
      for (const store_pb::Tenant& t : listed->tenants()) ids.push_back(t.id());
      if (listed->next_page_token().empty()) break;
      request.set_page_token(listed->next_page_token());
    }
    return ids;
  };
  EXPECT_THAT(listed_ids(false), ElementsAre("t_a", "t_c", kTenant));
  EXPECT_THAT(listed_ids(true), ElementsAre("t_a", "t_b", "t_c", kTenant));

  store_pb::ListTenantsRequest bad;
  bad.set_page_token("garbage");
  EXPECT_EQ(Call(&Stub::ListTenants, bad).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace parley::store::testing
