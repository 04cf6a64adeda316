#include "common/clock.h"

namespace parley {

RealClock& RealClock::Get() {
  static RealClock* clock = new RealClock();
  return *clock;
}

FakeClock::FakeClock(absl::Time start) : now_(start) {}

absl::Time FakeClock::Now() {
  absl::MutexLock lock(&mu_);
  return now_;
}

void FakeClock::SleepFor(absl::Duration duration) {
  absl::MutexLock lock(&mu_);
  sleeps_.push_back(duration);
  if (duration > absl::ZeroDuration()) now_ += duration;
}

bool FakeClock::AwaitWithTimeout(absl::Mutex& /*mu*/, const absl::Condition& condition,
                                 absl::Duration timeout) {
  if (condition.Eval()) return true;
  SleepFor(timeout);
  return condition.Eval();
}

void FakeClock::Advance(absl::Duration duration) {
  absl::MutexLock lock(&mu_);
  now_ += duration;
}

std::vector<absl::Duration> FakeClock::sleeps() {
  absl::MutexLock lock(&mu_);
  return sleeps_;
}

absl::Duration FakeClock::total_slept() {
  absl::MutexLock lock(&mu_);
  absl::Duration total;
  for (absl::Duration d : sleeps_) total += d;
  return total;
}

}  // namespace parley
