#include "gateway/fanout/history.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
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
  absl::StatusOr<RedisReply> reply =
      redis.Command({"XRANGE", keys_.EventStream(session_id), absl::StrCat(from_seq, "-0"), "+",
                     "COUNT", absl::StrCat(max)});
  if (!reply.ok()) return reply.status();
  std::vector<v1::Event> events;
  for (size_t i = 0; i < (*reply)->elements; ++i) {
    const redisReply* payload = StreamEntryField((*reply)->element[i], "e");
    if (payload == nullptr) continue;
    v1::Event event;
    if (!event.ParseFromArray(payload->str, static_cast<int>(payload->len))) {
      return absl::DataLossError(
          absl::StrCat("a hot-window entry of ", session_id, " does not parse"));
    }
    events.push_back(std::move(event));
  }
  return events;
}

absl::StatusOr<std::vector<v1::Event>> RedisStoreHistory::ReadCold(const std::string& tenant_id,
                                                                   const std::string& session_id,
                                                                   uint64_t from_seq, int max) {
  if (store_ == nullptr) return std::vector<v1::Event>();
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

absl::StatusOr<uint64_t> RedisStoreHistory::LastSeq(const std::string& tenant_id,
                                                    const std::string& session_id) {
  absl::StatusOr<std::unique_ptr<RedisConnection>> redis = Borrow();
  if (!redis.ok()) return redis.status();
  absl::StatusOr<RedisReply> reply =
      (*redis)->Command({"HGET", keys_.Lease(session_id), "last_seq"});
  Return(*std::move(redis));
  if (!reply.ok()) return reply.status();
  const auto last = static_cast<uint64_t>(std::max<int64_t>(0, ReplyInt64(reply->get())));
  if (last > 0 || store_ == nullptr) return last;
  // Nothing in Redis (e.g. after a flush): the durable log knows.
  absl::StatusOr<store::v1::GetLastSeqResponse> durable = DurableLastSeq(tenant_id, session_id);
  if (!durable.ok()) return durable.status();
  return durable->last_seq();
}

absl::StatusOr<store::v1::GetLastSeqResponse> RedisStoreHistory::DurableLastSeq(
    const std::string& tenant_id, const std::string& session_id) {
  store::v1::GetLastSeqRequest request;
  request.set_tenant_id(tenant_id);
  request.set_session_id(session_id);
  return CallStore(*store_, &StoreStub::GetLastSeq, request);
}

absl::Status RedisStoreHistory::CheckAccess(const std::string& tenant_id,
                                            const std::string& session_id) {
  if (store_ == nullptr) return absl::OkStatus();
  store::v1::GetSessionRequest request;
  request.set_tenant_id(tenant_id);
  request.set_session_id(session_id);
  return CallStore(*store_, &StoreStub::GetSession, request).status();
}

absl::StatusOr<uint64_t> RedisStoreHistory::CurrentEpoch(const std::string& tenant_id,
                                                         const std::string& session_id) {
  if (store_ == nullptr) return 0;
  absl::StatusOr<store::v1::GetLastSeqResponse> durable = DurableLastSeq(tenant_id, session_id);
  if (!durable.ok()) return durable.status();
  return durable->epoch();
}

absl::StatusOr<uint64_t> RedisStoreHistory::TurnFirstSeq(const std::string& tenant_id,
                                                         const std::string& session_id,
                                                         const std::string& turn_id) {
  if (store_ == nullptr) return absl::NotFoundError("turn not found");
  store::v1::GetTurnRequest request;
  request.set_tenant_id(tenant_id);
  request.set_session_id(session_id);
  request.set_turn_id(turn_id);
  auto response = CallStore(*store_, &StoreStub::GetTurn, request);
  if (!response.ok()) return response.status();
  return response->turn().first_seq();
}

}  // namespace parley::gateway
