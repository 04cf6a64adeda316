// A gateway fan-out under test: real Redis (a key space of the test's own), a real
// store (fresh Postgres database) for the cold path and tenancy, the Hub and the
// public SessionService served in process, and an EventPublisher to write events
// exactly as session-svc does.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>

#include "absl/random/random.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/events/publisher.h"
#include "common/proto_time.h"
#include "gateway/api/session_api.h"
#include "gateway/auth/authenticator.h"
#include "gateway/fanout/history.h"
#include "gateway/fanout/hub.h"
#include "parley/v1/parley.grpc.pb.h"
#include "store-svc/api/store_service.h"
#include "store-svc/db/migrator.h"
#include "store-svc/db/pool.h"
#include "store-svc/persister/persister.h"
#include "telemetry/grpc_telemetry.h"
#include "telemetry/span.h"
#include "tests/harness/services.h"

namespace parley::gateway::testing {

inline constexpr char kApiKey[] = "pk_fanout_test";
inline constexpr char kTenant[] = "tenant_a";

class FanoutFixture : public ::testing::Test {
 protected:
  // Override before SetUp to change the hub's settings.
  virtual HubOptions Options() { return HubOptions(); }

  void SetUp() override {
    auto db = parley::testing::TestDatabase::Create();
    ASSERT_TRUE(db.ok()) << db.status();
    db_ = *std::move(db);
    telemetry::Logger quiet("test", telemetry::LogLevel::kError);
    ASSERT_TRUE(store::Migrate(db_->url(), store::BuiltinMigrations(), quiet).ok());
    pool_ = std::make_unique<store::PgPool>(store::PgPool::Options{.url = db_->url(), .size = 4},
                                            RealClock::Get());
    store_service_ = std::make_unique<store::StoreServiceImpl>(*pool_, store::StoreLimits{});
    store_telemetry_ = std::make_unique<telemetry::GrpcTelemetry>(store_registry_,
                                                                  telemetry_logger_, store_spans_);
    store_server_ = StartServer(store_service_.get(), &store_port_, store_telemetry_.get());
    store_ = store::v1::StoreService::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(store_port_), grpc::InsecureChannelCredentials()));

