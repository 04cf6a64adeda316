// bare_stream_server: the least a gRPC server can do to fan Redis events out to
// StreamEvents subscribers, and to Subscribe streams carrying many subscriptions — the
// ceilings that fanout_bench measures the gateway against, on the same machine, with
// the same client and the same publishers.
//
//   bare_stream_server --grpc_addr=127.0.0.1:0 --redis_url=redis://127.0.0.1:6379
//
// One thread reads every session's event channel through a blocking PSUBSCRIBE and hands each
// event to the streams and subscriptions of its session. A StreamEvents stream keeps one
// write in flight and queues the rest; a Subscribe stream keeps one write in flight and
// gathers everything that arrives meanwhile into the next batch, laid out from each
// event's bytes serialized once (SubscribeBatch, as the gateway does). Queues are
// unbounded: this is a measurement, not a service. No history, no authentication, no
// interceptors, logs or metrics. So that a stream opened after an event still starts
// with something (fanout_bench's warm-up publishes once), a new stream or subscription
// is first sent its session's most recent event.
//
// What it does not do, and Parley's hub must: gap detection and re-reads, epochs,
// bounded buffers, keepalives, tenancy, per-stream positions, access checks, limits.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <deque>
#include <iostream>
#include <memory>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "common/config.h"
#include "common/redis.h"
#include "gateway/fanout/shared_response.h"
#include "gateway/fanout/subscribe_batch.h"
#include "parley/v1/parley.grpc.pb.h"

namespace {

using parley::gateway::ResponsePtr;
using parley::gateway::SubscribeBatch;
using parley::v1::StreamEventsRequest;
using parley::v1::StreamEventsResponse;

class Streams;

class BareStream final : public grpc::ServerWriteReactor<StreamEventsResponse> {
 public:
  BareStream(Streams& streams, std::string channel)
      : streams_(streams), channel_(std::move(channel)) {}

  const std::string& channel() const { return channel_; }

  void Offer(ResponsePtr response) {
    absl::MutexLock lock(&mu_);
    if (done_) return;
    if (in_flight_ != nullptr) {
      queue_.push_back(std::move(response));
      return;
    }
    in_flight_ = std::move(response);
    StartWrite(&in_flight_->message());
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    in_flight_.reset();
    if (!ok || done_) return;
    if (queue_.empty()) return;
    in_flight_ = std::move(queue_.front());
    queue_.pop_front();
    StartWrite(&in_flight_->message());
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    if (done_) return;
    done_ = true;
    Finish(grpc::Status::CANCELLED);
  }

  void OnDone() override;

 private:
  Streams& streams_;
  const std::string channel_;  // The session's Redis channel.
  absl::Mutex mu_;
  ResponsePtr in_flight_ ABSL_GUARDED_BY(mu_);
  std::deque<ResponsePtr> queue_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

// One Subscribe call: its subscriptions' deliveries, batched while a write is in flight.
class BareMuxStream final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  BareMuxStream(Streams& streams, const parley::RedisKeys& keys) : streams_(streams), keys_(keys) {
    StartRead(&request_);
  }

  void Offer(const std::string& id, const ResponsePtr& response) {
    absl::MutexLock lock(&mu_);
    if (done_) return;
    pending_.Add(id, *response);
    if (!writing_) WriteLocked();
  }

  void OnReadDone(bool ok) override;

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok || done_ || pending_.empty()) return;
    WriteLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    if (done_) return;
    done_ = true;
    Finish(grpc::Status::CANCELLED);
  }

  void OnDone() override;

 private:
  void WriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    in_flight_ = pending_.Take();
    writing_ = true;
    StartWrite(&in_flight_);
  }

  Streams& streams_;
  const parley::RedisKeys& keys_;
  grpc::ByteBuffer request_;  // Read by one reaction at a time.
  absl::Mutex mu_;
  SubscribeBatch pending_ ABSL_GUARDED_BY(mu_);
  grpc::ByteBuffer in_flight_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

// The streams and subscriptions of every session, and each session's latest event, by
// Redis channel.
class Streams {
 public:
  void AddSubscription(const std::string& channel, BareMuxStream* stream, std::string id) {
    absl::MutexLock lock(&mu_);
    Session& session = sessions_[channel];
    if (session.latest != nullptr) stream->Offer(id, session.latest);
    session.subscriptions.emplace_back(stream, std::move(id));
  }

  void RemoveSubscriptionsOf(BareMuxStream* stream) {
    absl::MutexLock lock(&mu_);
    for (auto& [channel, session] : sessions_) {
      std::erase_if(session.subscriptions, [&](const auto& sub) { return sub.first == stream; });
    }
  }

  void Add(BareStream* stream) {
    absl::MutexLock lock(&mu_);
    Session& session = sessions_[stream->channel()];
    session.streams.push_back(stream);
    if (session.latest != nullptr) stream->Offer(session.latest);
  }

