#include "gateway/fanout/history.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/proto_time.h"
#include "common/status.h"

namespace parley::gateway {
namespace {

using StoreStub = store::v1::StoreService::StubInterface;

// One blocking call to store-svc, within a bound of its own.
template <typename Request, typename Response>
absl::StatusOr<Response> CallStore(StoreStub& store,
                                   grpc::Status (StoreStub::*method)(grpc::ClientContext*,
                                                                     const Request&, Response*),
                                   const Request& request) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  Response response;
  grpc::Status status = (store.*method)(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

}  // namespace

RedisStoreHistory::RedisStoreHistory(RedisEndpoint redis, RedisKeys keys,
                                     std::shared_ptr<store::v1::StoreService::StubInterface> store)
    : redis_(std::move(redis)), log_(std::move(keys)), store_(std::move(store)) {}

absl::StatusOr<std::unique_ptr<RedisConnection>> RedisStoreHistory::Borrow() {
  {
    absl::MutexLock lock(&mu_);
    if (!idle_.empty()) {
      auto connection = std::move(idle_.back());
      idle_.pop_back();
      return connection;
    }
  }
  return RedisConnection::Connect(redis_, absl::Seconds(2));
}

void RedisStoreHistory::Return(std::unique_ptr<RedisConnection> connection) {
  if (connection == nullptr || connection->broken()) return;
  absl::MutexLock lock(&mu_);
  idle_.push_back(std::move(connection));
}

absl::StatusOr<std::vector<v1::Event>> RedisStoreHistory::ReadHot(RedisConnection& redis,
                                                                  const std::string& session_id,
                                                                  uint64_t from_seq, int max) {
  // Transients still in effect for a reader at from_seq follow seq from_seq - 1.
  EntryId start{.seq = from_seq > 0 ? from_seq - 1 : 0, .sub = 1};
  std::vector<v1::Event> events;
  for (;;) {
    // The newest entry comes in the same round trip: it tells which transients are in
    // effect. Read a moment after the range, it can only make more of them look
    // superseded, and a durable event that superseded them is then read or arrives live.
    absl::StatusOr<EventLogRange> range = log_.Read(redis, session_id, start, max);
    if (!range.ok()) return range.status();
    for (const EventLogEntry& entry : range->entries) {
      if (!entry.event.has_value()) continue;
      absl::StatusOr<v1::Event> event = entry.Parse(session_id);
      if (!event.ok()) return event.status();
      if (event->transient() && event->seq() != range->newest.seq) continue;  // Over.
      events.push_back(*std::move(event));
    }
    // A full batch of nothing but superseded transients says nothing about what
    // follows: look past it rather than report "nothing new".
    if (!events.empty() || range->entries.size() < static_cast<size_t>(max)) return events;
    start = range->entries.back().id;
    ++start.sub;
  }
}

absl::StatusOr<std::vector<v1::Event>> RedisStoreHistory::ReadCold(const std::string& tenant_id,
                                                                   const std::string& session_id,
                                                                   uint64_t from_seq, int max) {
  store::v1::ReadEventsRequest request;
  request.set_tenant_id(tenant_id);
  request.set_session_id(session_id);
  request.set_after_seq(from_seq - 1);
  request.set_limit(static_cast<uint32_t>(max));
  auto response = CallStore(*store_, &StoreStub::ReadEvents, request);
  if (!response.ok()) return response.status();
  return std::vector<v1::Event>(std::make_move_iterator(response->mutable_events()->begin()),
                                std::make_move_iterator(response->mutable_events()->end()));
}

absl::StatusOr<std::vector<v1::Event>> RedisStoreHistory::ReadFrom(const std::string& tenant_id,
                                                                   const std::string& session_id,
                                                                   uint64_t from_seq, int max) {
  absl::StatusOr<std::unique_ptr<RedisConnection>> redis = Borrow();
  if (!redis.ok()) return redis.status();
  absl::StatusOr<std::vector<v1::Event>> hot = ReadHot(**redis, session_id, from_seq, max);
  Return(*std::move(redis));
  if (!hot.ok()) return hot.status();
  if (!hot->empty() && hot->front().seq() <= from_seq) return hot;
  // The hot window starts later (trimmed) or is empty: the store has what was persisted.
  absl::StatusOr<std::vector<v1::Event>> cold = ReadCold(tenant_id, session_id, from_seq, max);
  if (!cold.ok()) return cold.status();
  if (!cold->empty()) return cold;
  return hot;  // Possibly later events; the caller sees the gap.
}

absl::StatusOr<StreamStart> RedisStoreHistory::Start(const std::string& tenant_id,
                                                     const std::string& session_id,
                                                     const std::string& turn_id) {
  store::v1::GetLastSeqRequest request;
  request.set_tenant_id(tenant_id);
  request.set_session_id(session_id);
  request.set_turn_id(turn_id);
  auto response = CallStore(*store_, &StoreStub::GetLastSeq, request);
  if (!response.ok()) return response.status();
  StreamStart start{.durable_last_seq = response->last_seq(), .epoch = response->epoch()};
  if (!turn_id.empty()) start.turn = std::move(*response->mutable_turn());
  return start;
}

absl::StatusOr<uint64_t> RedisStoreHistory::LastSeq(const std::string& session_id,
                                                    const StreamStart& start) {
  absl::StatusOr<std::unique_ptr<RedisConnection>> redis = Borrow();
  if (!redis.ok()) return redis.status();
  absl::StatusOr<uint64_t> last = log_.LastSeq(**redis, session_id);
  Return(*std::move(redis));
  if (!last.ok()) return last.status();
  // Nothing in Redis (e.g. after a flush): the durable log knows.
  return std::max(*last, start.durable_last_seq);
}

absl::StatusOr<uint64_t> RedisStoreHistory::TurnFirstSeq(const std::string& session_id,
                                                         const StreamStart& start) {
  const v1::Turn& turn = *start.turn;
  if (turn.first_seq() > 0) return turn.first_seq();
  if (EndedWithoutStarting(turn)) return 0;
  // session-svc reports the first seq with its first heartbeat, seconds after the turn
  // started: until then the hot window is where its start is found.
  absl::StatusOr<std::unique_ptr<RedisConnection>> redis = Borrow();
  if (!redis.ok()) return redis.status();
  absl::StatusOr<uint64_t> first = FindTurnStart(**redis, session_id, start);
  Return(*std::move(redis));
  return first;
}

absl::StatusOr<uint64_t> RedisStoreHistory::FindTurnStart(RedisConnection& redis,
                                                          const std::string& session_id,
                                                          const StreamStart& start) {
  const v1::Turn& turn = *start.turn;
  constexpr int kBatch = 256;
  constexpr int kMaxEntries = 16 * 1024;
  constexpr absl::Duration kClockSkew = absl::Seconds(2);
  std::optional<EntryId> before;  // From the newest.
  // What was published before the scan: the durable log's (if Redis lost its window)
  // and the hot window's, as read.
  uint64_t newest_seq = start.durable_last_seq;
  for (int scanned = 0; scanned < kMaxEntries; scanned += kBatch) {
    absl::StatusOr<std::vector<EventLogEntry>> entries =
        log_.ReadBackward(redis, session_id, before, kBatch);
    if (!entries.ok()) return entries.status();
    for (const EventLogEntry& entry : *entries) {
      newest_seq = std::max(newest_seq, entry.id.seq);
      if (!entry.id.durable()) continue;  // A transient cannot be the start.
      absl::StatusOr<v1::Event> event = entry.Parse(session_id);
      if (!event.ok()) continue;  // Nor can an unreadable entry.
      // Newest first: the first TurnStarted met is the current attempt's.
      if (event->has_turn_started() && event->turn_id() == turn.id()) return event->seq();
      // Published before the turn existed (allowing for clock skew between hosts):
      // nothing older can be the turn's, so it has not started, and whatever it
      // publishes comes after the newest entry read.
      if (event->has_time() && turn.has_create_time() &&
          FromTimestamp(event->time()) < FromTimestamp(turn.create_time()) - kClockSkew) {
        return newest_seq + 1;
      }
    }
    if (entries->size() < static_cast<size_t>(kBatch)) break;  // The window's start.
    before = entries->back().id;
  }
  // Neither found within reach: after what was newest when the window was read. Not
  // "from the newest" later: by then the turn may have published its start, or ended.
  return newest_seq + 1;
}

}  // namespace parley::gateway
