// The scheduler's threads: one claimer, `slots` turn runners, one lease keeper.
//
// The claimer reserves a free slot before each claim and returns it when the claim
// comes back empty, so a replica never holds more claimed turns than it can run. A wake
// bumps a generation counter; the claimer goes idle only when a claim came back empty
// *after* the newest wake it saw, so a wake that lands during a claim is never lost.
#include "session-svc/scheduler/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace parley::session {
namespace {

namespace store_pb = ::parley::store::v1;

}  // namespace

Scheduler::Scheduler(SchedulerOptions options, StoreStub& store, Signals& signals,
                     ExecutorFactory make_executor, const telemetry::Logger& logger,
                     telemetry::Registry& registry)
    : options_(std::move(options)),
      store_(store),
      signals_(signals),
      make_executor_(std::move(make_executor)),
      logger_(logger),
      claims_(registry.AddCounter("parley_session_claims_total", "Turns claimed by this replica.")
                  .WithLabels({})),
      empty_claims_(registry
                        .AddCounter("parley_session_empty_claims_total",
                                    "Claim attempts that found nothing runnable.")
                        .WithLabels({})),
      running_gauge_(
          registry.AddGauge("parley_session_running_turns", "Turns running on this replica.")
              .WithLabels({})),
      claim_latency_(
          registry
              .AddHistogram("parley_session_claim_seconds", "Latency of ClaimNextTurn calls.", {})
              .WithLabels({})) {}

Scheduler::~Scheduler() {
  if (started_ && !drained_) Drain(absl::ZeroDuration());
}

void Scheduler::Start() {
  {
    absl::MutexLock lock(&mu_);
    free_slots_ = options_.slots;
    ++wake_generation_;  // Look for work at once.
  }
  started_ = true;
  for (int i = 0; i < options_.slots; ++i) slots_.emplace_back([this] { SlotLoop(); });
  claimer_ = std::thread([this] { ClaimLoop(); });
  lease_keeper_ = std::thread([this] { LeaseKeeperLoop(); });
}

void Scheduler::Wake() {
  absl::MutexLock lock(&mu_);
  ++wake_generation_;
}

void Scheduler::Cancel(const std::string& turn_id, const std::string& reason) {
  std::shared_ptr<Running> running;
  {
    absl::MutexLock lock(&mu_);
    auto it = running_.find(turn_id);
    if (it == running_.end()) return;
    running = it->second;
  }
  running->control.Stop(StopReason::kCancelled, reason);
}

std::optional<store_pb::ClaimOnEnqueue> Scheduler::ReserveSlot() {
  if (options_.max_running_per_tenant > 0) return std::nullopt;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ || !claiming_ || free_slots_ == 0) return std::nullopt;
    --free_slots_;
  }
  store_pb::ClaimOnEnqueue claim;
  claim.set_owner(options_.owner);
  claim.set_lease_ttl_ms(absl::ToInt64Milliseconds(options_.lease_ttl));
  return claim;
}

void Scheduler::RunReserved(store_pb::ClaimNextTurnResponse claim) {
  {
    absl::MutexLock lock(&mu_);
    // No claim, or a claim of a turn already running here (the store hands a claim out
    // again to its owner when a retried enqueue finds it unstarted): the slot is free.
    if (!claim.has_turn() || running_.contains(claim.turn().id())) {
      ++free_slots_;
      return;
    }
    if (!stopping_) {
      auto running = std::make_shared<Running>(*options_.clock);
      running->claim = std::move(claim);
      // Claimed while this replica drains: it is handed back unstarted, like the turns
      // Drain found waiting (its slot thread releases it and wakes another replica).
      if (!claiming_) running->control.Stop(StopReason::kHandBack, "WORKER_SHUTDOWN");
      QueueLocked(std::move(running));
      return;
    }
    ++free_slots_;
  }
  // The slot threads are gone: hand it back here so that another replica runs it now
  // rather than after its lease expires.
  store_pb::ReleaseTurnRequest release;
  release.set_tenant_id(claim.session().tenant_id());
  release.set_turn_id(claim.turn().id());
  release.set_owner(options_.owner);
  release.set_lease_epoch(claim.lease_epoch());
  release.set_reason("drain");
  store_pb::ReleaseTurnResponse released;
  if (StoreCall(store_, &StoreStub::ReleaseTurn, release, &released, {.attempts = 3}).ok()) {
    (void)signals_.PublishWake(claim.turn().session_id());
  } else {
    logger_.Warn("could not hand back a turn claimed during shutdown; its lease will expire",
                 {{"turn_id", claim.turn().id()}});
  }
}

