#include "common/redis.h"

#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/redis_worker_pool.h"
#include "tests/harness/services.h"

namespace parley {
namespace {

TEST(RedisUrl, ParsesEveryPart) {
  auto endpoint = ParseRedisUrl("redis://:s3cret@cache.internal:6380/2");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  EXPECT_EQ(endpoint->host, "cache.internal");
  EXPECT_EQ(endpoint->port, 6380);
  EXPECT_EQ(endpoint->db, 2);
  EXPECT_EQ(endpoint->password, "s3cret");
  auto plain = ParseRedisUrl("redis://127.0.0.1");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->port, 6379);
  EXPECT_EQ(plain->db, 0);
}

TEST(RedisUrl, RejectsMalformedUrls) {
  for (const char* url : {"http://x:1", "redis://", "redis://h:0", "redis://h:70000",
                          "redis://h:1/x", "redis://h:port"}) {
    EXPECT_EQ(ParseRedisUrl(url).status().code(), absl::StatusCode::kInvalidArgument) << url;
  }
}

TEST(RedisKeys, KeepASessionOnOneClusterSlot) {
  RedisKeys keys("p:");
  EXPECT_EQ(keys.EventStream("ses_1"), "p:{s:ses_1}:ev");
  EXPECT_EQ(keys.EventChannel("ses_1"), "p:{s:ses_1}");
  EXPECT_EQ(keys.Lease("ses_1"), "p:{s:ses_1}:lease");
}

TEST(RedisConnection, RunsBinarySafeCommandsOnTheRealServer) {
  auto redis = testing::TestRedis::Create();
  ASSERT_TRUE(redis.ok()) << redis.status();
  std::string key = (*redis)->keys().prefix() + "bin";
  std::string value("a\0b\r\nc", 6);
  ASSERT_TRUE((*redis)->connection().Command({"SET", key, value}).ok());
  auto reply = (*redis)->connection().Command({"GET", key});
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(std::string((*reply)->str, (*reply)->len), value);
}

TEST(RedisConnection, ServerErrorsBecomeStatuses) {
  auto redis = testing::TestRedis::Create();
  ASSERT_TRUE(redis.ok()) << redis.status();
  auto reply = (*redis)->connection().Command({"NOSUCHCOMMAND"});
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kInternal);
}

TEST(RedisConnection, UnreachableServerIsUnavailable) {
  RedisEndpoint endpoint{.host = "127.0.0.1", .port = 1};
  auto connection = RedisConnection::Connect(endpoint, absl::Seconds(1));
  EXPECT_EQ(connection.status().code(), absl::StatusCode::kUnavailable);
}

// Results of commands run through a RedisWorkerPool, in the order they arrived.
class Collected {
 public:
  RedisWorkerPool::Done Add(std::string name) {
    return [this, name = std::move(name)](absl::StatusOr<RedisReply> reply) {
      absl::MutexLock lock(&mu_);
      results_.emplace_back(name,
                            reply.ok() ? ReplyString(reply->get()) : reply.status().ToString(),
                            reply.status().code());
    };
  }
  // Waits (bounded) until `count` results are in; all of them.
  std::vector<std::tuple<std::string, std::string, absl::StatusCode>> Await(size_t count) {
    absl::MutexLock lock(&mu_);
    auto enough = [&] {
      mu_.AssertHeld();
      return results_.size() >= count;
    };
    mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(30));
    return results_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::tuple<std::string, std::string, absl::StatusCode>> results_ ABSL_GUARDED_BY(mu_);
};

TEST(RedisWorkerPool, EachPipelinedCommandGetsItsOwnReplyOrError) {
  auto redis = testing::TestRedis::Create();
  ASSERT_TRUE(redis.ok()) << redis.status();
  const std::string key = (*redis)->keys().prefix() + "pool";
  Collected collected;
  {
    // One worker, so the replies come back in the order the commands were queued.
    RedisWorkerPool pool({.redis = (*redis)->endpoint(), .workers = 1, .max_batch = 64});
    ASSERT_TRUE(pool.Submit({"SET", key, "v1"}, collected.Add("set")));
    ASSERT_TRUE(pool.Submit({"NOSUCHCOMMAND"}, collected.Add("bad")));
    ASSERT_TRUE(pool.Submit({"GET", key}, collected.Add("get")));
    for (int i = 0; i < 200; ++i) {
      ASSERT_TRUE(pool.Submit({"INCR", key + ":n"}, collected.Add("incr")));
    }
  }  // Runs everything queued, then joins.
  auto results = collected.Await(203);
  ASSERT_EQ(results.size(), 203u);
  EXPECT_EQ(results[0], std::make_tuple("set", "OK", absl::StatusCode::kOk));
  EXPECT_EQ(std::get<0>(results[1]), "bad");
  EXPECT_EQ(std::get<2>(results[1]), absl::StatusCode::kInternal);  // Only that command failed.
  EXPECT_EQ(results[2], std::make_tuple("get", "v1", absl::StatusCode::kOk));
  auto count = (*redis)->connection().Command({"GET", key + ":n"});
  ASSERT_TRUE(count.ok());
  EXPECT_EQ(ReplyString(count->get()), "200");  // Batches larger than max_batch: all ran.
}

TEST(RedisWorkerPool, EveryCommandIsUnavailableWhileRedisCannotBeReached) {
  Collected collected;
  {
    RedisWorkerPool pool({.redis = {.host = "127.0.0.1", .port = 1}, .workers = 2});
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(pool.Submit({"PING"}, collected.Add("ping")));
  }
  auto results = collected.Await(5);
  ASSERT_EQ(results.size(), 5u);
  for (const auto& [name, text, code] : results) EXPECT_EQ(code, absl::StatusCode::kUnavailable);
}

TEST(RedisWorkerPool, RefusesWhenTheQueueIsFull) {
  // No worker ever runs: everything stays queued, so the limit is exact.
  RedisWorkerPool pool({.redis = {.host = "127.0.0.1", .port = 1}, .workers = 0, .max_queued = 3});
  int ran = 0;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(pool.Submit({"PING"}, [&](absl::StatusOr<RedisReply>) { ++ran; }));
  }
  EXPECT_FALSE(pool.Submit({"PING"}, [&](absl::StatusOr<RedisReply>) { ++ran; }));
  EXPECT_EQ(ran, 0);
}

}  // namespace
}  // namespace parley
