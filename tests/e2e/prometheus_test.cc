// The shipped dashboard and alert rules against a real Prometheus (Debian's) scraping
// all four services of an end-to-end run: the number of turns that ran comes back from
// a PromQL query, every dashboard expression evaluates without error, and the rules
// file loads through Prometheus's own config and reports healthy in /api/v1/rules.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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
using ::parley::testing::HttpGet;
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

// A loopback port nothing listens on right now.
int UnusedPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof(address);
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size);
  ::close(fd);
  return ntohs(address.sin_port);
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

  void StartPrometheus() {
    const std::string dir = TestTempDir() + "/prometheus";
    ASSERT_EQ(system(("mkdir -p " + dir).c_str()), 0);
    std::string config = absl::StrCat(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n", "rule_files:\n  - ",
        SourcePath("helm/parley/files/prometheus/parley-rules.yaml"), "\nscrape_configs:\n");
    const std::vector<std::pair<std::string, int>> jobs = {
        {"parley-store", store_process().admin_port()},
        {"parley-session", replica(0).admin_port()},
        {"parley-sandbox", sandbox_process()->admin_port()},
        {"parley-gateway", gateway()->admin_port()}};
    for (const auto& [job, port] : jobs) {
      absl::StrAppend(&config, "  - job_name: ", job, "\n    static_configs:\n",
                      "      - targets: ['127.0.0.1:", port, "']\n");
    }
    std::ofstream(dir + "/prometheus.yml") << config;
    port_ = UnusedPort();
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

  int port_ = 0;
  std::unique_ptr<ServiceProcess> prometheus_;
};

TEST_F(PrometheusScrape, CountsTheTurnsAndEvaluatesEveryShippedExpression) {
  v1::AgentConfig config;
  config.add_tools("bash");
  const std::string session = CreateSessionWith(kTenantA, config);
  for (const std::string& text : {std::string("@tool bash {\"command\":\"echo metered\"}"),
                                  std::string("hello"), std::string("again")}) {
    absl::StatusOr<std::string> turn = SubmitTurn(kTenantA, session, text);
    ASSERT_TRUE(turn.ok()) << turn.status();
    ASSERT_TRUE(WaitForTurnEnd(kTenantA, session, *turn).ok());
  }
  ASSERT_NO_FATAL_FAILURE(StartPrometheus());

  // Every service is scraped, and the turns that ran are counted.
  EXPECT_TRUE(parley::testing::WaitFor(absl::Seconds(30), [&] {
    return Scalar("count(up{job=~\"parley-.*\"} == 1)") == 4 &&
           Scalar("sum(parley_turns_total)") == 3;
  })) << prometheus_->Output();
  EXPECT_EQ(Scalar("sum(parley_turns_total)"), 3);
  EXPECT_EQ(Scalar("sum(parley_tool_duration_seconds_count{tool=\"bash\"})"), 1);

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
  EXPECT_GE(expressions, 16);

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
                                       "ParleySandboxPoolExhausted", "ParleyPersisterLagHigh"}));
}

}  // namespace
}  // namespace parley::session::testing
