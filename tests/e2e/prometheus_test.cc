// The shipped dashboard and alert rules against a real Prometheus (Debian's) scraping
// all four services of an end-to-end run: the number of turns that ran comes back from
// a PromQL query, every dashboard expression evaluates without error, and the rules
// file loads through Prometheus's own config and reports healthy in /api/v1/rules.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "tests/session/session_fixture.h"

namespace parley::session::testing {
namespace {

using nlohmann::json;
using ::parley::testing::HoldsIdShape;
using ::parley::testing::HttpGet;
using ::parley::testing::MetricLabelValues;
using ::parley::testing::ProcessOptions;
using ::parley::testing::ServiceProcess;
using ::parley::testing::SourcePath;
using ::parley::testing::TestTempDir;

std::string UrlEncode(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&out, "%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class PrometheusScrape : public SessionFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 1, .gateway = true, .sandbox = true}));
  }

  // Each service's job name (as Prometheus scrapes it) and admin port.
  std::vector<std::pair<std::string, int>> AdminPorts() {
    return {{"parley-store", store_process().admin_port()},
            {"parley-session", replica(0).admin_port()},
            {"parley-sandbox", sandbox_process()->admin_port()},
            {"parley-gateway", gateway()->admin_port()}};
  }

  void StartPrometheus() {
    const std::string dir = TestTempDir() + "/prometheus";
    ASSERT_EQ(system(("mkdir -p " + dir).c_str()), 0);
    std::string config = absl::StrCat(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n", "rule_files:\n  - ",
        SourcePath("helm/parley/files/prometheus/parley-rules.yaml"), "\nscrape_configs:\n");
    for (const auto& [job, port] : AdminPorts()) {
      absl::StrAppend(&config, "  - job_name: ", job, "\n    static_configs:\n",
                      "      - targets: ['127.0.0.1:", port, "']\n");
    }
    std::ofstream(dir + "/prometheus.yml") << config;
    port_ = parley::testing::FreePort();
    auto process = ServiceProcess::Start(
        {.binary = "/usr/bin/prometheus",
         .args = {"--config.file=" + dir + "/prometheus.yml",
                  "--storage.tsdb.path=" + dir + "/data",
                  absl::StrCat("--web.listen-address=127.0.0.1:", port_), "--log.level=warn"}});
    ASSERT_TRUE(process.ok()) << process.status();
    prometheus_ = *std::move(process);
    ASSERT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] {
      auto ready = HttpGet(port_, "/-/ready");
      return ready.ok() && ready->first == 200;
    })) << prometheus_->Output();
  }

  // GET an API path; the parsed answer, or a test failure.
  json Api(const std::string& path) {
    auto answer = HttpGet(port_, path);
    if (!answer.ok()) {
      ADD_FAILURE() << path << ": " << answer.status();
      return json();
    }
    json parsed = json::parse(answer->second, nullptr, false);
    if (parsed.is_discarded()) ADD_FAILURE() << path << ": " << answer->second;
    return parsed;
  }
  json Query(const std::string& promql) { return Api("/api/v1/query?query=" + UrlEncode(promql)); }
  // The single value of an instant vector query, or -1.
  double Scalar(const std::string& promql) {
    json answer = Query(promql);
    if (answer.value("status", "") != "success" || answer["data"]["result"].size() != 1) return -1;
    return std::stod(answer["data"]["result"][0]["value"][1].get<std::string>());
  }

  // Runs three turns (the first calls the bash tool) on a new session of kTenantA while a
  // gateway subscriber streams them, so every service handles calls that carry ids.
  // Returns those ids: the session's, the turns', the tool calls' and the sandboxes'.
  std::vector<std::string> RunTurns() {
    v1::AgentConfig config;
    config.add_tools("bash");
    const std::string session = CreateSessionWith(kTenantA, config);
    std::vector<std::string> ids = {session};
    LiveSubscriber subscriber(gateway()->grpc_target(), session);
    for (const std::string& text : {std::string("@tool bash {\"command\":\"echo metered\"}"),
                                    std::string("hello"), std::string("again")}) {
      absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, text);
      EXPECT_TRUE(turn.ok()) << turn.status();
      if (!turn.ok()) return ids;
      EXPECT_TRUE(WaitForTurnEnd(kTenantA, session, *turn).ok());
      ids.push_back(*turn);
    }
    EXPECT_TRUE(subscriber.WaitFor(
        [](const std::vector<v1::Event>& events) { return !events.empty(); }, absl::Seconds(10)));
    auto messages = ListMessages(kTenantA, session);
    EXPECT_TRUE(messages.ok()) << messages.status();
    for (const v1::Message& message : messages.value_or(std::vector<v1::Message>{})) {
      for (const v1::Part& part : message.parts()) {
        if (part.has_tool_call()) ids.push_back(part.tool_call().call_id());
      }
    }
    auto sandboxes = SessionSandboxes(kTenantA, session);
    EXPECT_TRUE(sandboxes.ok()) << sandboxes.status();
    for (const auto& sandbox : sandboxes.value_or(std::vector<sandbox::v1::Sandbox>{})) {
      ids.push_back(sandbox.id());
    }
    return ids;
  }

  int port_ = 0;
  std::unique_ptr<ServiceProcess> prometheus_;
};

