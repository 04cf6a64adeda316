// Where a stream's past comes from when it is not arriving live.
//
// The hot window is the session's Redis stream (recent events, transient ones
// included); older events live only in Postgres, read through store-svc. ReadFrom
// returns events with seq >= from_seq in order, starting at from_seq whenever either
// source still has it.
//
// Transient events (RetryScheduled) are not history, but one that is still in effect
// is part of the session's present: a subscriber that catches up through a read must
// see it just as a live one did. A transient is in effect while no durable event has
// followed it, i.e. while it carries the seq of the newest entry of the Redis stream
// (entry ids are "<seq>-0" for a durable event, "<seq>-1", "<seq>-2", … for the
// transients after it; common/events/event_log_reader.h reads them). Transients a
// durable event followed are over and never read.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/events/event_log_reader.h"
#include "common/redis.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "parley/v1/events.pb.h"

namespace parley::gateway {

// What store-svc knows of a session when a stream starts.
struct StreamStart {
  uint64_t durable_last_seq = 0;  // 0: no event persisted yet.
  uint64_t epoch = 0;
  std::optional<v1::Turn> turn;  // The turn asked for, if any.
};

// Whether `turn` ended without ever starting (cancelled while queued): nothing was, or
// ever will be, published for it. A turn that started has a first seq once it ended.
inline bool EndedWithoutStarting(const v1::Turn& turn) {
  return turn.first_seq() == 0 && turn.status() != v1::TURN_STATUS_QUEUED &&
         turn.status() != v1::TURN_STATUS_RUNNING;
}

class HistorySource {
 public:
  virtual ~HistorySource() = default;
  // Up to `max` events in order: the durable ones with seq >= from_seq, and the
  // transient ones still in effect (those after the newest durable event, carrying its
  // seq, which may be from_seq - 1). Never a transient that a durable event followed.
  // Empty when nothing that new exists yet. from_seq >= 1.
  virtual absl::StatusOr<std::vector<v1::Event>> ReadFrom(const std::string& tenant_id,
                                                          const std::string& session_id,
                                                          uint64_t from_seq, int max) = 0;
  // Everything a stream needs before it starts, in one store-svc call: NOT_FOUND when
  // the session is missing or another tenant's (indistinguishable), or when turn_id is
  // set and is not a turn of the session.
  virtual absl::StatusOr<StreamStart> Start(const std::string& tenant_id,
                                            const std::string& session_id,
                                            const std::string& turn_id) = 0;
  // The newest seq the session has published (0 when none), for from_latest: the hot
  // window's, else the durable one `start` holds.
  virtual absl::StatusOr<uint64_t> LastSeq(const std::string& session_id,
                                           const StreamStart& start) = 0;
  // Where a stream from the start of `start.turn` begins: the seq of its first event (its
  // newest attempt's TurnStarted); while it has not started, a seq no greater than the
  // one its first event will get, fixed now (the turn may start and end before the
  // stream subscribes). 0 only for a turn that ended without starting (the caller
  // starts from the newest).
  virtual absl::StatusOr<uint64_t> TurnFirstSeq(const std::string& session_id,
                                                const StreamStart& start) = 0;
};

// Redis first, store-svc for what Redis no longer (or never) had. Thread-safe: each
// call borrows one of a few blocking Redis connections.
class RedisStoreHistory final : public HistorySource {
 public:
  // `store` must not be null: it answers Start and holds the events older than the hot
  // window.
  RedisStoreHistory(RedisEndpoint redis, RedisKeys keys,
                    std::shared_ptr<store::v1::StoreService::StubInterface> store);

  absl::StatusOr<std::vector<v1::Event>> ReadFrom(const std::string& tenant_id,
                                                  const std::string& session_id, uint64_t from_seq,
                                                  int max) override;
  absl::StatusOr<StreamStart> Start(const std::string& tenant_id, const std::string& session_id,
                                    const std::string& turn_id) override;
  absl::StatusOr<uint64_t> LastSeq(const std::string& session_id,
                                   const StreamStart& start) override;
  absl::StatusOr<uint64_t> TurnFirstSeq(const std::string& session_id,
                                        const StreamStart& start) override;

 private:
  absl::StatusOr<std::unique_ptr<RedisConnection>> Borrow();
  void Return(std::unique_ptr<RedisConnection> connection);
  // TurnFirstSeq before session-svc has reported the turn's first seq: the hot window,
  // newest first, down to the turn's TurnStarted or to events older than the turn.
  absl::StatusOr<uint64_t> FindTurnStart(RedisConnection& redis, const std::string& session_id,
                                         const StreamStart& start);
  absl::StatusOr<std::vector<v1::Event>> ReadHot(RedisConnection& redis,
                                                 const std::string& session_id, uint64_t from_seq,
                                                 int max);
  absl::StatusOr<std::vector<v1::Event>> ReadCold(const std::string& tenant_id,
                                                  const std::string& session_id, uint64_t from_seq,
                                                  int max);

  const RedisEndpoint redis_;
  const EventLogReader log_;
  std::shared_ptr<store::v1::StoreService::StubInterface> store_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<RedisConnection>> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace parley::gateway
