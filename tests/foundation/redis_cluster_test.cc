// Redis Cluster support (common/redis_cluster.h): slots, routing and redirections, first
// as pure functions, then on a real six-node cluster of the test's own — slots as the
// server computes them, a pipeline spread over the primaries, MOVED after a slot
// migration, ASK during one, a primary killed, and a cross-slot script refused.
#include "common/redis_cluster.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/harness/services.h"

namespace parley {
namespace {

using ::parley::testing::PrivateRedisCluster;
using ::testing::HasSubstr;

TEST(RedisKeySlot, MatchesTheClusterSpecification) {
  EXPECT_EQ(RedisKeySlot("123456789"), 0x31C3);  // The CRC16/XMODEM check value.
  EXPECT_EQ(RedisKeySlot("foo"), 12182);
  EXPECT_EQ(RedisKeySlot(""), 0);
}

TEST(RedisKeySlot, HashesOnlyTheFirstNonEmptyTag) {
  // Expected values computed independently (CRC16/XMODEM of the hashed part, mod 16384).
  EXPECT_EQ(RedisKeySlot("user1000"), 3443);
  EXPECT_EQ(RedisKeySlot("{user1000}.following"), 3443);
  EXPECT_EQ(RedisKeySlot("{user1000}.followers"), 3443);
  EXPECT_EQ(RedisKeySlot("foo{bar}{zap}"), 5061);  // "bar"
  EXPECT_EQ(RedisKeySlot("foo{{bar}}zap"), 4015);  // "{bar"
  // An empty first tag, or none closed, means no tag: the whole key is hashed.
  EXPECT_EQ(RedisKeySlot("foo{}{bar}"), 8363);
  EXPECT_EQ(RedisKeySlot("no}tag{"), 7915);
}

TEST(RedisKeySlot, PutsEveryKeyOfASessionOnOneSlot) {
  const RedisKeys keys("t1:");
  const uint16_t slot = RedisKeySlot(keys.EventStream("ses_1"));
  EXPECT_EQ(RedisKeySlot(keys.EventChannel("ses_1")), slot);
  EXPECT_EQ(RedisKeySlot(keys.Lease("ses_1")), slot);
  EXPECT_EQ(RedisKeySlot(keys.PersistedSeq("ses_1")), slot);
  EXPECT_EQ(RedisKeySlot(keys.PersisterLock("ses_1")), slot);
  EXPECT_EQ(RedisKeySlot(keys.TenantRate("ten")), RedisKeySlot(keys.KeyRate("ten", "key")));
}

// The key a command is routed by, "<any>" or "<every primary>" for the others.
std::string RoutedBy(const std::vector<std::string>& args) {
  const RedisRoute route = RouteOfCommand(args);
  switch (route.kind) {
    case RedisRoute::Kind::kKey:
      return std::string(route.key);
    case RedisRoute::Kind::kAnyNode:
      return "<any>";
    case RedisRoute::Kind::kEveryPrimary:
      return "<every primary>";
    case RedisRoute::Kind::kLastWrite:
      return "<last write>";
  }
  return "";
}

TEST(RouteOfCommand, FindsTheKeyOfEachKindOfCommand) {
  EXPECT_EQ(RoutedBy({"GET", "k"}), "k");
  EXPECT_EQ(RoutedBy({"xrange", "s", "-", "+"}), "s");
  EXPECT_EQ(RoutedBy({"EVALSHA", "abc", "2", "k1", "k2", "arg"}), "k1");
  EXPECT_EQ(RoutedBy({"EVAL", "return 1", "0"}), "<any>");
  EXPECT_EQ(RoutedBy({"XREAD", "COUNT", "5", "STREAMS", "s", "0"}), "s");
  EXPECT_EQ(RoutedBy({"SPUBLISH", "{s:1}", "x"}), "{s:1}");
  EXPECT_EQ(RoutedBy({"PUBLISH", "wake", "x"}), "<any>");
  EXPECT_EQ(RoutedBy({"SUBSCRIBE", "wake"}), "<any>");
  EXPECT_EQ(RoutedBy({"PING"}), "<any>");
  EXPECT_EQ(RoutedBy({"SCRIPT", "LOAD", "return 1"}), "<every primary>");
  EXPECT_EQ(RoutedBy({"flushall"}), "<every primary>");
  EXPECT_EQ(RoutedBy({"WAIT", "1", "100"}), "<last write>");
}

TEST(ParseRedirect, ReadsMovedAndAsk) {
  auto moved = ParseRedirect(absl::InternalError("redis: MOVED 3999 127.0.0.1:6381"));
  ASSERT_TRUE(moved.has_value());
  EXPECT_FALSE(moved->ask);
  EXPECT_EQ(moved->slot, 3999);
  EXPECT_EQ(moved->node, (RedisNodeAddress{"127.0.0.1", 6381}));
  auto ask = ParseRedirect(absl::InternalError("redis: ASK 12 10.0.0.2:7000"));
  ASSERT_TRUE(ask.has_value());
  EXPECT_TRUE(ask->ask);
  EXPECT_EQ(ask->node, (RedisNodeAddress{"10.0.0.2", 7000}));
  auto unknown_host = ParseRedirect(absl::InternalError("redis: MOVED 1 :7001"));
  ASSERT_TRUE(unknown_host.has_value());
  EXPECT_EQ(unknown_host->node.host, "");
  EXPECT_FALSE(ParseRedirect(absl::InternalError("redis: ERR unknown command")).has_value());
  EXPECT_FALSE(ParseRedirect(absl::InternalError("redis: MOVED 99999 a:1")).has_value());
  EXPECT_FALSE(ParseRedirect(absl::InternalError("redis: MOVED x a:1")).has_value());
}

TEST(ParseRedisUrl, NamesAClusterBySeveralNodes) {
  auto cluster = ParseRedisUrl("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2,10.0.0.3:7002");
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  EXPECT_TRUE(cluster->cluster());
  EXPECT_EQ(cluster->password, "pw");
  EXPECT_THAT(cluster->cluster_seeds, ::testing::ElementsAre(RedisNodeAddress{"10.0.0.1", 7000},
                                                             RedisNodeAddress{"10.0.0.2", 6379},
                                                             RedisNodeAddress{"10.0.0.3", 7002}));
  EXPECT_EQ(cluster->host, "10.0.0.1");
  EXPECT_EQ(cluster->port, 7000);
  EXPECT_FALSE(ParseRedisUrl("redis://127.0.0.1:6379")->cluster());
}

TEST(ParseRedisUrl, RefusesBadClusterUrls) {
  for (const char* url : {"redis+cluster://a:7000/2", "redis+cluster://a:7000,,b:7001",
                          "redis+cluster://a:7000,b:0", "redis+cluster://", "rediss://a"}) {
    EXPECT_EQ(ParseRedisUrl(url).status().code(), absl::StatusCode::kInvalidArgument) << url;
  }
  EXPECT_THAT(ParseRedisUrl("redis+cluster://a:7000/1").status().message(),
              HasSubstr("only database 0"));
}

// The rest runs on a real cluster of the test's own.
class RedisClusterTest : public ::testing::Test {
 public:
  void SetUp() override {
    auto cluster = PrivateRedisCluster::Start();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *std::move(cluster);
    auto connection = RedisConnection::Connect(cluster_->endpoint(), absl::Seconds(5));
    ASSERT_TRUE(connection.ok()) << connection.status();
    redis_ = *std::move(connection);
  }