TEST_F(PrometheusScrape, CountsTheTurnsAndEvaluatesEveryShippedExpression) {
  RunTurns();
  ASSERT_FALSE(HasFailure());
  ASSERT_NO_FATAL_FAILURE(StartPrometheus());

  // Every service is scraped, and the turns that ran are counted.
  EXPECT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] {
    return Scalar("count(up{job=~\"parley-.*\"} == 1)") == 4 &&
           Scalar("sum(parley_turns_total)") == 3;
  })) << prometheus_->Output();
  EXPECT_EQ(Scalar("sum(parley_turns_total)"), 3);
  EXPECT_EQ(Scalar("sum(parley_tool_duration_seconds_count{tool=\"bash\"})"), 1);
  // The store's operations and its connection pool: every turn was completed through
  // store-svc, and the pool says how it is used.
  EXPECT_EQ(Scalar("sum(parley_store_query_seconds_count{operation=\"CompleteTurn\"})"), 3);
  EXPECT_GE(Scalar("sum(parley_store_query_seconds_count{operation=\"EnqueueTurn\"})"), 3);
  EXPECT_GT(Scalar("parley_store_db_pool_size{job=\"parley-store\"}"), 0);
  EXPECT_GE(Scalar("sum(parley_store_db_pool_connections{state=\"idle\"})"), 1);
  EXPECT_EQ(Scalar("count(parley_store_db_pool_connections{state=\"in_use\"})"), 1);
  EXPECT_EQ(Scalar("count(parley_store_db_pool_waiting)"), 1);
  EXPECT_GE(Scalar("sum(parley_store_db_pool_wait_seconds_count)"), 3);
  EXPECT_GE(Scalar("count(parley_sandbox_pool_target)"), 1);

  // Every dashboard expression evaluates.
  json dashboard =
      json::parse(ReadFile(SourcePath("helm/parley/files/grafana/parley-dashboard.json")));
  int expressions = 0;
  for (const json& panel : dashboard["panels"]) {
    for (const json& target : panel["targets"]) {
      const std::string expr = target["expr"];
      json answer = Query(expr);
      EXPECT_EQ(answer.value("status", ""), "success") << panel["title"] << ": " << expr << "\n"
                                                       << answer.dump();
      ++expressions;
    }
  }
  EXPECT_GE(expressions, 22);
  // The store panels have data to draw once rates span two scrapes.
  for (const char* series :
       {"parley_store_query_seconds_bucket", "parley_store_db_pool_wait_seconds_bucket"}) {
    const std::string rate = absl::StrCat("sum(rate(", series, "[5m]))");
    EXPECT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] { return Scalar(rate) >= 0; }))
        << rate;
  }

  // The rules file loaded through the config, and every rule evaluates healthily.
  std::vector<std::string> unhealthy;
  std::set<std::string> alerts;
  EXPECT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] {
    unhealthy.clear();
    alerts.clear();
    json rules = Api("/api/v1/rules");
    for (const json& group : rules["data"]["groups"]) {
      for (const json& rule : group["rules"]) {
        alerts.insert(rule.value("name", ""));
        if (rule.value("health", "") != "ok") {
          unhealthy.push_back(absl::StrCat(rule.value("name", ""), ": ", rule.value("health", ""),
                                           " ", rule.value("lastError", "")));
        }
      }
    }
    return !alerts.empty() && unhealthy.empty();
  })) << absl::StrJoin(unhealthy, "\n");
  EXPECT_THAT(alerts,
              ::testing::IsSupersetOf({"ParleyServiceDown", "ParleyTurnErrorRateHigh",
                                       "ParleyTimeToFirstTokenSlow", "ParleyFanoutLagHigh",
                                       "ParleySandboxPoolExhausted", "ParleyPersisterLagHigh",
                                       "ParleyStorePoolSaturated", "ParleyStoreQueriesSlow"}));
}

// Proves: no service puts an id in a metric label (each distinct value would be a new
// series). Ids were there to leak: the turns, their tool call, its sandbox and the
// gateway stream all carried them, and each service counted its calls.
TEST_F(PrometheusScrape, NoServiceHasAnIdInAnyLabel) {
  const std::vector<std::string> ids = RunTurns();
  ASSERT_FALSE(HasFailure());
  ASSERT_GE(ids.size(), 5u) << "session, three turns, a tool call";

  for (const auto& [service, port] : AdminPorts()) {
    auto page = HttpGet(port, "/metrics");
    ASSERT_TRUE(page.ok() && page->first == 200) << service;
    const std::vector<std::string> values = MetricLabelValues(page->second);
    EXPECT_THAT(values, ::testing::Contains(::testing::HasSubstr("/")))
        << service << " counted no gRPC call: nothing was there to leak";
    for (const std::string& value : values) {
      for (const std::string& id : ids) {
        EXPECT_EQ(value.find(id), std::string::npos)
            << service << ": label value \"" << value << "\" holds " << id;
      }
      EXPECT_FALSE(HoldsIdShape(value)) << service << ": label value looks like an id: " << value;
    }
  }
}

}  // namespace
}  // namespace parley::session::testing
