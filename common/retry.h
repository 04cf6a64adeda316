// Capped exponential backoff with jitter, split into a pure delay function and a loop
// that sleeps on an injected Clock.
//
//   BackoffPolicy policy{.initial = absl::Seconds(1), .max = absl::Seconds(30)};
//   absl::Status status = RetryStatus(policy, clock, [&] { return Connect(); });
//
// The loop stops at the first success, at a non-retryable error, after
// `max_attempts` attempts, or when the next sleep would pass `max_elapsed`; it then
// returns the last error.
#pragma once

#include <cstdint>
#include <functional>

#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace parley {

struct BackoffPolicy {
  absl::Duration initial = absl::Milliseconds(100);
  absl::Duration max = absl::Seconds(30);
  double multiplier = 2.0;
  // Each delay is reduced by up to this fraction, at random, so that many clients that
  // failed together do not retry together. 0 disables jitter; delays never exceed max.
  double jitter = 0.2;
  // Total attempts including the first; 0 = unlimited.
  int max_attempts = 0;
  // Attempts stop when the elapsed time plus the next delay would pass this.
  absl::Duration max_elapsed = absl::InfiniteDuration();
};

// The delay before retry number `retry_index` (0 for the first retry), given a uniform
// random number in [0, 1). Pure: same inputs, same output.
absl::Duration BackoffDelay(const BackoffPolicy& policy, int retry_index, double unit_random);

// UNAVAILABLE, ABORTED and DEADLINE_EXCEEDED: errors where trying again may succeed.
bool IsTransient(const absl::Status& status);

using RetryPredicate = std::function<bool(const absl::Status&)>;

// Runs `attempt` until it succeeds or the policy gives up. `on_retry` (optional) is told
// about each scheduled retry before the sleep, e.g. to emit a "retry scheduled" event.
absl::Status RetryStatus(const BackoffPolicy& policy, Clock& clock,
                         const std::function<absl::Status()>& attempt,
                         const RetryPredicate& retryable = IsTransient,
                         const std::function<void(int retry_index, absl::Duration delay,
                                                  const absl::Status&)>& on_retry = nullptr);

template <typename T>
absl::StatusOr<T> Retry(const BackoffPolicy& policy, Clock& clock,
                        const std::function<absl::StatusOr<T>()>& attempt,
                        const RetryPredicate& retryable = IsTransient) {
  absl::StatusOr<T> result = absl::UnknownError("not attempted");
  absl::Status status = RetryStatus(
      policy, clock,
      [&] {
        result = attempt();
        return result.status();
      },
      retryable);
  if (!status.ok()) return status;
  return result;
}

}  // namespace parley
