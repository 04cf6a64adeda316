// Scheduler: this replica's share of the turn queue.
//
// A fixed number of turn slots. One claim thread takes turns from store-svc
// (ClaimNextTurn: SKIP LOCKED, tenant-fair, a lease with a fencing epoch) whenever a
// slot is free and there may be work: after a wake (Signals, a local enqueue, a freed
// slot) or, lacking one, every poll interval. Slot threads run the claimed turns
// (TurnExecutor). The lease keeper heartbeats every running turn at a third of the
// lease, stops a turn whose lease was lost, delivers cancels the heartbeat reports,
// and makes expired leases of dead replicas claimable again (ReclaimExpiredLeases).
//
//   Scheduler scheduler(options, store, signals, make_executor, logger, registry);
//   scheduler.Start();
//   ...                                   // SIGTERM
//   scheduler.Drain(absl::Seconds(10));  // stop claiming, finish or hand back, join
//
// Thread-safe: Wake() and Cancel() may be called from any thread.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "session-svc/scheduler/signals.h"
#include "session-svc/store_call.h"
#include "session-svc/turn/turn_control.h"
#include "session-svc/turn/turn_executor.h"
#include "telemetry/log.h"
#include "telemetry/metrics.h"

namespace parley::session {

struct SchedulerOptions {
  std::string owner;
  int slots = 16;
  absl::Duration lease_ttl = absl::Seconds(10);
  absl::Duration poll_interval = absl::Seconds(1);
  uint32_t max_running_per_tenant = 0;
  // Measures the waits of the turns it runs (their TurnControl); must outlive the
  // scheduler. The same clock as the executors' and the agent runner's.
  Clock* clock = &RealClock::Get();
};

class Scheduler {
 public:
  using ExecutorFactory = std::function<std::unique_ptr<TurnExecutor>()>;

  // `store`, `signals`, `logger` and `registry` must outlive the scheduler.
  Scheduler(SchedulerOptions options, StoreStub& store, Signals& signals,
            ExecutorFactory make_executor, const telemetry::Logger& logger,
            telemetry::Registry& registry);
  ~Scheduler();  // Drains with no grace period if Drain() was not called.

  void Start();
  // Something may be claimable: claim soon.
  void Wake();
  // Stops the turn if it runs here (no-op otherwise). `reason` becomes TurnError.reason.
  void Cancel(const std::string& turn_id, const std::string& reason);
  // Stops claiming; lets running turns finish for up to `grace`; then hands the rest
  // back (no output yet) or fails them (WORKER_SHUTDOWN); joins every thread.
  void Drain(absl::Duration grace);

  int running() const;

  // Claim on enqueue (store::v1::ClaimOnEnqueue): reserves a free slot for a turn the
  // store may claim for this replica while enqueuing it, and returns the claim's
  // parameters; nullopt when no slot is free, the replica is draining, or a per-tenant
  // cap is set (the store then never claims on enqueue). Every reservation must end in
  // RunReserved, with the claim the store made or an empty one.
  std::optional<store::v1::ClaimOnEnqueue> ReserveSlot();
  // Runs `claim` in the slot ReserveSlot reserved; without a turn, or with one already
  // running here, frees the slot. While draining the turn is handed back unstarted.
  void RunReserved(store::v1::ClaimNextTurnResponse claim);

 private:
  struct Running {
    explicit Running(Clock& clock) : control(clock) {}
    store::v1::ClaimNextTurnResponse claim;
    TurnControl control;
  };

  // A claimed turn (in its reserved slot) joins the turns the slot threads run.
  void QueueLocked(std::shared_ptr<Running> running) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ClaimLoop();
  void SlotLoop();
  void LeaseKeeperLoop();
  void Heartbeat(const std::string& turn_id, Running& running);
  void Reclaim();

  const SchedulerOptions options_;
  StoreStub& store_;
  Signals& signals_;
  const ExecutorFactory make_executor_;
  const telemetry::Logger& logger_;
  telemetry::Counter& claims_;
  telemetry::Counter& empty_claims_;
  telemetry::Gauge& running_gauge_;
  telemetry::Histogram& claim_latency_;

  mutable absl::Mutex mu_;
  uint64_t wake_generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool claiming_ ABSL_GUARDED_BY(mu_) = true;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int free_slots_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<std::shared_ptr<Running>> ready_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<Running>> running_ ABSL_GUARDED_BY(mu_);

  std::thread claimer_;
  std::thread lease_keeper_;
  std::vector<std::thread> slots_;
  bool started_ = false;
  bool drained_ = false;
};

}  // namespace parley::session
