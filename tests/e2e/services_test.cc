// Every service binary, as a real process: starts, answers health and reflection,
// serves /metrics, exits 0 on SIGTERM, and rejects bad configuration with exit 2.
#include "tests/harness/services.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <cctype>
#include <map>

#include "tests/harness/reflection.h"

namespace parley::testing {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

struct Binary {
  std::string path;
  std::string service;  // A service its reflection must list.
};

class ServiceBinaryTest : public ::testing::TestWithParam<Binary> {
 protected:
  // store-svc and the gateway are SERVING only while their hard dependencies answer
  // (ServiceHost::AddDependency), so they get a database, a Redis and a healthy store.
  void SetUp() override {
    if (GetParam().path == "store-svc/parley-store") {
      auto db = TestDatabase::Create();
      ASSERT_TRUE(db.ok()) << db.status();
      db_ = *std::move(db);
      dependencies_ = {{"database_url", db_->url()}, {"persister", "false"}};
    } else if (GetParam().path == "gateway/parley-gateway") {
      auto redis = TestRedis::Create();
      ASSERT_TRUE(redis.ok()) << redis.status();
      redis_ = *std::move(redis);
      auto store = ServingHealthServer::Start();
      ASSERT_TRUE(store.ok()) << store.status();
      store_ = *std::move(store);
      dependencies_ = {{"redis_url", redis_->url()}, {"store_addr", store_->target()}};
    }
  }

  ProcessOptions Options(std::vector<std::string> extra = {}) {
    ProcessOptions options{.binary = BinaryPath(GetParam().path),
                           .args = {"--grpc_addr=127.0.0.1:0", "--admin_addr=127.0.0.1:0"}};
    for (const auto& [flag, value] : dependencies_) {
      options.args.push_back("--" + flag + "=" + value);
    }
    options.args.insert(options.args.end(), extra.begin(), extra.end());
    return options;
  }

  // The dependencies as PARLEY_* environment variables.
  std::map<std::string, std::string> DependencyEnv() const {
    std::map<std::string, std::string> env;
    for (const auto& [flag, value] : dependencies_) {
      std::string name = "PARLEY_" + flag;
      for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      env[name] = value;
    }
    return env;
  }

  std::map<std::string, std::string> dependencies_;  // flag name -> value
  std::unique_ptr<TestDatabase> db_;
  std::unique_ptr<TestRedis> redis_;
  std::unique_ptr<ServingHealthServer> store_;
};

TEST_P(ServiceBinaryTest, ServesHealthReflectionAndMetrics) {
  auto process = ServiceProcess::Start(Options());
  ASSERT_TRUE(process.ok()) << process.status();
  ASSERT_TRUE((*process)->WaitUntilServing(absl::Seconds(30)).ok()) << (*process)->Output();

  auto services = ListServicesByReflection((*process)->grpc_target());
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(*services, Contains(GetParam().service));
  EXPECT_THAT(*services, Contains("grpc.health.v1.Health"));

  auto metrics = HttpGet((*process)->admin_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->first, 200);
  EXPECT_THAT(metrics->second,
              HasSubstr("parley_grpc_server_handled_total{method=\"/grpc.health.v1.Health/Check\""
                        ",code=\"OK\"}"));
  EXPECT_THAT(metrics->second, HasSubstr("parley_grpc_server_handling_seconds_bucket"));
  EXPECT_THAT(metrics->second, HasSubstr("parley_build_info{service=\"parley-"));
  EXPECT_THAT(metrics->second, HasSubstr("process_resident_memory_bytes"));

  EXPECT_EQ(HttpGet((*process)->admin_port(), "/healthz")->first, 200);
  EXPECT_EQ(HttpGet((*process)->admin_port(), "/readyz")->first, 200);
  EXPECT_EQ(HttpGet((*process)->admin_port(), "/nope")->first, 404);
  EXPECT_THAT((*process)->Output(), HasSubstr("\"msg\":\"serving\""));
}

TEST_P(ServiceBinaryTest, ExitsZeroOnSigterm) {
  auto process = ServiceProcess::Start(Options());
  ASSERT_TRUE(process.ok()) << process.status();
  ASSERT_TRUE((*process)->WaitUntilServing(absl::Seconds(30)).ok()) << (*process)->Output();
  (*process)->Signal(SIGTERM);
  auto code = (*process)->WaitForExit(absl::Seconds(20));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << (*process)->Output();
  EXPECT_THAT((*process)->Output(), HasSubstr("\"signal\":\"SIGTERM\""));
  EXPECT_THAT((*process)->Output(), HasSubstr("\"msg\":\"stopped\""));
}

TEST_P(ServiceBinaryTest, UnknownFlagExitsTwoNamingIt) {
  auto result = RunCommand(Options({"--no_such_flag=1"}));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->exit_code, 2);
  EXPECT_THAT(result->output, HasSubstr("unknown flag --no_such_flag"));
}

TEST_P(ServiceBinaryTest, BadFlagValueExitsTwoNamingFlagAndExpectation) {
  auto result = RunCommand(Options({"--drain_timeout=forever"}));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->exit_code, 2);
  EXPECT_THAT(result->output, HasSubstr("--drain_timeout"));
  EXPECT_THAT(result->output, HasSubstr("duration"));
}

