#include "gateway/fanout/history.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "google/protobuf/util/time_util.h"

namespace parley::gateway {
namespace {

using StoreStub = store::v1::StoreService::StubInterface;
using google::protobuf::util::TimeUtil;

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

// A Redis stream entry id, "<seq>-<sub>": sub 0 is the durable event seq, 1, 2, … the
// transient events published after it (see common/events/publisher.cc).
struct EntryId {
  uint64_t seq = 0;
  uint64_t sub = 0;

  // The id of one XRANGE/XREVRANGE entry ([id, [field, value, ...]]).
  static EntryId Of(const redisReply* entry) {
    absl::string_view id(entry->element[0]->str, entry->element[0]->len);
    EntryId parsed;
    const size_t dash = id.find('-');
    (void)absl::SimpleAtoi(id.substr(0, dash), &parsed.seq);
    if (dash != absl::string_view::npos) (void)absl::SimpleAtoi(id.substr(dash + 1), &parsed.sub);
    return parsed;
  }
  std::string ToString() const { return absl::StrCat(seq, "-", sub); }
};

}  // namespace

RedisStoreHistory::RedisStoreHistory(RedisEndpoint redis, RedisKeys keys,
                                     std::shared_ptr<store::v1::StoreService::StubInterface> store)
    : redis_(std::move(redis)), keys_(std::move(keys)), store_(std::move(store)) {}

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
  const std::string stream = keys_.EventStream(session_id);
  // Transients still in effect for a reader at from_seq follow seq from_seq - 1.
  EntryId start{from_seq > 0 ? from_seq - 1 : 0, 1};
  std::vector<v1::Event> events;
  for (;;) {
    // The newest entry in the same round trip: it tells which transients are in effect.
    // Read a moment after the range, it can only make more of them look superseded,
    // and a durable event that superseded them is then read or arrives live.
    absl::StatusOr<std::vector<RedisReply>> replies =
        redis.Pipeline({{"XRANGE", stream, start.ToString(), "+", "COUNT", absl::StrCat(max)},
                        {"XREVRANGE", stream, "+", "-", "COUNT", "1"}});
    if (!replies.ok()) return replies.status();
    const redisReply* entries = (*replies)[0].get();
    const redisReply* newest = (*replies)[1].get();
    const uint64_t newest_seq = newest->elements > 0 ? EntryId::Of(newest->element[0]).seq : 0;
    for (size_t i = 0; i < entries->elements; ++i) {
      const redisReply* payload = StreamEntryField(entries->element[i], "e");
      if (payload == nullptr) continue;
      v1::Event event;
      if (!event.ParseFromArray(payload->str, static_cast<int>(payload->len))) {
        return absl::DataLossError(
            absl::StrCat("a hot-window entry of ", session_id, " does not parse"));
      }
      if (event.transient() && event.seq() != newest_seq) continue;  // Over.
      events.push_back(std::move(event));
    }
    // A full batch of nothing but superseded transients says nothing about what
    // follows: look past it rather than report "nothing new".
    if (!events.empty() || entries->elements < static_cast<size_t>(max)) return events;
    start = EntryId::Of(entries->element[entries->elements - 1]);
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
  absl::StatusOr<RedisReply> reply =
      (*redis)->Command({"HGET", keys_.Lease(session_id), "last_seq"});
  Return(*std::move(redis));
  if (!reply.ok()) return reply.status();
  const auto last = static_cast<uint64_t>(std::max<int64_t>(0, ReplyInt64(reply->get())));
  // Nothing in Redis (e.g. after a flush): the durable log knows.
  return std::max(last, start.durable_last_seq);
}

absl::StatusOr<uint64_t> RedisStoreHistory::TurnFirstSeq(const std::string& session_id,
                                                         const v1::Turn& turn) {
  if (turn.first_seq() > 0) return turn.first_seq();
  if (turn.status() != v1::TURN_STATUS_QUEUED && turn.status() != v1::TURN_STATUS_RUNNING) {
    return 0;  // Ended without ever starting (cancelled while queued).
  }
  // session-svc reports the first seq with its first heartbeat, seconds after the turn
  // started: until then the hot window is where its start is found.
  absl::StatusOr<std::unique_ptr<RedisConnection>> redis = Borrow();
  if (!redis.ok()) return redis.status();
  absl::StatusOr<uint64_t> start = FindTurnStart(**redis, session_id, turn);
  Return(*std::move(redis));
  return start;
}

absl::StatusOr<uint64_t> RedisStoreHistory::FindTurnStart(RedisConnection& redis,
                                                          const std::string& session_id,
                                                          const v1::Turn& turn) {
  constexpr int kBatch = 256;
  constexpr int kMaxEntries = 16 * 1024;
  constexpr int64_t kClockSkewNanos = 2'000'000'000;
  const std::string stream = keys_.EventStream(session_id);
  std::string end = "+";
  uint64_t newest_seq = 0;
  for (int scanned = 0; scanned < kMaxEntries; scanned += kBatch) {
    absl::StatusOr<RedisReply> reply =
        redis.Command({"XREVRANGE", stream, end, "-", "COUNT", absl::StrCat(kBatch)});
    if (!reply.ok()) return reply.status();
    const redisReply* entries = reply->get();
    for (size_t i = 0; i < entries->elements; ++i) {
      const EntryId id = EntryId::Of(entries->element[i]);
      newest_seq = std::max(newest_seq, id.seq);
      const redisReply* payload = StreamEntryField(entries->element[i], "e");
      v1::Event event;
      if (id.sub != 0 || payload == nullptr ||
          !event.ParseFromArray(payload->str, static_cast<int>(payload->len))) {
        continue;  // Transients and unreadable entries cannot be the start.
      }
      // Newest first: the first TurnStarted met is the current attempt's.
      if (event.has_turn_started() && event.turn_id() == turn.id()) return event.seq();
      // Published before the turn existed (allowing for clock skew between hosts):
      // nothing older can be the turn's, so it has not started, and whatever it
      // publishes comes after the newest entry read.
      if (event.has_time() && turn.has_create_time() &&
          TimeUtil::TimestampToNanoseconds(event.time()) <
              TimeUtil::TimestampToNanoseconds(turn.create_time()) - kClockSkewNanos) {
        return newest_seq + 1;
      }
    }
    if (entries->elements < static_cast<size_t>(kBatch)) break;  // The window's start.
    end = absl::StrCat("(", EntryId::Of(entries->element[entries->elements - 1]).ToString());
  }
  // Neither found within reach: from what is newest now, as before the window was read.
  return newest_seq > 0 ? newest_seq + 1 : 0;
}

}  // namespace parley::gateway
