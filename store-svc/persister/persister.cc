#include "store-svc/persister/persister.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/retry.h"
#include "store-svc/api/store_service.h"

namespace parley::store {
namespace {

// Deletes the lock only if we still own it: a pass that outlived its lock must not
// release a lock another replica has taken since.
constexpr char kReleaseLock[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
    "return 0";

// Extends the lock only if we still own it.
constexpr char kExtendLock[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
    "end return 0";

}  // namespace

EventPersister::EventPersister(PersisterOptions options, PgPool& pool,
                               const telemetry::Logger& logger, telemetry::Registry& registry)
    : options_(std::move(options)),
      keys_(options_.key_prefix),
      log_(keys_),
      pool_(pool),
      logger_(logger),
      events_persisted_(
          registry
              .AddCounter("parley_persister_events_total", "Events moved from Redis into Postgres.")
              .WithLabels({})),
      flush_errors_(registry
                        .AddCounter("parley_persister_errors_total",
                                    "Session flushes that failed and will be retried.")
                        .WithLabels({})),
      lag_seconds_(registry
                       .AddGauge("parley_persister_lag_seconds",
                                 "Age of the oldest session waiting to be persisted.")
                       .WithLabels({})),
      flush_seconds_(registry
                         .AddHistogram("parley_persister_flush_seconds",
                                       "Time to persist one session's pending events.", {})
                         .WithLabels({})) {}

EventPersister::~EventPersister() { Stop(); }

void EventPersister::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void EventPersister::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

absl::Status EventPersister::Connect() {
  if (redis_ && !redis_->broken()) return absl::OkStatus();
  absl::StatusOr<std::unique_ptr<RedisConnection>> connection =
      RedisConnection::Connect(options_.redis, absl::Seconds(2));
  if (!connection.ok()) return connection.status();
  redis_ = *std::move(connection);
  return absl::OkStatus();
}

void EventPersister::Loop() {
  BackoffPolicy backoff{.initial = absl::Seconds(1), .max = absl::Seconds(30)};
  int failures = 0;
  absl::BitGen bitgen;
  while (!stop_.HasBeenNotified()) {
    absl::StatusOr<int64_t> written = RunOnce();
    absl::Duration wait = options_.poll_interval;
    if (!written.ok()) {
      logger_.Warn("persister pass failed", {{"error", written.status().ToString()}});
      wait = BackoffDelay(backoff, failures++, absl::Uniform(bitgen, 0.0, 1.0));
    } else {
      failures = 0;
      if (*written > 0) continue;  // More may be waiting: go again at once.
    }
    stop_.WaitForNotificationWithTimeout(wait);
  }
}

absl::StatusOr<int64_t> EventPersister::RunOnce() {
  if (absl::Status connected = Connect(); !connected.ok()) return connected;
  absl::StatusOr<RedisReply> queued =
      redis_->Command({"ZRANGE", keys_.PersistQueue(), "0",
                       absl::StrCat(options_.sessions_per_pass - 1), "WITHSCORES"});
  if (!queued.ok()) return queued.status();
  const redisReply* list = queued->get();
  if (list->elements >= 2) {
    double oldest_ms = 0;
    (void)absl::SimpleAtod(ReplyString(list->element[1]), &oldest_ms);
    lag_seconds_.Set(std::max(0.0, absl::ToUnixMillis(absl::Now()) / 1000.0 - oldest_ms / 1000.0));
  } else {
    lag_seconds_.Set(0);
  }
  int64_t total = 0;
  for (size_t i = 0; i + 1 < list->elements; i += 2) {
    const std::string session_id = ReplyString(list->element[i]);
    const std::string lock = keys_.PersisterLock(session_id);
    absl::StatusOr<RedisReply> locked =
        redis_->Command({"SET", lock, options_.owner, "NX", "PX",
                         absl::StrCat(absl::ToInt64Milliseconds(options_.lock_ttl))});
    if (!locked.ok()) return locked.status();
    if ((*locked)->type == REDIS_REPLY_NIL) continue;  // Another replica has it.
    absl::Time start = absl::Now();
    absl::StatusOr<int64_t> written = FlushSession(session_id);
    flush_seconds_.Observe(absl::ToDoubleSeconds(absl::Now() - start));
    (void)redis_->Command({"EVAL", kReleaseLock, "1", lock, options_.owner});
    if (!written.ok()) {
      flush_errors_.Increment();
      logger_.Warn("persisting a session failed",
                   {{"session_id", session_id}, {"error", written.status().ToString()}});
      if (written.status().code() == absl::StatusCode::kUnavailable) return written.status();
      continue;
    }
    total += *written;
  }
  return total;
}

absl::StatusOr<int64_t> EventPersister::FlushSession(const std::string& session_id) {
  auto session = pool_.Transact<std::pair<std::string, int64_t>>(
      [&](pqxx::work& tx) -> absl::StatusOr<std::pair<std::string, int64_t>> {
        pqxx::result row = Exec(
            tx,
            "SELECT tenant_id, (SELECT coalesce(max(seq), 0) FROM events WHERE session_id = $1) "
            "FROM sessions WHERE id = $1",
            session_id);
        if (row.empty()) return std::make_pair(std::string(), int64_t{0});
        return std::make_pair(row[0][0].as<std::string>(), row[0][1].as<int64_t>());
      });
  if (!session.ok()) return session.status();
  if (session->first.empty()) {
    // The session was deleted: its events have nowhere to go.
    (void)redis_->Command({"ZREM", keys_.PersistQueue(), session_id});
    return 0;
  }
  uint64_t durable = static_cast<uint64_t>(session->second);
  int64_t written = 0;
  for (;;) {
    absl::StatusOr<std::vector<EventLogEntry>> entries = log_.ReadForward(
        *redis_, session_id, EntryId{.seq = durable + 1}, static_cast<int>(options_.batch_events));
    if (!entries.ok()) return entries.status();
    if (entries->empty()) break;
    store_pb::AppendEventsRequest batch;
    batch.set_tenant_id(session->first);
    batch.set_session_id(session_id);
    for (const EventLogEntry& entry : *entries) {
      if (!entry.event.has_value()) continue;
      absl::StatusOr<::parley::v1::Event> event = entry.Parse(session_id);
      if (!event.ok()) return event.status();
      event->set_seq(entry.id.seq);
      *batch.add_events() = *std::move(event);
    }
    absl::StatusOr<store_pb::AppendEventsResponse> appended = AppendEventBatch(pool_, batch);
    if (!appended.ok()) return appended.status();
    written += appended->appended();
    events_persisted_.Increment(static_cast<double>(appended->appended()));
    durable = appended->last_seq();
    if (options_.after_commit) {
      if (absl::Status hook = options_.after_commit(session_id, durable); !hook.ok()) return hook;
    }
    // Acknowledge only after the commit: the publisher may now trim below this seq.
    if (absl::StatusOr<RedisReply> ack =
            redis_->Command({"SET", keys_.PersistedSeq(session_id), absl::StrCat(durable)});
        !ack.ok()) {
      return ack.status();
    }
    if (static_cast<int64_t>(entries->size()) < options_.batch_events) break;
    // A long backlog: keep the session ours while we work through it.
    (void)redis_->Command({"EVAL", kExtendLock, "1", keys_.PersisterLock(session_id),
                           options_.owner,
                           absl::StrCat(absl::ToInt64Milliseconds(options_.lock_ttl))});
  }
  // Unmark, then look again: a publisher that appended after our last read either
  // re-marked the session after this ZREM or its entry is visible to this XREVRANGE.
  if (absl::StatusOr<RedisReply> removed =
          redis_->Command({"ZREM", keys_.PersistQueue(), session_id});
      !removed.ok()) {
    return removed.status();
  }
  absl::StatusOr<std::vector<EventLogEntry>> tail =
      log_.ReadBackward(*redis_, session_id, std::nullopt, 1);
  if (!tail.ok()) return tail.status();
  if (!tail->empty() && tail->front().id.seq > durable) {
    (void)redis_->Command({"ZADD", keys_.PersistQueue(), "NX",
                           absl::StrCat(absl::ToUnixMillis(absl::Now())), session_id});
  }
  return written;
}

}  // namespace parley::store
