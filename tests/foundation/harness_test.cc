// The harness itself: each test gets a database and a Redis key space of its own.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "tests/harness/services.h"

namespace parley::testing {
namespace {

// What it proves: KillSandboxProcesses kills exactly the processes of its uid range and
// removes the parley-sandbox group they were in, with its parent. How: a `sleep` as a
// uid of the range, in a group of a pids hierarchy of the test's own making, beside one
// as another uid that must survive. Needs root and a cgroup v1 pids hierarchy.
TEST(Harness, KillSandboxProcessesKillsTheUidRangeAndRemovesItsGroups) {
  const std::string parent = absl::StrCat("/sys/fs/cgroup/pids/parley-sandbox.harness", ::getpid());
  if (::geteuid() != 0 || ::mkdir(parent.c_str(), 0755) != 0) {
    GTEST_SKIP() << "needs root and a cgroup v1 pids hierarchy";
  }
  const std::string group = parent + "/sbx_harness";
  ASSERT_EQ(::mkdir(group.c_str(), 0755), 0) << std::strerror(errno);
  const int64_t uid = 3'900'000 + ::getpid() % 1000;
  auto start = [](int64_t as_uid) {
    return ServiceProcess::Start(
        {.binary = "/usr/bin/setpriv",
         .args = {absl::StrCat("--reuid=", as_uid), absl::StrCat("--regid=", as_uid),
                  "--clear-groups", "/bin/sleep", "60"}});
  };
  auto doomed = start(uid);
  auto bystander = start(uid + 1);
  ASSERT_TRUE(doomed.ok() && bystander.ok());
  ASSERT_TRUE(
      WaitFor(absl::Seconds(10), [&] { return (*doomed)->running() && (*bystander)->running(); }));
  std::ofstream(group + "/cgroup.procs") << (*doomed)->pid() << std::endl;

  EXPECT_EQ(KillSandboxProcesses(uid, 1), 1);
  EXPECT_TRUE(WaitFor(absl::Seconds(10), [&] { return !(*doomed)->running(); }));
  EXPECT_TRUE((*bystander)->running());
  EXPECT_NE(::access(group.c_str(), F_OK), 0) << "the group is left";
  EXPECT_NE(::access(parent.c_str(), F_OK), 0) << "its parent is left";
  ::rmdir(group.c_str());
  ::rmdir(parent.c_str());
}

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
