// The harness itself: each test gets a database and a Redis key space of its own.
#include <gtest/gtest.h>

#include <pqxx/pqxx>

#include "tests/harness/services.h"

namespace parley::testing {
namespace {

TEST(Harness, EachTestDatabaseIsSeparateAndDroppedAfterwards) {
  std::string first_name;
  {
    auto first = TestDatabase::Create();
    auto second = TestDatabase::Create();
    ASSERT_TRUE(first.ok()) << first.status();
    ASSERT_TRUE(second.ok()) << second.status();
    first_name = (*first)->name();
    pqxx::connection a((*first)->url());
    pqxx::work tx(a);
    tx.exec("CREATE TABLE only_here (x int)");
    tx.commit();
    pqxx::connection b((*second)->url());
    pqxx::work check(b);
    EXPECT_FALSE(check.exec("SELECT to_regclass('only_here') IS NOT NULL")[0][0].as<bool>());
  }
  pqxx::connection admin(*TestEnv("PARLEY_TEST_PG_URL"));
  pqxx::work tx(admin);
  EXPECT_EQ(tx.exec_params("SELECT count(*) FROM pg_database WHERE datname = $1", first_name)[0][0]
                .as<int>(),
            0);
}

TEST(Harness, EachTestRedisKeySpaceIsSeparateAndCleanedAfterwards) {
  std::string key;
  {
    auto first = TestRedis::Create();
    auto second = TestRedis::Create();
    ASSERT_TRUE(first.ok()) << first.status();
    ASSERT_TRUE(second.ok()) << second.status();
    EXPECT_NE((*first)->keys().prefix(), (*second)->keys().prefix());
    key = (*first)->keys().EventStream("ses_x");
    ASSERT_TRUE((*first)->connection().Command({"SET", key, "1"}).ok());
  }
  auto observer = TestRedis::Create();
  ASSERT_TRUE(observer.ok());
  auto exists = (*observer)->connection().Command({"EXISTS", key});
  ASSERT_TRUE(exists.ok());
  EXPECT_EQ((*exists)->integer, 0);
}

}  // namespace
}  // namespace parley::testing
