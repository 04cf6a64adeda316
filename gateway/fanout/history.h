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
// transients after it). Transients a durable event followed are over and never read.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/redis.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "parley/v1/events.pb.h"

namespace parley::gateway {

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
  // The newest seq the session has published (0 when none), for from_latest.
  virtual absl::StatusOr<uint64_t> LastSeq(const std::string& tenant_id,
                                           const std::string& session_id) = 0;
  // OK when the session exists and belongs to the tenant; NOT_FOUND otherwise (another
  // tenant's session is indistinguishable from a missing one).
  virtual absl::Status CheckAccess(const std::string& tenant_id, const std::string& session_id) = 0;
  // The session's current history epoch (0 when unknown).
  virtual absl::StatusOr<uint64_t> CurrentEpoch(const std::string& tenant_id,
                                                const std::string& session_id) = 0;
  // Where a stream from the start of a turn begins: the seq of its first event (its
  // newest attempt's TurnStarted); while it has not started, a seq no greater than the
  // one its first event will get. 0 when unknown (the caller starts from the newest).
  virtual absl::StatusOr<uint64_t> TurnFirstSeq(const std::string& tenant_id,
                                                const std::string& session_id,
                                                const std::string& turn_id) = 0;
};

// Redis first, store-svc for what Redis no longer (or never) had. Thread-safe: each
// call borrows one of a few blocking Redis connections.
class RedisStoreHistory final : public HistorySource {
 public:
  // `store` must not be null: it answers the access check, the epoch, turns, and the
  // events older than the hot window.
  RedisStoreHistory(RedisEndpoint redis, RedisKeys keys,
                    std::shared_ptr<store::v1::StoreService::StubInterface> store);

  absl::StatusOr<std::vector<v1::Event>> ReadFrom(const std::string& tenant_id,
                                                  const std::string& session_id, uint64_t from_seq,
                                                  int max) override;
  absl::StatusOr<uint64_t> LastSeq(const std::string& tenant_id,
                                   const std::string& session_id) override;
  absl::Status CheckAccess(const std::string& tenant_id, const std::string& session_id) override;
  absl::StatusOr<uint64_t> CurrentEpoch(const std::string& tenant_id,
                                        const std::string& session_id) override;
  absl::StatusOr<uint64_t> TurnFirstSeq(const std::string& tenant_id, const std::string& session_id,
                                        const std::string& turn_id) override;

 private:
  absl::StatusOr<std::unique_ptr<RedisConnection>> Borrow();
  void Return(std::unique_ptr<RedisConnection> connection);
  // TurnFirstSeq before session-svc has reported the turn's first seq: the hot window,
  // newest first, down to the turn's TurnStarted or to events older than the turn.
  absl::StatusOr<uint64_t> FindTurnStart(RedisConnection& redis, const std::string& session_id,
                                         const v1::Turn& turn);
  absl::StatusOr<std::vector<v1::Event>> ReadHot(RedisConnection& redis,
                                                 const std::string& session_id, uint64_t from_seq,
                                                 int max);
  // store-svc's GetLastSeq: the durable last seq and the epoch.
  absl::StatusOr<store::v1::GetLastSeqResponse> DurableLastSeq(const std::string& tenant_id,
                                                               const std::string& session_id);
  absl::StatusOr<std::vector<v1::Event>> ReadCold(const std::string& tenant_id,
                                                  const std::string& session_id, uint64_t from_seq,
                                                  int max);

  const RedisEndpoint redis_;
  const RedisKeys keys_;
  std::shared_ptr<store::v1::StoreService::StubInterface> store_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<RedisConnection>> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace parley::gateway
