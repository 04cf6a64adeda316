#include "telemetry/trace_context.h"

#include <gtest/gtest.h>

namespace parley::telemetry {
namespace {

constexpr char kValid[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

TEST(TraceContext, ParsesAValidTraceparent) {
  auto context = TraceContext::Parse(kValid, "vendor=abc");
  ASSERT_TRUE(context.has_value());
  EXPECT_EQ(context->TraceIdHex(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(context->SpanIdHex(), "00f067aa0ba902b7");
  EXPECT_TRUE(context->sampled());
  EXPECT_EQ(context->tracestate(), "vendor=abc");
  EXPECT_EQ(context->ToTraceparent(), kValid);
}

TEST(TraceContext, RejectsWhatTheSpecSaysToIgnore) {
  for (const char* bad : {
           "",
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",       // short
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",    // zero trace id
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",    // zero span id
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    // version ff
           "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",    // upper case
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  // v00 trailing
           "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    // separator
           "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",    // not hex
       }) {
    EXPECT_FALSE(TraceContext::Parse(bad).has_value()) << bad;
  }
}

TEST(TraceContext, ReadsFutureVersionsByTheirKnownFields) {
  auto context =
      TraceContext::Parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future");
  ASSERT_TRUE(context.has_value());
  EXPECT_FALSE(context->sampled());
}

TEST(TraceContext, ChildKeepsTraceAndStateButNotSpan) {
  auto parent = TraceContext::Parse(kValid, "a=b");
  ASSERT_TRUE(parent.has_value());
  TraceContext child = parent->NewChild();
  EXPECT_EQ(child.trace_id(), parent->trace_id());
  EXPECT_NE(child.span_id(), parent->span_id());
  EXPECT_EQ(child.tracestate(), "a=b");
  EXPECT_EQ(child.flags(), parent->flags());
}

TEST(TraceContext, RootsAreRandomAndSampled) {
  TraceContext a = TraceContext::NewRoot();
  TraceContext b = TraceContext::NewRoot();
  EXPECT_NE(a.trace_id(), b.trace_id());
  EXPECT_TRUE(a.sampled());
  EXPECT_TRUE(TraceContext::Parse(a.ToTraceparent()).has_value());
}

}  // namespace
}  // namespace parley::telemetry
