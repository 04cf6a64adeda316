// Time as a dependency. Code that waits, times out or retries takes a Clock&, so tests
// drive it with FakeClock and never really sleep.
//
//   void Poll(Clock& clock) { while (!Ready()) clock.SleepFor(absl::Milliseconds(10)); }
//   FakeClock clock;  Poll(clock);  EXPECT_EQ(clock.total_slept(), ...);
#pragma once

#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace parley {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
  // Blocks the calling thread for `duration` of this clock's time.
  virtual void SleepFor(absl::Duration duration) = 0;
  // With `mu` held, waits until `condition` holds or `timeout` of this clock's time has
  // passed, releasing `mu` meanwhile (as absl::Mutex::AwaitWithTimeout). Returns whether
  // the condition holds at the end: interruptible sleeps (a retry's backoff that a cancel
  // must cut short) go through here.
  virtual bool AwaitWithTimeout(absl::Mutex& mu, const absl::Condition& condition,
                                absl::Duration timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;
};

// Wall-clock time and real sleeps. Thread-safe; one process-wide instance.
class RealClock final : public Clock {
 public:
  static RealClock& Get();
  absl::Time Now() override { return absl::Now(); }
  void SleepFor(absl::Duration duration) override { absl::SleepFor(duration); }
  bool AwaitWithTimeout(absl::Mutex& mu, const absl::Condition& condition,
                        absl::Duration timeout) override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return mu.AwaitWithTimeout(condition, timeout);
  }
};

// A clock that moves only when told. SleepFor() does not block: it advances the clock by
// the requested amount and records it, which makes retry and timeout logic
// deterministic. Thread-safe.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000));
  absl::Time Now() override;
  void SleepFor(absl::Duration duration) override;
  // Never blocks: when `condition` does not hold, the whole timeout is slept (recorded,
  // and the clock advanced) and the condition is asked again.
  bool AwaitWithTimeout(absl::Mutex& mu, const absl::Condition& condition,
                        absl::Duration timeout) override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void Advance(absl::Duration duration);

  // Every SleepFor() request so far, in order.
  std::vector<absl::Duration> sleeps();
  absl::Duration total_slept();

 private:
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Duration> sleeps_ ABSL_GUARDED_BY(mu_);
};

}  // namespace parley
