// EventPublisher: the only way events enter a session's stream.
//
// Each event goes to Redis in one Lua script that, atomically:
//   1. checks the writer's fencing epoch against the session's lease hash — a writer
//      whose lease was taken over (a zombie) gets LEASE_LOST and writes nothing;
//   2. checks the seq: a durable event must be last_seq + 1 (SEQ_MISMATCH otherwise);
//      a transient event carries the current last_seq and gets the next sub-id;
//   3. appends to the stream `{s:<id>}:ev` with entry id "<seq>-<sub>" (sub 0 for
//      durable events) and fields e=<serialized parley.v1.Event>, t=<publish ms>;
//   4. publishes the serialized event on the session channel `{s:<id>}`.
// The same round trip then marks the session for the persister (ZADD NX on the
// persist queue). Every key of a session shares the `{s:<id>}` hash tag, so the
// script runs on one Redis Cluster slot; on a cluster it publishes with SPUBLISH
// (sharded pub/sub), and the persist-queue mark goes to its own slot's node.
//
//   EventPublisher publisher(redis, {}, RealClock::Get());
//   absl::StatusOr<uint64_t> last_seq = publisher.AcquireLease(session, owner, epoch);
//   if (!last_seq.ok()) return last_seq.status();
//   event.set_seq(*last_seq + 1);
//   if (absl::Status published = publisher.Publish(event, epoch); !published.ok()) ...
//
// What it writes is read back only through EventLogReader (event_log_reader.h).
//
// Trim() drops stream entries below what store-svc has persisted, keeping at most
// `hot_window_events` entries and none older than `hot_window_age`; entries not yet
// persisted are never dropped. Publish() trims every `trim_every` events.
//
// On a Redis Cluster every publish also waits (WAIT, pipelined behind the script on the
// same node) until `wait_replicas` replicas have the write or `wait_timeout` passed, so
// an acknowledged event is normally on a replica before the turn goes on. WAIT does not
// make replication synchronous: CheckPublished() is how a writer learns, after a failed
// or refused publish, what the stream really holds (common/README.md, "Publishing across
// a primary failover").
//
// Not thread-safe: one publisher per connection, used by one thread at a time.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/events/event_log_reader.h"
#include "common/redis.h"
#include "parley/v1/events.pb.h"

namespace parley {

struct PublisherOptions {
  std::string key_prefix;  // Tests isolate their keys; empty in production.
  int64_t hot_window_events = 10000;
  absl::Duration hot_window_age = absl::Minutes(10);
  int64_t trim_every = 256;
  // Replicas each publish (and lease acquisition) waits for with WAIT; 0 = no WAIT.
  // Unset: 1 on a Redis Cluster, 0 on a single server.
  std::optional<int> wait_replicas;
  // How long one WAIT may block. A publish whose WAIT times out still succeeded (the
  // event is on the primary); it is counted in replica_wait_shortfalls().
  absl::Duration wait_timeout = absl::Milliseconds(50);
};

// What the stream holds for a batch whose publish failed or was refused
// (EventPublisher::CheckPublished).
struct PublishCheck {
  enum class Outcome {
    kPublished,     // The batch is the stream's tail: it ran, only the reply was lost.
    kNotPublished,  // The stream ends right before the batch: publish it again as it is.
    kStreamBehind,  // The stream ends before the batch: events acknowledged earlier were
                    // lost (a failover to a replica that lacked them); publish again from
                    // `last_seq` + 1.
    kLeaseLost,     // A newer epoch holds the session: another writer, stop.
    kLeaseBehind,   // The lease hash holds an older epoch, or none at all (`lease_epoch`
                    // 0): our lease acquisition was lost; take the lease again.
    kConflict,      // Other events sit where ours should be under our epoch: a second
                    // writer, stop.
  };
  Outcome outcome = Outcome::kNotPublished;
  uint64_t last_seq = 0;     // The lease hash's last_seq.
  uint64_t lease_epoch = 0;  // The lease hash's epoch (0: no lease hash).
};

class EventPublisher {
 public:
  // `redis` and `clock` must outlive the publisher.
  EventPublisher(RedisConnection& redis, PublisherOptions options, Clock& clock);