  std::unique_ptr<RedisServerConnection> NodeConnection(const RedisNodeAddress& node) {
    auto connection =
        RedisServerConnection::Connect(cluster_->endpoint().ForNode(node), absl::Seconds(2));
    EXPECT_TRUE(connection.ok()) << connection.status();
    return connection.ok() ? *std::move(connection) : nullptr;
  }

  RedisSlotMap Map() {
    auto map = FetchRedisSlotMap(cluster_->endpoint(), cluster_->endpoint().cluster_seeds,
                                 absl::Seconds(2));
    EXPECT_TRUE(map.ok()) << map.status();
    return *std::move(map);
  }

  std::string NodeId(const RedisNodeAddress& node) {
    auto id = NodeConnection(node)->Command({"CLUSTER", "MYID"});
    EXPECT_TRUE(id.ok()) << id.status();
    return ReplyString(id->get());
  }

  std::unique_ptr<PrivateRedisCluster> cluster_;
  std::unique_ptr<RedisConnection> redis_;  // Routed: the connection under test.
};

TEST_F(RedisClusterTest, SlotsAgreeWithTheServer) {
  EXPECT_TRUE(redis_->cluster());
  absl::BitGen bitgen;
  for (int i = 0; i < 300; ++i) {
    std::string key = absl::StrCat("k", absl::Uniform<uint64_t>(bitgen));
    if (i % 3 == 0) key = absl::StrCat("p:{s:ses_", i, "}:ev");
    if (i % 7 == 0) key = absl::StrCat("{}", key, "{x", i, "}");
    auto slot = redis_->Command({"CLUSTER", "KEYSLOT", key});
    ASSERT_TRUE(slot.ok()) << slot.status();
    EXPECT_EQ(RedisKeySlot(key), (*slot)->integer) << key;
  }
}

TEST_F(RedisClusterTest, APipelineSpreadOverEveryPrimaryKeepsItsOrder) {
  std::vector<std::vector<std::string>> sets, gets;
  for (int i = 0; i < 200; ++i) {
    sets.push_back({"SET", absl::StrCat("key", i), absl::StrCat("value", i)});
    gets.push_back({"GET", absl::StrCat("key", i)});
  }
  ASSERT_TRUE(redis_->Pipeline(sets).ok());
  auto values = redis_->Pipeline(gets);
  ASSERT_TRUE(values.ok()) << values.status();
  for (int i = 0; i < 200; ++i)
    EXPECT_EQ(ReplyString((*values)[i].get()), absl::StrCat("value", i));

  // Each key really lives on the primary its slot names, and the keys span them all.
  const RedisSlotMap map = Map();
  ASSERT_EQ(map.primaries().size(), 3u);
  absl::flat_hash_map<RedisNodeAddress, int> per_node;
  for (int i = 0; i < 200; ++i) {
    const std::string key = absl::StrCat("key", i);
    const RedisNodeAddress primary = *map.PrimaryOf(RedisKeySlot(key));
    ++per_node[primary];
    if (i % 20 != 0) continue;
    auto direct = NodeConnection(primary)->Command({"GET", key});
    ASSERT_TRUE(direct.ok()) << direct.status();  // No MOVED: it is the owner.
    EXPECT_EQ(ReplyString(direct->get()), absl::StrCat("value", i));
  }
  EXPECT_EQ(per_node.size(), 3u);
}

TEST_F(RedisClusterTest, EachCommandOfAPipelineKeepsItsOwnErrors) {
  auto replies =
      redis_->PipelineEach({{"SET", "a", "1"}, {"HGET", "a", "f"}, {"GET", "b"}, {"INCR", "a"}});
  ASSERT_TRUE(replies.ok()) << replies.status();
  EXPECT_TRUE((*replies)[0].ok());
  EXPECT_THAT((*replies)[1].status().message(), HasSubstr("WRONGTYPE"));
  EXPECT_TRUE((*replies)[2].ok());
  ASSERT_TRUE((*replies)[3].ok());
  EXPECT_EQ((*(*replies)[3])->integer, 2);
}

TEST_F(RedisClusterTest, AScriptWithKeysOnTwoSlotsIsRefusedAndWritesNothing) {
  ASSERT_NE(RedisKeySlot("left"), RedisKeySlot("right"));
  auto refused =
      redis_->Command({"EVAL", "redis.call('SET', KEYS[1], 1) return 1", "2", "left", "right"});
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("CROSSSLOT"));
  auto left = redis_->Command({"EXISTS", "left"});
  ASSERT_TRUE(left.ok());
  EXPECT_EQ((*left)->integer, 0);
  // On one slot (a hash tag), the same script runs.
  EXPECT_TRUE(
      redis_
          ->Command({"EVAL", "redis.call('SET', KEYS[1], 1) return 1", "2", "{t}left", "{t}right"})
          .ok());
}

// Moves `slot` with its keys from its primary to another primary, as redis-cli
// --cluster reshard does. `finish` false leaves it half way: MIGRATING on the source,
// IMPORTING on the target, `keys` already moved.
void MigrateSlot(RedisClusterTest& test, uint16_t slot, const std::vector<std::string>& keys,
                 bool finish);

TEST_F(RedisClusterTest, AMovedSlotIsFollowedToItsNewOwner) {
  const std::string key = "moving-key";
  ASSERT_TRUE(redis_->Command({"SET", key, "v1"}).ok());  // The map is cached now.
  MigrateSlot(*this, RedisKeySlot(key), {key}, /*finish=*/true);
  auto value = redis_->Command({"GET", key});  // MOVED, a refreshed map, then the value.
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(ReplyString(value->get()), "v1");
  auto set = redis_->Command({"SET", key, "v2"});
  ASSERT_TRUE(set.ok()) << set.status();
  const RedisNodeAddress owner = *Map().PrimaryOf(RedisKeySlot(key));
  auto direct = NodeConnection(owner)->Command({"GET", key});
  ASSERT_TRUE(direct.ok()) << direct.status();
  EXPECT_EQ(ReplyString(direct->get()), "v2");
}

TEST_F(RedisClusterTest, AKeyOfASlotBeingMigratedIsFollowedWithAsk) {
  const std::string moved = "{mig}a";
  const std::string stayed = "{mig}b";
  ASSERT_TRUE(redis_->Pipeline({{"SET", moved, "1"}, {"SET", stayed, "2"}}).ok());
  MigrateSlot(*this, RedisKeySlot(moved), {moved}, /*finish=*/false);
  // The source still has `stayed` and answers ASK for `moved`, which the target serves
  // only after ASKING.
  auto values = redis_->Pipeline({{"GET", moved}, {"GET", stayed}});
  ASSERT_TRUE(values.ok()) << values.status();
  EXPECT_EQ(ReplyString((*values)[0].get()), "1");
  EXPECT_EQ(ReplyString((*values)[1].get()), "2");
}

// WAIT counts the replicas that acknowledged this client's writes *on one node*: sent
// to any other node it answers at once and proves nothing. Each primary's own command
// statistics show where it ran.
TEST_F(RedisClusterTest, WaitRunsOnTheNodeThatTookThePreviousWrite) {
  const RedisSlotMap map = Map();
  ASSERT_EQ(map.primaries().size(), 3u);
  for (const RedisNodeAddress& primary : map.primaries()) {
    ASSERT_TRUE(NodeConnection(primary)->Command({"CONFIG", "RESETSTAT"}).ok());
  }
  for (int i = 0; i < 3; ++i) {
    // A key owned by the i-th primary, written and waited on in one pipeline.
    std::string key;
    for (int n = 0; key.empty(); ++n) {
      std::string candidate = absl::StrCat("wait", n);
      if (*map.PrimaryOf(RedisKeySlot(candidate)) == map.primaries()[i]) key = candidate;
    }
    auto replies = redis_->PipelineEach({{"SET", key, "v"}, {"WAIT", "1", "5000"}});
    ASSERT_TRUE(replies.ok()) << replies.status();
    ASSERT_TRUE((*replies)[1].ok()) << (*replies)[1].status();
    EXPECT_EQ((*replies)[1]->get()->integer, 1) << "the write reached its replica";
  }
  for (const RedisNodeAddress& primary : map.primaries()) {
    auto stats = NodeConnection(primary)->Command({"INFO", "commandstats"});
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_THAT(ReplyString(stats->get()), HasSubstr("cmdstat_wait:calls=1,"))
        << "primary " << primary.port;
  }
}

TEST_F(RedisClusterTest, APrimaryKilledIsReplacedByItsReplicaAndCommandsGoOn) {
  const std::string key = "{survivor}k";
  ASSERT_TRUE(redis_->Command({"SET", key, "before"}).ok());
  // On the replica too, or the promoted replica may never have seen it (asynchronous
  // replication): WAIT goes to the node that took the SET.
  auto replicated = redis_->Command({"WAIT", "1", "5000"});
  ASSERT_TRUE(replicated.ok()) << replicated.status();
  ASSERT_EQ(replicated->get()->integer, 1);
  auto killed = cluster_->KillPrimaryOf(RedisKeySlot(key), absl::Seconds(30));
  ASSERT_TRUE(killed.ok()) << killed.status();
  // The same connection reconnects to the promoted replica by itself.
  auto value = redis_->Command({"GET", key});
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(ReplyString(value->get()), "before");
  EXPECT_TRUE(redis_->Command({"SET", key, "after"}).ok());
  EXPECT_NE(Map().PrimaryOf(RedisKeySlot(key))->port, *killed);
}

TEST_F(RedisClusterTest, AScriptLoadedOnceRunsOnEveryPrimary) {
  auto sha = redis_->Command({"SCRIPT", "LOAD", "return KEYS[1]"});
  ASSERT_TRUE(sha.ok()) << sha.status();
  for (int i = 0; i < 30; ++i) {  // Keys on every primary: no NOSCRIPT anywhere.
    const std::string key = absl::StrCat("script", i);
    auto reply = redis_->Command({"EVALSHA", ReplyString(sha->get()), "1", key});
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(ReplyString(reply->get()), key);
  }
}

void MigrateSlot(RedisClusterTest& test, uint16_t slot, const std::vector<std::string>& keys,
                 bool finish) {
  const RedisSlotMap map = test.Map();
  const RedisNodeAddress source = *map.PrimaryOf(slot);
  RedisNodeAddress target;
  for (const RedisNodeAddress& primary : map.primaries()) {
    if (!(primary == source)) target = primary;
  }
  const std::string source_id = test.NodeId(source);
  const std::string target_id = test.NodeId(target);
  auto on_source = test.NodeConnection(source);
  auto on_target = test.NodeConnection(target);
  const std::string slot_text = absl::StrCat(slot);
  ASSERT_TRUE(on_target->Command({"CLUSTER", "SETSLOT", slot_text, "IMPORTING", source_id}).ok());
  ASSERT_TRUE(on_source->Command({"CLUSTER", "SETSLOT", slot_text, "MIGRATING", target_id}).ok());
  std::vector<std::string> migrate = {"MIGRATE", target.host, absl::StrCat(target.port), "", "0",
                                      "5000",    "KEYS"};
  migrate.insert(migrate.end(), keys.begin(), keys.end());
  auto migrated = on_source->Command(migrate);
  ASSERT_TRUE(migrated.ok()) << migrated.status();
  if (!finish) return;
  for (const RedisNodeAddress& primary : map.primaries()) {
    ASSERT_TRUE(test.NodeConnection(primary)
                    ->Command({"CLUSTER", "SETSLOT", slot_text, "NODE", target_id})
                    .ok());
  }
}

}  // namespace
}  // namespace parley
