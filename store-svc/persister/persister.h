// EventPersister: moves session events from Redis into Postgres, in batches, so that
// durability never sits on a turn's latency path (DESIGN §2.6).
//
// Contract with the publisher (common/events/publisher.h, used by session-svc): each
// event is appended to the session's stream `{s:<id>}:ev`, which this reads through
// EventLogReader (common/events/event_log_reader.h, the one parser of that format);
// after the append the publisher adds the session to the persist queue (ZADD NX, a
// sorted set scored by first-marked time in ms).
//
// One pass (RunOnce) takes the oldest queued sessions; for each it takes a short
// per-session lock in Redis (SET NX PX, so replicas share the work without writing the
// same batch twice), reads the stream from the durable last seq + 1 (Postgres is the
// source of truth for the cursor, so a crash anywhere loses and duplicates nothing),
// appends through the same code as AppendEvents (idempotent on (session, seq)),
// records the persisted seq in `{s:<id>}:persisted` only after the commit, and then
// removes the session from the queue — re-adding it if events arrived meanwhile (a
// check after the removal, so no interleaving with a publisher loses a mark).
//
// Thread: Start() runs passes on one thread every `poll_interval` until Stop(). It has
// its own blocking Redis connection, reconnected with capped backoff.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/events/event_log_reader.h"
#include "common/redis.h"
#include "store-svc/db/pool.h"
#include "telemetry/log.h"
#include "telemetry/metrics.h"

namespace parley::store {

struct PersisterOptions {
  RedisEndpoint redis;
  std::string key_prefix;  // Tests isolate their keys; empty in production.
  std::string owner;       // Unique per replica, e.g. "<host>/<pid>".
  absl::Duration poll_interval = absl::Milliseconds(50);
  // How long a session stays with a replica that stopped answering (it is extended
  // after every batch while the replica works): the delay before another replica
  // picks up the sessions of a crashed one.
  absl::Duration lock_ttl = absl::Seconds(5);
  int64_t batch_events = 2000;
  int64_t sessions_per_pass = 200;
  // Called after each batch commits to Postgres and before its persisted seq is
  // recorded in Redis. A non-OK answer ends the session's flush right there, exactly as
  // a crash or a lost Redis at that point would; tests inject that failure through it.
  // Empty in production.
  std::function<absl::Status(const std::string& session_id, uint64_t committed_seq)> after_commit;
};

class EventPersister {
 public:
  // `pool`, `logger` and `registry` must outlive the persister.
  EventPersister(PersisterOptions options, PgPool& pool, const telemetry::Logger& logger,
                 telemetry::Registry& registry);
  ~EventPersister();  // Stops the thread.

  void Start();
  void Stop();

  // One pass over the queue. Returns the number of events written to Postgres.
  absl::StatusOr<int64_t> RunOnce();

 private:
  absl::Status Connect();
  // Persists everything the stream holds for one session; returns events written.
  absl::StatusOr<int64_t> FlushSession(const std::string& session_id);
  void Loop();

  const PersisterOptions options_;
  const RedisKeys keys_;
  const EventLogReader log_;
  PgPool& pool_;
  const telemetry::Logger& logger_;
  std::unique_ptr<RedisConnection> redis_;
  telemetry::Counter& events_persisted_;
  telemetry::Counter& flush_errors_;
  telemetry::Gauge& lag_seconds_;
  telemetry::Histogram& flush_seconds_;
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace parley::store
