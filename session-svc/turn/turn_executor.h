// TurnExecutor: runs one claimed turn from its lease to its seal.
//
// Order of work, each step fenced by the turn's lease epoch:
//   1. take the session's Redis lease (EventPublisher::AcquireLease) with the floor of
//      the durable last seq; if Redis lost the session's state, start a new history
//      epoch first (AdvanceEpoch) — see session-svc/README.md, "Epoch recovery";
//   2. publish the TurnSealed a predecessor left out (it completed, then lost the race
//      for the lease to us);
//   3. a recovered turn (its owner died) is retried when it emitted no output and has
//      attempts left, else ended FAILED (WORKER_LOST) with its partial output;
//   4. a turn that waited longer than the queued TTL ends CANCELLED unstarted;
//   5. TurnStarted, then the runner's content, each event with the next seq;
//   6. TurnCompleted, CompleteTurn (messages committed, lease released), TurnSealed.
// A stop request (TurnControl) ends the runner: cancel → CANCELLED with partial output;
// hand-back (drain) → ReleaseTurn, or FAILED (WORKER_SHUTDOWN) once output exists; a
// lost lease → nothing more is written.
//
// One executor per slot thread: it owns that slot's Redis connection. Not thread-safe.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "common/clock.h"
#include "common/events/publisher.h"
#include "common/redis.h"
#include "session-svc/store_call.h"
#include "session-svc/turn/turn_control.h"
#include "session-svc/turn/turn_runner.h"
#include "telemetry/log.h"

namespace parley::session {

struct ExecutorOptions {
  std::string owner;  // Lease owner: this replica's worker id.
  absl::Duration lease_ttl = absl::Seconds(10);
  int max_attempts = 2;
  absl::Duration queued_turn_ttl = absl::Hours(24);
  RedisEndpoint redis;
  std::string key_prefix;
  // Replicas each publish waits for (PublisherOptions::wait_replicas): unset, 1 on a
  // Redis Cluster and 0 on a single server.
  std::optional<int> redis_wait_replicas;
  absl::Duration redis_wait_timeout = absl::Milliseconds(50);
};

// How a run ended, for the scheduler.
enum class RunResult {
  kCompleted,  // Terminal state committed (or it was already).
  kReleased,   // Handed back to the queue: some replica must be woken for it.
  kLeaseLost,  // Another owner has it; nothing more was written.
  kAbandoned,  // Could not finish (store or Redis unreachable); the lease will expire.
};

class TurnExecutor {
 public:
  // `store`, `runner`, `clock` and `logger` must outlive the executor.
  TurnExecutor(ExecutorOptions options, StoreStub& store, TurnRunner& runner, Clock& clock,
               const telemetry::Logger& logger);
  ~TurnExecutor();

  RunResult Run(const store::v1::ClaimNextTurnResponse& claim, TurnControl& control);

 private:
  class Run_;  // The state of one run; defined in the .cc.

  // The slot's Redis connection and publisher, (re)connected on demand.
  absl::Status EnsureRedis();
  void DropRedis();

  const ExecutorOptions options_;
  StoreStub& store_;
  TurnRunner& runner_;
  Clock& clock_;
  const telemetry::Logger& logger_;
  std::unique_ptr<RedisConnection> redis_;
  std::unique_ptr<EventPublisher> publisher_;
};

}  // namespace parley::session