  // Makes `epoch` the session's fencing epoch (it may only grow) and records `owner`.
  // Returns the last seq published in Redis (0 when the stream holds nothing, e.g.
  // after a flush: the caller then continues from the durable last seq), raised to
  // `floor_seq`. Errors: FAILED_PRECONDITION "LEASE_LOST" when a higher epoch already
  // holds the lease.
  absl::StatusOr<uint64_t> AcquireLease(const std::string& session_id, const std::string& owner,
                                        uint64_t epoch, uint64_t floor_seq = 0);

  // AcquireLease with more said and asked in its one round trip.
  struct LeaseRequest {
    uint64_t floor_seq = 0;
    // The session held a lease before (its lease epoch is past 1), so its lease hash
    // must still be in Redis. If it is gone (a flush, a failover without the data),
    // nothing is written and the answer is FAILED_PRECONDITION "STATE_LOST": the
    // writer recovers the history epoch first (session-svc/README.md).
    bool expect_existing = false;
    // A command run right behind the lease script (after the lease is taken, so no
    // older writer's publish can follow what it reads); its reply is Lease::read.
    std::vector<std::string> read;
  };
  struct Lease {
    uint64_t last_seq = 0;
    RedisReply read;  // Null without LeaseRequest::read.
  };
  absl::StatusOr<Lease> AcquireLease(const std::string& session_id, const std::string& owner,
                                     uint64_t epoch, LeaseRequest request);

  // Appends and publishes `event` under `lease_epoch`. Errors: FAILED_PRECONDITION with
  // ErrorInfo "LEASE_LOST" (metadata lease_epoch) or "SEQ_MISMATCH" (metadata
  // last_seq); UNAVAILABLE when Redis is unreachable.
  absl::Status Publish(const v1::Event& event, uint64_t lease_epoch);

  // Publishes `events` (one session's, in seq order, transient ones carrying the seq of
  // the durable event before them) in one round trip, as Publish would one by one. All
  // or nothing: a batch refused for its epoch or a seq writes no event. Errors: as
  // Publish.
  absl::Status PublishBatch(const std::vector<v1::Event>& events, uint64_t lease_epoch);

  // After Publish/PublishBatch of `events` under `lease_epoch` failed UNAVAILABLE (the
  // script may or may not have run) or was refused with SEQ_MISMATCH: reads the lease
  // hash and the stream's tail in one round trip and says what happened (PublishCheck);
  // marks the session for the persister again (the cut-off call may have missed that).
  // `events` must be exactly what was sent (same bytes): a batch counts as published
  // only when the stream's newest entries are those events. Errors: the connection's.
  absl::StatusOr<PublishCheck> CheckPublished(const std::vector<v1::Event>& events,
                                              uint64_t lease_epoch);

  // Publishes whose WAIT returned before `wait_replicas` replicas had the write.
  int64_t replica_wait_shortfalls() const { return replica_wait_shortfalls_; }
  // The replicas each publish waits for (options resolved for this connection).
  int wait_replicas() const { return wait_replicas_; }

  // Trims the session's hot window (see above).
  absl::Status Trim(const std::string& session_id);

 private:
  absl::StatusOr<RedisReply> RunScript(const std::string& sha, const std::string& body,
                                       std::vector<std::string> keys_and_args, int key_count,
                                       std::vector<std::string> extra_command = {},
                                       RedisReply* extra_reply = nullptr);
  // WAIT behind a write, when this publisher waits for replicas; else nothing.
  std::vector<std::vector<std::string>> WaitCommands() const;

  RedisConnection& redis_;
  const PublisherOptions options_;
  const RedisKeys keys_;
  const EventLogReader log_;
  Clock& clock_;
  const std::string publish_script_;  // PUBLISH or, on a cluster, SPUBLISH.
  const std::string publish_batch_script_;
  std::string publish_sha_;
  std::string publish_batch_sha_;
  std::string acquire_sha_;
  int64_t since_trim_ = 0;
  const int wait_replicas_;
  int64_t replica_wait_shortfalls_ = 0;
};

}  // namespace parley