  void Remove(BareStream* stream) {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(stream->channel());
    if (it == sessions_.end()) return;
    std::vector<BareStream*>& list = it->second.streams;
    list.erase(std::remove(list.begin(), list.end(), stream), list.end());
  }

  void Publish(const std::string& channel, ResponsePtr response) {
    absl::MutexLock lock(&mu_);
    Session& session = sessions_[channel];
    session.latest = response;
    for (BareStream* stream : session.streams) stream->Offer(response);
    for (const auto& [stream, id] : session.subscriptions) stream->Offer(id, response);
  }

 private:
  struct Session {
    std::vector<BareStream*> streams;
    std::vector<std::pair<BareMuxStream*, std::string>> subscriptions;
    ResponsePtr latest;
  };
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Session> sessions_ ABSL_GUARDED_BY(mu_);
};

void BareStream::OnDone() {
  streams_.Remove(this);
  delete this;
}

void BareMuxStream::OnReadDone(bool ok) {
  if (!ok) return;  // Half-closed or gone: the stream keeps writing until cancelled.
  parley::v1::SubscribeRequest request;
  if (grpc::SerializationTraits<parley::v1::SubscribeRequest>::Deserialize(&request_, &request)
          .ok() &&
      request.has_add()) {
    streams_.AddSubscription(keys_.EventChannel(request.add().request().session_id()), this,
                             request.add().subscription_id());
  }
  StartRead(&request_);
}

void BareMuxStream::OnDone() {
  streams_.RemoveSubscriptionsOf(this);
  delete this;
}

class BareSessionService final : public parley::v1::SessionService::WithCallbackMethod_StreamEvents<
                                     parley::v1::SessionService::WithRawCallbackMethod_Subscribe<
                                         parley::v1::SessionService::Service>> {
 public:
  BareSessionService(Streams& streams, const parley::RedisKeys& keys)
      : streams_(streams), keys_(keys) {}

  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Subscribe(
      grpc::CallbackServerContext*) override {
    return new BareMuxStream(streams_, keys_);
  }

  grpc::ServerWriteReactor<StreamEventsResponse>* StreamEvents(
      grpc::CallbackServerContext*, const StreamEventsRequest* request) override {
    auto* stream = new BareStream(streams_, keys_.EventChannel(request->session_id()));
    streams_.Add(stream);
    return stream;
  }

 private:
  Streams& streams_;
  const parley::RedisKeys& keys_;
};

// Reads every session's events until the connection fails; returns why. The
// connection's timeout bounds how long it may stay quiet: a day, for a benchmark.
absl::Status ReadEvents(const parley::RedisEndpoint& endpoint, const parley::RedisKeys& keys,
                        Streams& streams) {
  auto redis = parley::RedisConnection::Connect(endpoint, absl::Hours(24));
  if (!redis.ok()) return redis.status();
  auto subscribed = (*redis)->Command({"PSUBSCRIBE", keys.EventChannel("*")});
  if (!subscribed.ok()) return subscribed.status();
  for (;;) {
    absl::StatusOr<parley::RedisReply> reply = (*redis)->ReadReply();
    if (!reply.ok()) return reply.status();
    const redisReply& message = **reply;
    // ["pmessage", pattern, channel, payload]
    if (message.type != REDIS_REPLY_ARRAY || message.elements != 4) continue;
    parley::v1::Event event;
    if (event.ParseFromArray(message.element[3]->str, static_cast<int>(message.element[3]->len))) {
      streams.Publish(std::string(message.element[2]->str, message.element[2]->len),
                      parley::gateway::WrapEvent(std::move(event)));
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string grpc_addr = "127.0.0.1:0";
  std::string redis_url = "redis://127.0.0.1:6379";
  std::string redis_key_prefix;
  parley::Flags flags("bare_stream_server", "A bare gRPC fan-out of Redis events.");
  flags.HostPort("grpc_addr", &grpc_addr, "listen address");
  flags.String("redis_url", &redis_url, "Redis to read event channels from",
               parley::ValidateRedisUrl);
  flags.String("redis_key_prefix", &redis_key_prefix, "prefix of every Redis key, as Parley's");
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());
  // As in every Parley service (ServiceHost): Debian's Abseil is built without NDEBUG,
  // and its deadlock detection would otherwise tax every Mutex acquisition.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  absl::StatusOr<parley::RedisEndpoint> endpoint = parley::ParseRedisUrl(redis_url);

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const parley::RedisKeys keys(redis_key_prefix);
  Streams streams;
  std::thread reader([&] {
    std::cerr << "bare_stream_server: redis: " << ReadEvents(*endpoint, keys, streams) << "\n";
  });
  reader.detach();  // Ends with the process.

  grpc::EnableDefaultHealthCheckService(true);
  BareSessionService service(streams, keys);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(grpc_addr, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    std::cerr << "bare_stream_server: cannot listen on " << grpc_addr << "\n";
    return 1;
  }
  std::cout << "port " << port << std::endl;
  int signal_number = 0;
  while (sigwait(&signals, &signal_number) != 0) {
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
