#include "telemetry/log.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "telemetry/tracer.h"

namespace parley::telemetry {
namespace {

nlohmann::json Line(const Logger& logger, std::initializer_list<LogField> fields,
                    const TraceContext* trace = nullptr) {
  return nlohmann::json::parse(logger.Format(LogLevel::kInfo, "hello \"world\"", fields, trace));
}

TEST(Log, WritesOneJsonObjectWithServiceLevelAndFields) {
  Logger logger("parley-test", LogLevel::kInfo);
  nlohmann::json line = Line(logger, {{"session_id", "ses_1"}, {"step", 3}, {"ok", true}});
  EXPECT_EQ(line["service"], "parley-test");
  EXPECT_EQ(line["level"], "info");
  EXPECT_EQ(line["msg"], "hello \"world\"");
  EXPECT_EQ(line["session_id"], "ses_1");
  EXPECT_EQ(line["step"], 3);
  EXPECT_EQ(line["ok"], true);
  EXPECT_TRUE(line.contains("ts"));
  EXPECT_FALSE(line.contains("trace_id"));
}

TEST(Log, CarriesTraceAndSpanIds) {
  Logger logger("parley-test", LogLevel::kInfo);
  TraceContext trace = TraceContext::NewRoot();
  nlohmann::json line = Line(logger, {}, &trace);
  EXPECT_EQ(line["trace_id"], trace.TraceIdHex());
  EXPECT_EQ(line["span_id"], trace.SpanIdHex());
}

TEST(Log, RedactsSecretsByTypeAndByKey) {
  Logger logger("parley-test", LogLevel::kInfo);
  nlohmann::json line = Line(logger, {{"key", Secret{"sk-live-123"}},
                                      {"authorization", "Bearer sk-live-123"},
                                      {"provider_api_key", "sk-ant-456"},
                                      {"input_tokens", 12}});
  EXPECT_EQ(line["key"], "[REDACTED]");
  EXPECT_EQ(line["authorization"], "[REDACTED]");
  EXPECT_EQ(line["provider_api_key"], "[REDACTED]");
  EXPECT_EQ(line["input_tokens"], 12);  // A count, not a credential.
  EXPECT_EQ(line.dump().find("sk-"), std::string::npos);
}

// Credentials logged by mistake (under an innocent key, inside a message, in an error
// string, in a provider's response body) are caught by their shape, on every helper.
TEST(Log, NeverPrintsAnApiKeyOrAProviderKeyLoggedByMistake) {
  // A gateway key exactly as parley-store mints it, and provider keys as issued.
  const std::string api_key = "pk_a1B2c3D4e5F6_" + std::string(40, 'x');
  const std::vector<std::string> provider_keys = {"sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
                                                  "sk-ant-api03-Zy9xWv8uTs7rQp6oNm5lKj4",
                                                  "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"};
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  {
    Logger logger("parley-test", LogLevel::kDebug, fds[1]);
    TraceContext trace = TraceContext::NewRoot();
    logger.Info(absl::StrCat("key ", api_key, " accepted"), {{"key_id", api_key}}, &trace);
    logger.Warn("call failed", {{"error", absl::StrCat("401: invalid key ", provider_keys[0])}});
    logger.Error("provider said", {{"body", absl::StrCat(R"({"api":")", provider_keys[1],
                                                         R"(","authorization":"Bearer )",
                                                         provider_keys[2], R"("})")}});
    logger.Debug(absl::StrCat("x-api-key: ", provider_keys[1]), {{"header", provider_keys[2]}});
    logger.Log(LogLevel::kInfo, "curl",
               {{"cmd", absl::StrCat("-H 'Authorization: Bearer ", api_key, "'")}});
  }
  ::close(fds[1]);
  std::string out;
  char buffer[4096];
  for (ssize_t n; (n = ::read(fds[0], buffer, sizeof(buffer))) > 0;) out.append(buffer, n);
  ::close(fds[0]);

  std::istringstream lines(out);
  std::string line;
  int count = 0;
  while (std::getline(lines, line)) {
    ++count;
    EXPECT_FALSE(absl::StrContains(line, api_key)) << line;
    // Not even the secret part of the key alone.
    EXPECT_FALSE(absl::StrContains(line, std::string(40, 'x'))) << line;
    for (const std::string& key : provider_keys) EXPECT_FALSE(absl::StrContains(line, key)) << line;
    EXPECT_TRUE(absl::StrContains(line, "[REDACTED]")) << line;
    EXPECT_NO_THROW(nlohmann::json::parse(line)) << line;
  }
  EXPECT_EQ(count, 5);
  // What surrounds a key is kept.
  EXPECT_TRUE(absl::StrContains(out, R"("msg":"key [REDACTED] accepted")")) << out;
  EXPECT_TRUE(absl::StrContains(out, "401: invalid key [REDACTED]")) << out;
}

TEST(Log, WordsThatOnlyLookLikeKeyPrefixesAreKept) {
  EXPECT_EQ(RedactCredentials("ask-me pk_id sk-short task-sk-1234567890abcdefghij"),
            "ask-me pk_id sk-short task-sk-1234567890abcdefghij");
  EXPECT_EQ(RedactCredentials("input_tokens=12 Bearer"), "input_tokens=12 Bearer");
  EXPECT_EQ(RedactCredentials("sk-1234567890abcdefghijkl."), "[REDACTED]");
  EXPECT_EQ(RedactCredentials("(Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl)"), "(Bearer [REDACTED])");
}

TEST(Log, TakesTheThreadsTraceAndLogScopes) {
  Logger logger("parley-test", LogLevel::kInfo);
  TraceContext turn = TraceContext::NewRoot();
  {
    ContextScope trace(turn);
    LogScope outer({{"session_id", "ses_1"}, {"turn_id", "trn_1"}});
    LogScope inner({{"step", 2}, {"api_key", "pk_abcdefghijkl_" + std::string(40, 'y')}});
    nlohmann::json line = Line(logger, {{"turn_id", "trn_given"}});
    EXPECT_EQ(line["trace_id"], turn.TraceIdHex());
    EXPECT_EQ(line["span_id"], turn.SpanIdHex());
    EXPECT_EQ(line["session_id"], "ses_1");
    EXPECT_EQ(line["turn_id"], "trn_given");  // The call's own field wins.
    EXPECT_EQ(line["step"], 2);
    EXPECT_EQ(line["api_key"], "[REDACTED]");
    // A context given to the call wins over the thread's.
    TraceContext other = TraceContext::NewRoot();
    EXPECT_EQ(Line(logger, {}, &other)["trace_id"], other.TraceIdHex());
    // Handed to another thread, the fields and trace go along when reopened there.
    const std::vector<LogField> fields = LogScope::Current();
    const std::optional<TraceContext> current = ContextScope::Current();
    nlohmann::json there;
    std::thread([&] {
      EXPECT_FALSE(Line(logger, {}).contains("session_id"));
      LogScope scope(fields);
      ContextScope trace_scope(current);
      there = Line(logger, {});
    }).join();
    EXPECT_EQ(there["session_id"], "ses_1");
    EXPECT_EQ(there["turn_id"], "trn_1");
    EXPECT_EQ(there["trace_id"], turn.TraceIdHex());
  }
  nlohmann::json after = Line(logger, {});
  EXPECT_FALSE(after.contains("session_id"));
  EXPECT_FALSE(after.contains("trace_id"));
}

TEST(Log, InvalidUtf8DoesNotThrow) {
  Logger logger("parley-test", LogLevel::kInfo);
  EXPECT_NO_THROW(Line(logger, {{"bytes", std::string("\xff\xfe", 2)}}));
}

TEST(Log, LevelsBelowTheMinimumAreDisabled) {
  Logger logger("parley-test", LogLevel::kWarn);
  EXPECT_FALSE(logger.Enabled(LogLevel::kInfo));
  EXPECT_TRUE(logger.Enabled(LogLevel::kError));
  EXPECT_EQ(*ParseLogLevel("WARNING"), LogLevel::kWarn);
  EXPECT_FALSE(ParseLogLevel("loud").ok());
}

}  // namespace
}  // namespace parley::telemetry