TEST_P(ServiceBinaryTest, BadEnvironmentValueExitsTwoNamingTheVariable) {
  ProcessOptions options{.binary = BinaryPath(GetParam().path),
                         .env = {{"PARLEY_ADMIN_ADDR", "not-an-address"}}};
  auto result = RunCommand(options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->exit_code, 2);
  EXPECT_THAT(result->output, HasSubstr("PARLEY_ADMIN_ADDR"));
  EXPECT_THAT(result->output, HasSubstr("host:port"));
}

TEST_P(ServiceBinaryTest, EnvironmentConfiguresTheService) {
  ProcessOptions options{.binary = BinaryPath(GetParam().path), .env = DependencyEnv()};
  options.env["PARLEY_GRPC_ADDR"] = "127.0.0.1:0";
  options.env["PARLEY_ADMIN_ADDR"] = "127.0.0.1:0";
  options.env["PARLEY_LOG_LEVEL"] = "debug";
  auto process = ServiceProcess::Start(options);
  ASSERT_TRUE(process.ok()) << process.status();
  ASSERT_TRUE((*process)->WaitUntilServing(absl::Seconds(30)).ok()) << (*process)->Output();
  // Debug level: the health checks made while waiting appear as access log lines.
  EXPECT_THAT((*process)->Output(), HasSubstr("\"level\":\"debug\""));
}

TEST_P(ServiceBinaryTest, HelpListsFlagsAndExitsZero) {
  auto result = RunCommand({.binary = BinaryPath(GetParam().path), .args = {"--help"}});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->exit_code, 0);
  EXPECT_THAT(result->output, HasSubstr("--grpc_addr (env PARLEY_GRPC_ADDR)"));
  EXPECT_THAT(result->output, HasSubstr("--drain_timeout"));
}

INSTANTIATE_TEST_SUITE_P(
    AllServices, ServiceBinaryTest,
    ::testing::Values(Binary{"gateway/parley-gateway", "parley.v1.SessionService"},
                      Binary{"session-svc/parley-session", "parley.router.v1.SessionRouter"},
                      Binary{"sandbox-svc/parley-sandbox", "parley.sandbox.v1.SandboxManager"},
                      Binary{"store-svc/parley-store", "parley.store.v1.StoreService"}),
    [](const ::testing::TestParamInfo<Binary>& info) {
      std::string name = info.param.path.substr(info.param.path.rfind('-') + 1);
      return name;
    });

TEST(StoreBinary, MigrateAppliesTheSchemaAndServeReportsItsVersion) {
  auto db = TestDatabase::Create();
  ASSERT_TRUE(db.ok()) << db.status();
  std::string url = "--database_url=" + (*db)->url();
  auto migrate =
      RunCommand({.binary = BinaryPath("store-svc/parley-store"), .args = {"migrate", url}});
  ASSERT_TRUE(migrate.ok()) << migrate.status();
  ASSERT_EQ(migrate->exit_code, 0) << migrate->output;
  EXPECT_THAT(migrate->output, HasSubstr("schema up to date"));

  auto again =
      RunCommand({.binary = BinaryPath("store-svc/parley-store"), .args = {"migrate", url}});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->exit_code, 0);
  EXPECT_THAT(again->output, ::testing::Not(HasSubstr("migration applied")));

  auto store =
      ServiceProcess::Start({.binary = BinaryPath("store-svc/parley-store"),
                             .args = {"--grpc_addr=127.0.0.1:0", "--admin_addr=127.0.0.1:0", url}});
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->WaitUntilServing(absl::Seconds(30)).ok()) << (*store)->Output();
  auto metrics = HttpGet((*store)->admin_port(), "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_THAT(metrics->second,
              ::testing::MatchesRegex("(.|\n)*parley_store_schema_version [1-9](.|\n)*"));
}

TEST(StoreBinary, UnknownCommandExitsTwo) {
  auto result = RunCommand({.binary = BinaryPath("store-svc/parley-store"), .args = {"migrat"}});
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->exit_code, 2);
  EXPECT_THAT(result->output, HasSubstr("unknown command \"migrat\""));
}

TEST(StoreBinary, MigrateWithUnreachableDatabaseFails) {
  auto result = RunCommand({.binary = BinaryPath("store-svc/parley-store"),
                            .args = {"migrate", "--database_url=postgresql://x@127.0.0.1:1/none"}});
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->exit_code, 1);
  EXPECT_THAT(result->output, HasSubstr("migrate failed"));
}

TEST(Cli, HealthReportsServingAndFailsForADeadAddress) {
  auto store =
      ServiceProcess::Start({.binary = BinaryPath("sandbox-svc/parley-sandbox"),
                             .args = {"--grpc_addr=127.0.0.1:0", "--admin_addr=127.0.0.1:0"}});
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->WaitUntilServing(absl::Seconds(30)).ok());
  auto ok =
      RunCommand({.binary = BinaryPath("cli/parley"), .args = {"health", (*store)->grpc_target()}});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->exit_code, 0);
  EXPECT_THAT(ok->output, HasSubstr("SERVING"));
  auto dead = RunCommand(
      {.binary = BinaryPath("cli/parley"), .args = {"health", "127.0.0.1:1", "--timeout=500ms"}});
  ASSERT_TRUE(dead.ok());
  EXPECT_EQ(dead->exit_code, 1);
  EXPECT_THAT(dead->output, HasSubstr("UNREACHABLE"));
}

}  // namespace
}  // namespace parley::testing
