#include "common/retry.h"

#include <gtest/gtest.h>

namespace parley {
namespace {

TEST(Backoff, GrowsExponentiallyUpToTheCap) {
  BackoffPolicy policy{.initial = absl::Seconds(1), .max = absl::Seconds(30), .jitter = 0};
  EXPECT_EQ(BackoffDelay(policy, 0, 0.5), absl::Seconds(1));
  EXPECT_EQ(BackoffDelay(policy, 1, 0.5), absl::Seconds(2));
  EXPECT_EQ(BackoffDelay(policy, 4, 0.5), absl::Seconds(16));
  EXPECT_EQ(BackoffDelay(policy, 5, 0.5), absl::Seconds(30));
  EXPECT_EQ(BackoffDelay(policy, 500, 0.5), absl::Seconds(30));
}

TEST(Backoff, JitterOnlyShortensAndStaysInRange) {
  BackoffPolicy policy{.initial = absl::Seconds(1), .max = absl::Seconds(30), .jitter = 0.2};
  EXPECT_EQ(BackoffDelay(policy, 10, 0.0), absl::Seconds(30));
  absl::Duration shortest = BackoffDelay(policy, 10, 0.999999);
  EXPECT_GE(shortest, absl::Seconds(24) - absl::Milliseconds(1));
  EXPECT_LE(shortest, absl::Seconds(30));
}

TEST(Retry, RetriesTransientErrorsUntilSuccess) {
  FakeClock clock;
  BackoffPolicy policy{.initial = absl::Milliseconds(100), .jitter = 0};
  int calls = 0;
  std::vector<int> announced;
  absl::Status status = RetryStatus(
      policy, clock,
      [&] { return ++calls < 4 ? absl::UnavailableError("down") : absl::OkStatus(); }, IsTransient,
      [&](int index, absl::Duration, const absl::Status&) { announced.push_back(index); });
  EXPECT_TRUE(status.ok());
  EXPECT_EQ(calls, 4);
  EXPECT_EQ(announced, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(clock.sleeps(),
            (std::vector<absl::Duration>{absl::Milliseconds(100), absl::Milliseconds(200),
                                         absl::Milliseconds(400)}));
}

TEST(Retry, StopsAtTheFirstPermanentError) {
  FakeClock clock;
  int calls = 0;
  absl::Status status = RetryStatus(BackoffPolicy{}, clock, [&] {
    ++calls;
    return absl::InvalidArgumentError("bad");
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(clock.sleeps().empty());
}

TEST(Retry, GivesUpAfterMaxAttemptsWithTheLastError) {
  FakeClock clock;
  int calls = 0;
  absl::Status status = RetryStatus(BackoffPolicy{.max_attempts = 3}, clock, [&] {
    return absl::UnavailableError("attempt " + std::to_string(++calls));
  });
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(status.message(), "attempt 3");
}

TEST(Retry, NeverSleepsPastTheElapsedBudget) {
  FakeClock clock;
  BackoffPolicy policy{.initial = absl::Seconds(1),
                       .max = absl::Seconds(8),
                       .jitter = 0,
                       .max_elapsed = absl::Seconds(10)};
  int calls = 0;
  absl::Status status = RetryStatus(policy, clock, [&] {
    ++calls;
    return absl::UnavailableError("down");
  });
  EXPECT_FALSE(status.ok());
  // Sleeps 1 + 2 + 4 = 7 s; the next (8 s) would end at 15 s > 10 s.
  EXPECT_EQ(clock.total_slept(), absl::Seconds(7));
  EXPECT_EQ(calls, 4);
}

TEST(Retry, TypedRetryReturnsTheValue) {
  FakeClock clock;
  int calls = 0;
  absl::StatusOr<int> result = Retry<int>(BackoffPolicy{}, clock, [&]() -> absl::StatusOr<int> {
    if (++calls < 2) return absl::AbortedError("serialization failure");
    return 42;
  });
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(*result, 42);
}

}  // namespace
}  // namespace parley