    auto redis = parley::testing::TestRedis::Create();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    StartHub(HubRedis());
  }

  // The Redis the hub subscribes to; tests that restart Redis use their own.
  virtual RedisEndpoint HubRedis() { return redis_->endpoint(); }
  // Where the hub reads history; tests may wrap the real one.
  virtual HistorySource& HubHistory(RedisStoreHistory& real) { return real; }

  void StartHub(const RedisEndpoint& endpoint) {
    HubOptions options = Options();
    options.redis = endpoint;
    options.key_prefix = redis_->keys().prefix();
    history_ = std::make_unique<RedisStoreHistory>(endpoint, redis_->keys(), store_);
    hub_ = std::make_unique<Hub>(options, HubHistory(*history_), registry_);
    hub_->Start();
    authenticator_ = std::make_unique<KeyAuthenticator>(
        KeyAuthenticatorOptions{.bootstrap_secret = kApiKey, .bootstrap_tenant = kTenant},
        /*store=*/nullptr);
    grpc_telemetry_ =
        std::make_unique<telemetry::GrpcTelemetry>(registry_, telemetry_logger_, spans_);
    api_ = std::make_unique<SessionApi>(
        *authenticator_, *grpc_telemetry_,
        grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials()), store_,
        absl::Seconds(5), *hub_, /*idempotency=*/nullptr);
    gateway_server_ = StartServer(api_.get(), &gateway_port_, grpc_telemetry_.get());
  }

  void TearDown() override {
    if (gateway_server_) gateway_server_->Shutdown(absl::ToChronoTime(absl::Now()));
    hub_.reset();
    if (store_server_) store_server_->Shutdown(absl::ToChronoTime(absl::Now()));
  }

  // `telemetry`, when given, installs its server interceptors as ServiceHost does.
  static std::unique_ptr<grpc::Server> StartServer(grpc::Service* service, int* port,
                                                   telemetry::GrpcTelemetry* telemetry = nullptr) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), port);
    builder.RegisterService(service);
    if (telemetry != nullptr) {
      builder.experimental().SetInterceptorCreators(telemetry->ServerInterceptors());
    }
    return builder.BuildAndStart();
  }

  std::string gateway_target() const { return "127.0.0.1:" + std::to_string(gateway_port_); }

  std::unique_ptr<v1::SessionService::Stub> NewClient() {
    return v1::SessionService::NewStub(
        grpc::CreateChannel(gateway_target(), grpc::InsecureChannelCredentials()));
  }

  // A session in the store (tenant kTenant unless told otherwise).
  std::string CreateSession(const std::string& tenant = kTenant) {
    grpc::ClientContext c1;
    store::v1::CreateTenantRequest tenant_request;
    tenant_request.set_tenant_id(tenant);
    store::v1::CreateTenantResponse tenant_response;
    EXPECT_TRUE(store_->CreateTenant(&c1, tenant_request, &tenant_response).ok());
    grpc::ClientContext c2;
    store::v1::CreateSessionRequest request;
    request.set_tenant_id(tenant);
    store::v1::CreateSessionResponse response;
    EXPECT_TRUE(store_->CreateSession(&c2, request, &response).ok());
    return response.session().id();
  }

  // A turn queued in the store for `session` (of kTenant), as SendMessage would.
  void EnqueueTurn(const std::string& session, store::v1::EnqueueTurnResponse* enqueued) {
    grpc::ClientContext context;
    store::v1::EnqueueTurnRequest request;
    request.set_tenant_id(kTenant);
    request.mutable_request()->set_session_id(session);
    request.mutable_request()->add_content()->set_text("hello");
    grpc::Status status = store_->EnqueueTurn(&context, request, enqueued);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }

  // Cancels `turn_id` of `session` (of kTenant) in the store, as CancelTurn would.
  void CancelTurn(const std::string& session, const std::string& turn_id) {
    grpc::ClientContext context;
    store::v1::CancelTurnRequest request;
    request.set_tenant_id(kTenant);
    request.set_session_id(session);
    request.set_turn_id(turn_id);
    store::v1::CancelTurnResponse cancelled;
    grpc::Status status = store_->CancelTurn(&context, request, &cancelled);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(cancelled.turn().status(), v1::TURN_STATUS_CANCELLED);
  }

  // A writer for `session_id` holding lease `epoch` (session-svc's role).
  struct Writer {
    std::unique_ptr<RedisConnection> connection;
    std::unique_ptr<EventPublisher> publisher;
    std::string session_id;
    uint64_t lease_epoch = 0;
    uint64_t history_epoch = 1;
    uint64_t last_seq = 0;

    absl::Status Publish(uint64_t seq, std::string text = "", bool transient = false) {
      v1::Event event;
      event.set_session_id(session_id);
      event.set_seq(seq);
      event.set_epoch(history_epoch);
      event.set_turn_id("turn_1");
      event.set_transient(transient);
      *event.mutable_time() = ToTimestamp(absl::Now());
      event.mutable_text_delta()->set_text(text.empty() ? "t" + std::to_string(seq) : text);
      absl::Status status = publisher->Publish(event, lease_epoch);
      if (status.ok() && !transient) last_seq = seq;
      return status;
    }
    absl::Status PublishNext(std::string text = "") { return Publish(last_seq + 1, text); }
    absl::Status Seal(const std::string& turn_id) {
      v1::Event event;
      event.set_session_id(session_id);
      event.set_seq(last_seq + 1);
      event.set_epoch(history_epoch);
      event.set_turn_id(turn_id);
      event.mutable_turn_sealed()->set_turn_id(turn_id);
      absl::Status status = publisher->Publish(event, lease_epoch);
      if (status.ok()) ++last_seq;
      return status;
    }
  };

  // Calls of the in-process store answered with `code`, for `method` ("ReadEvents").
  int64_t StoreCalls(const std::string& method, const std::string& code = "OK") {
    return Sample(store_registry_,
                  "parley_grpc_server_handled_total{method=\"/parley.store.v1."
                  "StoreService/" +
                      method + "\",code=\"" + code + "\"}");
  }

  // Streams the hub has cut for falling behind.
  int64_t SlowConsumersCut() { return Sample(registry_, "parley_fanout_slow_consumers_total"); }

  // The value of the sample `series` (name and labels as /metrics prints them); 0 if absent.
  static int64_t Sample(const telemetry::Registry& registry, const std::string& series) {
    return static_cast<int64_t>(
        parley::testing::MetricSample(registry.RenderText(), series).value_or(0));
  }

  // `options.key_prefix` is filled in with the test's.
  std::unique_ptr<Writer> NewWriter(const std::string& session_id, uint64_t lease_epoch,
                                    const RedisEndpoint* endpoint = nullptr,
                                    PublisherOptions options = {}) {
    auto writer = std::make_unique<Writer>();
    auto connection =
        RedisConnection::Connect(endpoint ? *endpoint : redis_->endpoint(), absl::Seconds(2));
    EXPECT_TRUE(connection.ok()) << connection.status();
    writer->connection = *std::move(connection);
    options.key_prefix = redis_->keys().prefix();
    writer->publisher =
        std::make_unique<EventPublisher>(*writer->connection, options, RealClock::Get());
    writer->session_id = session_id;
    writer->lease_epoch = lease_epoch;
    auto last = writer->publisher->AcquireLease(session_id, "writer", lease_epoch);
    EXPECT_TRUE(last.ok()) << last.status();
    writer->last_seq = last.ok() ? *last : 0;
    return writer;
  }

  std::unique_ptr<parley::testing::TestDatabase> db_;
  std::unique_ptr<store::PgPool> pool_;
  std::unique_ptr<store::StoreServiceImpl> store_service_;
  telemetry::Registry store_registry_;  // The store's calls, counted by its interceptors.
  telemetry::RecordingSpanSink store_spans_;
  std::unique_ptr<telemetry::GrpcTelemetry> store_telemetry_;
  std::unique_ptr<grpc::Server> store_server_;
  int store_port_ = 0;
  std::shared_ptr<store::v1::StoreService::Stub> store_;
  std::unique_ptr<parley::testing::TestRedis> redis_;
  telemetry::Registry registry_;
  std::unique_ptr<RedisStoreHistory> history_;
  std::unique_ptr<Hub> hub_;
  std::unique_ptr<KeyAuthenticator> authenticator_;
  telemetry::Logger telemetry_logger_{"test", telemetry::LogLevel::kError};
  telemetry::RecordingSpanSink spans_;  // Every SERVER span of the gateway's calls.
  std::unique_ptr<telemetry::GrpcTelemetry> grpc_telemetry_;
  std::unique_ptr<SessionApi> api_;
  std::unique_ptr<grpc::Server> gateway_server_;
  int gateway_port_ = 0;
};

