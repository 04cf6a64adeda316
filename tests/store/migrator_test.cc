// Migrations against a real Postgres: ordered, recorded, idempotent, safe when two
// migrators race, and a failing one changes nothing.
#include "store-svc/db/migrator.h"

#include <gtest/gtest.h>

#include <pqxx/pqxx>
#include <thread>

#include "tests/harness/services.h"

namespace parley::store {
namespace {

const telemetry::Logger& QuietLogger() {
  static const auto* logger = new telemetry::Logger("test", telemetry::LogLevel::kError);
  return *logger;
}

std::vector<Migration> TwoMigrations() {
  return {{1, "a", "CREATE TABLE IF NOT EXISTS a (x int)"},
          {2, "b", "CREATE TABLE IF NOT EXISTS b (y int); INSERT INTO a VALUES (1)"}};
}

TEST(Migrator, AppliesInOrderAndRecordsTheVersion) {
  auto db = testing::TestDatabase::Create();
  ASSERT_TRUE(db.ok()) << db.status();
  EXPECT_EQ(*SchemaVersion((*db)->url()), 0);
  auto version = Migrate((*db)->url(), TwoMigrations(), QuietLogger());
  ASSERT_TRUE(version.ok()) << version.status();
  EXPECT_EQ(*version, 2);
  EXPECT_EQ(*SchemaVersion((*db)->url()), 2);
}

TEST(Migrator, SecondRunChangesNothing) {
  auto db = testing::TestDatabase::Create();
  ASSERT_TRUE(db.ok()) << db.status();
  ASSERT_TRUE(Migrate((*db)->url(), TwoMigrations(), QuietLogger()).ok());
  ASSERT_TRUE(Migrate((*db)->url(), TwoMigrations(), QuietLogger()).ok());
  pqxx::connection connection((*db)->url());
  pqxx::work tx(connection);
  EXPECT_EQ(tx.exec("SELECT count(*) FROM a")[0][0].as<int>(), 1);  // Migration 2 ran once.
}

TEST(Migrator, ConcurrentMigratorsApplyEachMigrationOnce) {
  auto db = testing::TestDatabase::Create();
  ASSERT_TRUE(db.ok()) << db.status();
  std::vector<std::thread> threads;
  std::vector<absl::StatusOr<int>> results(4, absl::UnknownError("not run"));
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back(
        [&, i] { results[i] = Migrate((*db)->url(), TwoMigrations(), QuietLogger()); });
  }
  for (auto& t : threads) t.join();
  for (const auto& result : results) {
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(*result, 2);
  }
  pqxx::connection connection((*db)->url());
  pqxx::work tx(connection);
  EXPECT_EQ(tx.exec("SELECT count(*) FROM a")[0][0].as<int>(), 1);
}

TEST(Migrator, AFailingMigrationIsRolledBackAndNamed) {
  auto db = testing::TestDatabase::Create();
  ASSERT_TRUE(db.ok()) << db.status();
  std::vector<Migration> migrations = TwoMigrations();
  migrations.push_back({3, "broken", "CREATE TABLE c (z int); SELECT no_such_function()"});
  auto version = Migrate((*db)->url(), migrations, QuietLogger());
  ASSERT_FALSE(version.ok());
  EXPECT_NE(version.status().message().find("migration 3 (broken)"), std::string::npos);
  EXPECT_EQ(*SchemaVersion((*db)->url()), 2);
  pqxx::connection connection((*db)->url());
  pqxx::work tx(connection);
  EXPECT_FALSE(tx.exec("SELECT to_regclass('c') IS NOT NULL")[0][0].as<bool>());
}

TEST(Migrator, TablesCreatedOutsideMigrationsDoNotBreakThem) {
  auto db = testing::TestDatabase::Create();
  ASSERT_TRUE(db.ok()) << db.status();
  {
    pqxx::connection connection((*db)->url());
    pqxx::work tx(connection);
    tx.exec(
        "CREATE TABLE tenants (id text PRIMARY KEY, name text NOT NULL DEFAULT '', "
        "create_time timestamptz NOT NULL DEFAULT now())");
    tx.commit();
  }
  auto version = Migrate((*db)->url(), BuiltinMigrations(), QuietLogger());
  EXPECT_TRUE(version.ok()) << version.status();
}

TEST(Migrator, UnreachableDatabaseIsUnavailable) {
  auto version = Migrate("postgresql://postgres@127.0.0.1:1/none", TwoMigrations(), QuietLogger());
  EXPECT_EQ(version.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace parley::store
