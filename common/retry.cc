#include "common/retry.h"

#include <algorithm>
#include <cmath>

namespace parley {

absl::Duration BackoffDelay(const BackoffPolicy& policy, int retry_index, double unit_random) {
  double base_s =
      absl::ToDoubleSeconds(policy.initial) * std::pow(policy.multiplier, std::max(0, retry_index));
  double capped_s = std::min(base_s, absl::ToDoubleSeconds(policy.max));
  double jitter = std::clamp(policy.jitter, 0.0, 1.0) * std::clamp(unit_random, 0.0, 1.0);
  return absl::Seconds(capped_s * (1.0 - jitter));
}

bool IsTransient(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kDeadlineExceeded:
      return true;
    default:
      return false;
  }
}

absl::Status RetryStatus(
    const BackoffPolicy& policy, Clock& clock, const std::function<absl::Status()>& attempt,
    const RetryPredicate& retryable,
    const std::function<void(int, absl::Duration, const absl::Status&)>& on_retry) {
  absl::BitGen bitgen;
  const absl::Time start = clock.Now();
  for (int attempt_index = 0;; ++attempt_index) {
    absl::Status status = attempt();
    if (status.ok() || !retryable(status)) return status;
    if (policy.max_attempts > 0 && attempt_index + 1 >= policy.max_attempts) return status;
    absl::Duration delay = BackoffDelay(policy, attempt_index, absl::Uniform(bitgen, 0.0, 1.0));
    if (clock.Now() - start + delay > policy.max_elapsed) return status;
    if (on_retry) on_retry(attempt_index, delay, status);
    clock.SleepFor(delay);
  }
}

}  // namespace parley
