#include "telemetry/metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace parley::telemetry {
namespace {

using ::testing::HasSubstr;

TEST(Metrics, RendersCountersWithLabelsInTextFormat) {
  Registry registry;
  auto& calls = registry.AddCounter("parley_test_calls_total", "Calls.", {"method", "code"});
  calls.WithLabels({"/a/B", "OK"}).Increment();
  calls.WithLabels({"/a/B", "OK"}).Increment(2);
  calls.WithLabels({"/a/B", "NOT_FOUND"}).Increment();
  std::string text = registry.RenderText();
  EXPECT_THAT(text, HasSubstr("# HELP parley_test_calls_total Calls.\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE parley_test_calls_total counter\n"));
  EXPECT_THAT(text, HasSubstr("parley_test_calls_total{method=\"/a/B\",code=\"OK\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("parley_test_calls_total{method=\"/a/B\",code=\"NOT_FOUND\"} 1\n"));
}

TEST(Metrics, HistogramBucketsAreCumulativeWithSumAndCount) {
  Registry registry;
  auto& latency = registry.AddHistogram("parley_test_seconds", "Latency.", {}, {0.1, 1.0});
  Histogram& h = latency.WithLabels({});
  h.Observe(0.05);
  h.Observe(0.1);  // On the bound: counts in le="0.1".
  h.Observe(0.5);
  h.Observe(7);
  std::string text = registry.RenderText();
  EXPECT_THAT(text, HasSubstr("parley_test_seconds_bucket{le=\"0.1\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("parley_test_seconds_bucket{le=\"1\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("parley_test_seconds_bucket{le=\"+Inf\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("parley_test_seconds_sum 7.65\n"));
  EXPECT_THAT(text, HasSubstr("parley_test_seconds_count 4\n"));
}

TEST(Metrics, EscapesLabelValues) { EXPECT_EQ(EscapeLabelValue("a\"b\\c\nd"), "a\\\"b\\\\c\\nd"); }

TEST(Metrics, IncludesProcessMetrics) {
  Registry registry;
  std::string text = registry.RenderText();
  EXPECT_THAT(text, HasSubstr("process_resident_memory_bytes "));
  EXPECT_THAT(text, HasSubstr("process_cpu_seconds_total "));
  EXPECT_THAT(text, HasSubstr("process_open_fds "));
}

}  // namespace
}  // namespace parley::telemetry