void Scheduler::QueueLocked(std::shared_ptr<Running> running) {
  claims_.Increment();
  running_[running->claim.turn().id()] = running;
  ready_.push_back(std::move(running));
  running_gauge_.Set(static_cast<double>(running_.size()));
}

int Scheduler::running() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(running_.size());
}

void Scheduler::ClaimLoop() {
  uint64_t serviced = 0;  // The wake generation a claim last came back empty after.
  bool more = true;       // The last claim found work: there may be more.
  absl::Time next_poll = absl::Now() + options_.poll_interval;
  while (true) {
    uint64_t generation = 0;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [&] {
        return stopping_ || !claiming_ ||
               (free_slots_ > 0 && (more || wake_generation_ != serviced));
      };
      if (!mu_.AwaitWithDeadline(absl::Condition(&ready), next_poll) && free_slots_ == 0) {
        next_poll = absl::Now() + options_.poll_interval;
        continue;  // The poll is due but every slot is busy.
      }
      if (stopping_ || !claiming_) return;
      generation = wake_generation_;
      --free_slots_;  // Reserved for what this claim brings.
    }
    store_pb::ClaimNextTurnRequest request;
    request.set_owner(options_.owner);
    request.set_lease_ttl_ms(absl::ToInt64Milliseconds(options_.lease_ttl));
    request.set_max_running_per_tenant(options_.max_running_per_tenant);
    auto running = std::make_shared<Running>(*options_.clock);
    const absl::Time start = absl::Now();
    absl::Status status = StoreCall(store_, &StoreStub::ClaimNextTurn, request, &running->claim);
    claim_latency_.Observe(absl::ToDoubleSeconds(absl::Now() - start));
    if (!status.ok() || !running->claim.has_turn()) {
      {
        absl::MutexLock lock(&mu_);
        ++free_slots_;
      }
      more = false;
      if (!status.ok()) {
        logger_.Warn("claim failed; retrying at the next poll", {{"error", status.ToString()}});
      } else {
        empty_claims_.Increment();
        serviced = generation;
      }
      next_poll = absl::Now() + options_.poll_interval;
      continue;
    }
    more = true;
    absl::MutexLock lock(&mu_);
    QueueLocked(std::move(running));
  }
}

void Scheduler::SlotLoop() {
  std::unique_ptr<TurnExecutor> executor = make_executor_();
  while (true) {
    std::shared_ptr<Running> running;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this] { return stopping_ || !ready_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (ready_.empty()) return;  // Stopping, and nothing claimed is left to run.
      running = std::move(ready_.front());
      ready_.pop_front();
    }
    const std::string turn_id = running->claim.turn().id();
    const std::string session_id = running->claim.turn().session_id();
    RunResult result = executor->Run(running->claim, running->control);
    bool draining = false;
    {
      absl::MutexLock lock(&mu_);
      running_.erase(turn_id);
      ++free_slots_;
      ++wake_generation_;  // The session may have more queued turns.
      draining = !claiming_;
      running_gauge_.Set(static_cast<double>(running_.size()));
    }
    // A released turn, or the next turn of a session this draining replica will not
    // claim, needs another replica.
    if (result == RunResult::kReleased || draining) (void)signals_.PublishWake(session_id);
    if (result == RunResult::kLeaseLost) {
      logger_.Info("turn lost its lease; another replica owns it",
                   {{"session_id", session_id}, {"turn_id", turn_id}});
    }
  }
}