// The hub with 16-event stream buffers and the persister moving events to Postgres every
// 10 ms: for checkers whose resumes must cross from Postgres to Redis to live (their
// publishers keep a hot window of about 10 events).
class PersistingFanout : public FanoutFixture {
 protected:
  HubOptions Options() override {
    HubOptions options;
    options.stream.max_buffered = 16;
    return options;
  }
  void SetUp() override {
    FanoutFixture::SetUp();
    if (HasFatalFailure()) return;
    persister_ = std::make_unique<store::EventPersister>(
        store::PersisterOptions{.redis = redis_->endpoint(),
                                .key_prefix = redis_->keys().prefix(),
                                .owner = "checker",
                                .poll_interval = absl::Milliseconds(10)},
        *pool_, telemetry_logger_, persister_registry_);
    persister_->Start();
  }
  void TearDown() override {
    if (persister_) persister_->Stop();
    FanoutFixture::TearDown();
  }

  // A client whose streams get a small HTTP/2 window, so a pause in reading backs up
  // into the gateway's buffers within a few events instead of into megabytes of socket
  // buffers.
  std::unique_ptr<v1::SessionService::Stub> NewSlowClient() {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8 * 1024);
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    return v1::SessionService::NewStub(
        grpc::CreateCustomChannel(gateway_target(), grpc::InsecureChannelCredentials(), args));
  }

  // Publishes `events` events of `text` to `session` keeping a hot window of about 10
  // events, in bursts and pauses (half the events are followed by a pause of up to
  // `max_pause`); after an event, a transient one with `transient_probability`.
  // `published` follows the last seq out.
  void PublishWithHotWindow(const std::string& session, uint64_t events, const std::string& text,
                            std::atomic<uint64_t>& published, double transient_probability,
                            absl::Duration max_pause) {
    absl::BitGen bitgen;
    auto writer =
        NewWriter(session, 1, nullptr, PublisherOptions{.hot_window_events = 10, .trim_every = 5});
    for (uint64_t n = 0; n < events; ++n) {
      ASSERT_TRUE(writer->PublishNext(text).ok());
      published = writer->last_seq;
      if (absl::Bernoulli(bitgen, transient_probability)) {
        ASSERT_TRUE(writer->Publish(writer->last_seq, "retry", /*transient=*/true).ok());
      }
      if (absl::Bernoulli(bitgen, 0.5)) {
        absl::SleepFor(absl::Microseconds(
            absl::Uniform<int64_t>(bitgen, 0, absl::ToInt64Microseconds(max_pause))));
      }
    }
  }

  // Each session's Redis stream no longer starts at seq 1: early seqs are only in
  // Postgres.
  void ExpectTrimmed(const std::vector<std::string>& sessions) {
    for (const std::string& session : sessions) {
      auto head = redis_->connection().Command(
          {"XRANGE", redis_->keys().EventStream(session), "-", "+", "COUNT", "1"});
      ASSERT_TRUE(head.ok()) << head.status();
      ASSERT_EQ((*head)->elements, 1u);
      EXPECT_NE(ReplyString((*head)->element[0]->element[0]), "1-0")
          << "never trimmed: " << session;
    }
  }

  telemetry::Registry persister_registry_;
  std::unique_ptr<store::EventPersister> persister_;
};

