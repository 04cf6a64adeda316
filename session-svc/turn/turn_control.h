// TurnControl: how the rest of a replica talks to one running turn.
//
// The slot thread running the turn owns the turn's work; the lease keeper, the cancel
// signal and drain reach it only through this object: they ask it to stop (with a
// reason) and read its progress for heartbeats. Every wait inside a turn goes through
// WaitFor(), so a stop request ends any wait at once.
//
//   TurnControl control;
//   std::thread t([&] { while (!control.stopping()) control.WaitFor(absl::Milliseconds(50)); });
//   control.Stop(StopReason::kCancelled, "CANCELLED_BY_USER");  // t returns promptly
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace parley::session {

enum class StopReason {
  kNone,
  kCancelled,  // CancelTurn, INTERRUPT, CloseSession: end the turn CANCELLED.
  kLeaseLost,  // Another owner holds the turn: stop writing anything, at once.
  kHandBack,   // Drain ran out of time: hand the turn back or fail it (WORKER_SHUTDOWN).
};

// Registered by StopSignal::OnStop; destroying it unregisters the hook.
class StopHook {
 public:
  virtual ~StopHook() = default;
};

// What a blocking call inside a turn watches so that a stop request ends it at once.
class StopSignal {
 public:
  virtual ~StopSignal() = default;
  // True once the turn is asked to stop.
  virtual bool stopping() const = 0;
  // Waits up to `duration`; false at once when the turn is asked to stop.
  virtual bool WaitFor(absl::Duration duration) = 0;
  // Runs `hook` once when the turn is asked to stop (at once when it already is): for
  // calls that cannot poll, e.g. ClientContext::TryCancel. The hook must not block.
  // Once the returned handle is destroyed the hook is not running and never will.
  virtual std::unique_ptr<StopHook> OnStop(std::function<void()> hook) = 0;
};

class TurnControl final : public StopSignal {
 public:
  // Waits (WaitFor) are measured by `clock`, which must outlive the control.
  explicit TurnControl(Clock& clock = RealClock::Get()) : clock_(clock) {}

  // Asks the turn to stop. The first reason wins, except that a lost lease overrides
  // everything (nothing may be written after it). `detail` is the machine-readable
  // reason carried into the turn's error (e.g. "INTERRUPTED"). Thread-safe.
  void Stop(StopReason reason, std::string detail = "") {
    {
      absl::MutexLock lock(&mu_);
      if (reason_ != StopReason::kNone && reason != StopReason::kLeaseLost) return;
      reason_ = reason;
      if (!detail.empty() || reason == StopReason::kLeaseLost) detail_ = std::move(detail);
      stopping_.store(true, std::memory_order_release);
    }
    absl::MutexLock lock(&hooks_mu_);
    for (auto& [id, hook] : hooks_) hook();
    hooks_.clear();
  }

  bool stopping() const override { return stopping_.load(std::memory_order_acquire); }
  StopReason reason() const {
    absl::MutexLock lock(&mu_);
    return reason_;
  }
  std::string detail() const {
    absl::MutexLock lock(&mu_);
    return detail_;
  }

  // Waits up to `duration` of the clock's time; returns false at once when the turn is
  // asked to stop, true when the whole duration passed.
  bool WaitFor(absl::Duration duration) override {
    absl::MutexLock lock(&mu_);
    auto stopped = [this]()
                       ABSL_SHARED_LOCKS_REQUIRED(mu_) { return reason_ != StopReason::kNone; };
    return !clock_.AwaitWithTimeout(mu_, absl::Condition(&stopped), duration);
  }

  std::unique_ptr<StopHook> OnStop(std::function<void()> hook) override {
    absl::MutexLock lock(&hooks_mu_);
    if (stopping()) {
      hook();
      return std::make_unique<StopHook>();
    }
    const uint64_t id = ++next_hook_id_;
    hooks_.emplace(id, std::move(hook));
    return std::make_unique<Registration>(*this, id);
  }

  // Progress, published by the slot thread and read by the lease keeper's heartbeats.
  std::atomic<uint64_t> first_seq{0};
  std::atomic<uint64_t> last_seq{0};
  std::atomic<uint32_t> steps{0};
  // Set once CompleteTurn committed the turn: heartbeats refused after it are expected.
  std::atomic<bool> committed{false};

 private:
  Clock& clock_;
  mutable absl::Mutex mu_;
  StopReason reason_ ABSL_GUARDED_BY(mu_) = StopReason::kNone;
  std::string detail_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> stopping_{false};

  class Registration final : public StopHook {
   public:
    Registration(TurnControl& control, uint64_t id) : control_(control), id_(id) {}
    ~Registration() override {
      absl::MutexLock lock(&control_.hooks_mu_);
      control_.hooks_.erase(id_);
    }

   private:
    TurnControl& control_;
    const uint64_t id_;
  };
  // Hooks run under hooks_mu_, so unregistering waits for a running hook to return.
  absl::Mutex hooks_mu_;
  absl::flat_hash_map<uint64_t, std::function<void()>> hooks_ ABSL_GUARDED_BY(hooks_mu_);
  uint64_t next_hook_id_ ABSL_GUARDED_BY(hooks_mu_) = 0;
};

}  // namespace parley::session