void Scheduler::Heartbeat(const std::string& turn_id, Running& running) {
  const store_pb::ClaimNextTurnResponse& claim = running.claim;
  store_pb::HeartbeatTurnRequest request;
  request.set_tenant_id(claim.session().tenant_id());
  request.set_turn_id(turn_id);
  request.set_owner(options_.owner);
  request.set_lease_epoch(claim.lease_epoch());
  request.set_lease_ttl_ms(absl::ToInt64Milliseconds(options_.lease_ttl));
  request.set_first_seq(running.control.first_seq.load());
  request.set_last_seq(running.control.last_seq.load());
  request.set_steps(running.control.steps.load());
  store_pb::HeartbeatTurnResponse response;
  absl::Status status = StoreCall(store_, &StoreStub::HeartbeatTurn, request, &response,
                                  {.timeout = options_.lease_ttl / 3});
  if (status.ok()) {
    if (response.cancel_requested()) running.control.Stop(StopReason::kCancelled, "CANCELLED");
    return;
  }
  if (ErrorReason(status) == "LEASE_LOST" || status.code() == absl::StatusCode::kNotFound) {
    // A heartbeat blip is not a death, but a refused one is: another owner has the turn,
    // or the turn just ended here (its seal is published regardless; see Publish).
    running.control.Stop(StopReason::kLeaseLost);
    if (!running.control.committed.load()) {
      logger_.Warn("lease lost; stopping the turn",
                   {{"session_id", claim.turn().session_id()}, {"turn_id", turn_id}});
    }
  }
}

void Scheduler::Reclaim() {
  store_pb::ReclaimExpiredLeasesRequest request;
  store_pb::ReclaimExpiredLeasesResponse response;
  if (!StoreCall(store_, &StoreStub::ReclaimExpiredLeases, request, &response).ok()) return;
  if (response.turns_size() == 0) return;
  logger_.Info("reclaimed turns of lost workers", {{"count", response.turns_size()}});
  Wake();
  for (const v1::Turn& turn : response.turns()) (void)signals_.PublishWake(turn.session_id());
}

void Scheduler::LeaseKeeperLoop() {
  const absl::Duration interval = options_.lease_ttl / 3;
  absl::Time next_reclaim = absl::Now();
  while (true) {
    std::vector<std::pair<std::string, std::shared_ptr<Running>>> turns;
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this] { return stopping_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), interval) && running_.empty()) return;
      turns.assign(running_.begin(), running_.end());
    }
    for (auto& [turn_id, running] : turns) Heartbeat(turn_id, *running);
    if (absl::Now() >= next_reclaim) {
      Reclaim();
      next_reclaim = absl::Now() + std::min(options_.poll_interval, options_.lease_ttl / 2);
    }
  }
}

void Scheduler::Drain(absl::Duration grace) {
  if (!started_ || drained_) return;
  drained_ = true;
  {
    absl::MutexLock lock(&mu_);
    claiming_ = false;
    // Claimed but not started: hand back like any turn without output.
    for (const std::shared_ptr<Running>& waiting : ready_) {
      waiting->control.Stop(StopReason::kHandBack, "WORKER_SHUTDOWN");
    }
  }
  claimer_.join();
  {
    absl::MutexLock lock(&mu_);
    auto idle = [this] { return running_.empty(); };
    if (!mu_.AwaitWithTimeout(absl::Condition(&idle), grace)) {
      logger_.Info("drain: handing back the turns still running",
                   {{"count", static_cast<int64_t>(running_.size())}});
      for (auto& [turn_id, running] : running_) {
        running->control.Stop(StopReason::kHandBack, "WORKER_SHUTDOWN");
      }
    }
    mu_.Await(absl::Condition(&idle));
    stopping_ = true;
  }
  for (std::thread& slot : slots_) slot.join();
  lease_keeper_.join();
}

}  // namespace parley::session