// The hub and writers on a redis-server of the test's own, which it may restart or kill.
class PrivateRedisFanout : public FanoutFixture {
 protected:
  void SetUp() override {
    auto redis = parley::testing::PrivateRedis::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    private_redis_ = *std::move(redis);
    FanoutFixture::SetUp();
  }
  RedisEndpoint HubRedis() override { return private_redis_->endpoint(); }

  std::unique_ptr<parley::testing::PrivateRedis> private_redis_;
};

// One write at a time, held until the test completes it, as a slow network would: the
// part of a held test writer that does not depend on what it writes. The writer calls
// Record with what it wrote.
template <typename Written>
class HeldWrites {
 public:
  void Record(Written written) {
    absl::MutexLock lock(&mu_);
    EXPECT_FALSE(outstanding_) << "a second write while one is outstanding";
    outstanding_ = true;
    writes_.push_back(std::move(written));
  }
  // Waits (bounded) for a write and returns whether one came.
  bool AwaitWrite() {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&outstanding_), absl::Seconds(10));
  }
  // The write is done; the caller then tells the stream.
  void End() {
    absl::MutexLock lock(&mu_);
    outstanding_ = false;
  }
  std::vector<Written> writes() {
    absl::MutexLock lock(&mu_);
    return writes_;
  }

 private:
  absl::Mutex mu_;
  bool outstanding_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Written> writes_ ABSL_GUARDED_BY(mu_);
};

// Reads a stream synchronously on the calling thread.
struct StreamReader {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::StreamEventsResponse>> reader;

