#include "telemetry/log.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

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
