#include "common/redis.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace parley