  StreamReader(v1::SessionService::Stub& stub, v1::StreamEventsRequest request,
               const char* api_key = kApiKey) {
    if (api_key != nullptr) context.AddMetadata("authorization", std::string("Bearer ") + api_key);
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    reader = stub.StreamEvents(&context, request);
  }

  // The next `n` events (keepalives skipped); fewer if the stream ends.
  std::vector<v1::Event> ReadEvents(int n) {
    std::vector<v1::Event> events;
    v1::StreamEventsResponse response;
    while (static_cast<int>(events.size()) < n && reader->Read(&response)) {
      if (response.has_event()) events.push_back(response.event());
    }
    return events;
  }
};

// A Subscribe stream driven synchronously from the calling thread: adds and removes
// go out as written, and what arrives is gathered per subscription.
struct SubscribeClient {
  struct Received {
    std::map<std::string, std::vector<v1::Event>> events;  // Durable and transient.
    std::map<std::string, std::vector<v1::EpochChanged>> epoch_changes;
    std::map<std::string, v1::RpcStatus> ended;  // The last end of each id.
    std::vector<v1::SubscribeKeepalive> keepalives;
    int batches = 0;
  };

  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SubscribeRequest, v1::SubscribeResponse>> stream;
  Received received;

  explicit SubscribeClient(v1::SessionService::Stub& stub, const char* api_key = kApiKey) {
    if (api_key != nullptr) context.AddMetadata("authorization", std::string("Bearer ") + api_key);
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    stream = stub.Subscribe(&context);
  }

  bool Add(const std::string& id, const v1::StreamEventsRequest& request) {
    v1::SubscribeRequest add;
    add.mutable_add()->set_subscription_id(id);
    *add.mutable_add()->mutable_request() = request;
    return stream->Write(add);
  }
  bool Remove(const std::string& id) {
    v1::SubscribeRequest remove;
    remove.mutable_remove()->set_subscription_id(id);
    return stream->Write(remove);
  }

  // Reads until `done(received)` holds; false if the stream ended first.
  bool ReadUntil(const std::function<bool(const Received&)>& done) {
    v1::SubscribeResponse response;
    while (!done(received)) {
      if (!stream->Read(&response)) return false;
      Gather(response);
    }
    return true;
  }
  // Events of `id` until it holds `n` durable ones (or ended).
  bool ReadEventsOf(const std::string& id, size_t n) {
    return ReadUntil([&](const Received& r) {
      auto it = r.events.find(id);
      return r.ended.contains(id) || (it != r.events.end() && it->second.size() >= n);
    });
  }

  void Gather(const v1::SubscribeResponse& response) {
    ++received.batches;
    if (response.has_keepalive()) received.keepalives.push_back(response.keepalive());
    for (const v1::Delivery& delivery : response.deliveries()) {
      const std::string& id = delivery.subscription_id();
      switch (delivery.item_case()) {
        case v1::Delivery::kEvent:
          received.events[id].push_back(delivery.event());
          break;
        case v1::Delivery::kEpochChanged:
          received.epoch_changes[id].push_back(delivery.epoch_changed());
          break;
        case v1::Delivery::kEnded:
          received.ended[id] = delivery.ended();
          break;
        case v1::Delivery::ITEM_NOT_SET:
          break;
      }
    }
  }
};

inline std::vector<uint64_t> Seqs(const std::vector<v1::Event>& events) {
  std::vector<uint64_t> seqs;
  for (const auto& e : events) seqs.push_back(e.seq());
  return seqs;
}

// Polls `holds` for up to 10 s: what a server does after its write completed (leaving
// the hub) may trail the client's read of that write.
inline bool Eventually(const std::function<bool()>& holds) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!holds()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

inline std::vector<uint64_t> Range(uint64_t first, uint64_t last) {
  std::vector<uint64_t> out;
  for (uint64_t i = first; i <= last; ++i) out.push_back(i);
  return out;
}

}  // namespace parley::gateway::testing
