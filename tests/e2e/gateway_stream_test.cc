// The real parley-gateway binary streams events: wired to Redis and a real parley-store,
// an event published the way session-svc does reaches a StreamEvents client.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <optional>
#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/events/publisher.h"
#include "common/status.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "parley/v1/parley.grpc.pb.h"
#include "tests/harness/services.h"

namespace parley::testing {
namespace {

TEST(GatewayStream, PublishedEventsReachAStreamEventsClientOfTheRealBinary) {
  auto db = TestDatabase::Create();
  ASSERT_TRUE(db.ok()) << db.status();
  auto redis = TestRedis::Create();
  ASSERT_TRUE(redis.ok()) << redis.status();
  auto migrate = RunCommand({.binary = BinaryPath("store-svc/parley-store"),
                             .args = {"migrate", "--database_url=" + (*db)->url()}});
  ASSERT_TRUE(migrate.ok() && migrate->exit_code == 0);
  auto store =
      ServiceProcess::Start({.binary = BinaryPath("store-svc/parley-store"),
                             .args = {"--grpc_addr=127.0.0.1:0", "--admin_addr=127.0.0.1:0",
                                      "--database_url=" + (*db)->url(), "--persister=false"}});
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->WaitUntilServing(absl::Seconds(30)).ok()) << (*store)->Output();
  auto gateway = ServiceProcess::Start(
      {.binary = BinaryPath("gateway/parley-gateway"),
       .args = {"--grpc_addr=127.0.0.1:0", "--admin_addr=127.0.0.1:0",
                "--store_addr=" + (*store)->grpc_target(), "--redis_url=" + (*redis)->url(),
                "--redis_key_prefix=" + (*redis)->keys().prefix(), "--bootstrap_tenant=tenant_a"},
       .env = {{"PARLEY_BOOTSTRAP_API_KEY", "pk_e2e"}}});
  ASSERT_TRUE(gateway.ok());
  ASSERT_TRUE((*gateway)->WaitUntilServing(absl::Seconds(30)).ok()) << (*gateway)->Output();

  auto store_stub = store::v1::StoreService::NewStub(
      grpc::CreateChannel((*store)->grpc_target(), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext context;
    store::v1::CreateTenantRequest request;
    request.set_tenant_id("tenant_a");
    store::v1::CreateTenantResponse response;
    ASSERT_TRUE(store_stub->CreateTenant(&context, request, &response).ok());
  }
  grpc::ClientContext create_context;
  store::v1::CreateSessionRequest create;
  create.set_tenant_id("tenant_a");
  store::v1::CreateSessionResponse created;
  ASSERT_TRUE(store_stub->CreateSession(&create_context, create, &created).ok());
  const std::string session = created.session().id();

  auto connection = RedisConnection::Connect((*redis)->endpoint(), absl::Seconds(2));
  ASSERT_TRUE(connection.ok());
  EventPublisher publisher(**connection, {.key_prefix = (*redis)->keys().prefix()},
                           RealClock::Get());
  ASSERT_TRUE(publisher.AcquireLease(session, "e2e", 1).ok());
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    v1::Event event;
    event.set_session_id(session);
    event.set_seq(seq);
    event.set_epoch(1);
    event.mutable_text_delta()->set_text("hello");
    ASSERT_TRUE(publisher.Publish(event, 1).ok());
  }

  auto client = v1::SessionService::NewStub(
      grpc::CreateChannel((*gateway)->grpc_target(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer pk_e2e");
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  v1::StreamEventsRequest request;
  request.set_session_id(session);
  auto reader = client->StreamEvents(&context, request);
  v1::StreamEventsResponse response;
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    ASSERT_TRUE(reader->Read(&response)) << reader->Finish().error_message();
    EXPECT_EQ(response.event().seq(), seq);
  }
}

std::unique_ptr<ServiceProcess> StartStore(const std::string& database_url,
                                           const std::string& grpc_addr) {
  auto store =
      ServiceProcess::Start({.binary = BinaryPath("store-svc/parley-store"),
                             .args = {"--grpc_addr=" + grpc_addr, "--admin_addr=127.0.0.1:0",
                                      "--database_url=" + database_url, "--persister=false"}});
  EXPECT_TRUE(store.ok()) << store.status();
  if (!store.ok()) return nullptr;
  absl::Status serving = (*store)->WaitUntilServing(absl::Seconds(30));
  EXPECT_TRUE(serving.ok()) << serving << (*store)->Output();
  return *std::move(store);
}

std::unique_ptr<ServiceProcess> StartGateway(const std::string& store_target,
                                             const TestRedis& redis) {
  auto gateway = ServiceProcess::Start(
      {.binary = BinaryPath("gateway/parley-gateway"),
       .args = {"--grpc_addr=127.0.0.1:0", "--admin_addr=127.0.0.1:0",
                "--store_addr=" + store_target, "--redis_url=" + redis.url(),
                "--redis_key_prefix=" + redis.keys().prefix(), "--bootstrap_tenant=tenant_a"},
       .env = {{"PARLEY_BOOTSTRAP_API_KEY", "pk_e2e"}}});
  EXPECT_TRUE(gateway.ok()) << gateway.status();
  if (!gateway.ok()) return nullptr;
  absl::Status serving = (*gateway)->WaitUntilServing(absl::Seconds(30));
  EXPECT_TRUE(serving.ok()) << serving << (*gateway)->Output();
  return *std::move(gateway);
}

// One client of the restart test: streams from the first gateway, and when that stream
// breaks, resumes from its last seq on the second. Runs on a thread of its own.
struct ResumingClient {
  std::vector<uint64_t> received;
  std::atomic<size_t> count{0};
  grpc::Status first_end;
  size_t held_at_first_end = 0;
  int connections = 0;
  std::string failure;
  // Resume from the cursor the server's status carried (ErrorInfo last_seq), when it
  // carried one, instead of from the last seq received.
  bool trust_server_cursor = false;
  std::optional<uint64_t> server_cursor;

  // Reads until it has `k` events, over at most 10 connections.
  void Run(const std::vector<std::string>& targets, const std::string& session, uint64_t k) {
    for (size_t target = 0; received.size() < k && connections < 10;) {
      ++connections;
      auto stub = v1::SessionService::NewStub(
          grpc::CreateChannel(targets[target], grpc::InsecureChannelCredentials()));
      grpc::ClientContext context;
      context.AddMetadata("authorization", "Bearer pk_e2e");
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
      v1::StreamEventsRequest request;
      request.set_session_id(session);
      uint64_t after = received.empty() ? 0 : received.back();
      if (trust_server_cursor && server_cursor) after = *server_cursor;
      request.set_after_seq(after);
      auto reader = stub->StreamEvents(&context, request);
      v1::StreamEventsResponse response;
      while (received.size() < k && reader->Read(&response)) {
        if (!response.has_event()) continue;
        const uint64_t expected = received.empty() ? 1 : received.back() + 1;
        if (response.event().seq() != expected && failure.empty()) {
          failure = "expected " + std::to_string(expected) + ", got " +
                    std::to_string(response.event().seq());
        }
        received.push_back(response.event().seq());
        count = received.size();
      }
      if (received.size() >= k) {
        context.TryCancel();
        (void)reader->Finish();
        return;
      }
      grpc::Status status = reader->Finish();
      if (connections == 1) {
        first_end = status;
        held_at_first_end = received.size();
        std::optional<v1::ErrorInfo> info = GetErrorInfo(FromGrpcStatus(status));
        if (info && info->metadata().contains("last_seq")) {
          server_cursor = std::stoull(info->metadata().at("last_seq"));
        }
      }
      // The first gateway is gone: go on on the second.
      if (target + 1 < targets.size()) ++target;
    }
  }
};

// Streams 1..kEvents to five clients through the first of two gateways, stops the first
// with `signal` mid-stream, and checks every client ended with exactly 1..kEvents.
// Making sure the kill hit mid-stream: it lands once every client holds some events and
// before the last one is published; every client's first stream then ended UNAVAILABLE
// with fewer than K events, and the rest came from the second gateway.
void StopAGatewayMidStream(int signal) {
  auto db = TestDatabase::Create();
  ASSERT_TRUE(db.ok()) << db.status();
  auto redis = TestRedis::Create();
  ASSERT_TRUE(redis.ok()) << redis.status();
  auto migrate = RunCommand({.binary = BinaryPath("store-svc/parley-store"),
                             .args = {"migrate", "--database_url=" + (*db)->url()}});
  ASSERT_TRUE(migrate.ok() && migrate->exit_code == 0);
  auto store = StartStore((*db)->url(), "127.0.0.1:0");
  ASSERT_NE(store, nullptr);
  auto first = StartGateway(store->grpc_target(), **redis);
  auto second = StartGateway(store->grpc_target(), **redis);
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);

  auto store_stub = store::v1::StoreService::NewStub(
      grpc::CreateChannel(store->grpc_target(), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext context;
    store::v1::CreateTenantRequest request;
    request.set_tenant_id("tenant_a");
    store::v1::CreateTenantResponse response;
    ASSERT_TRUE(store_stub->CreateTenant(&context, request, &response).ok());
  }
  grpc::ClientContext create_context;
  store::v1::CreateSessionRequest create;
  create.set_tenant_id("tenant_a");
  store::v1::CreateSessionResponse created;
  ASSERT_TRUE(store_stub->CreateSession(&create_context, create, &created).ok());
  const std::string session = created.session().id();

  constexpr uint64_t kEvents = 1000;
  const std::vector<std::string> targets = {first->grpc_target(), second->grpc_target()};
  std::vector<std::unique_ptr<ResumingClient>> clients;
  std::vector<std::thread> readers;
  for (int i = 0; i < 5; ++i) {
    clients.push_back(std::make_unique<ResumingClient>());
    clients.back()->trust_server_cursor = signal == SIGTERM;
    readers.emplace_back(
        [&, client = clients.back().get()] { client->Run(targets, session, kEvents); });
  }
  std::atomic<uint64_t> published{0};
  std::thread publisher([&] {
    auto connection = RedisConnection::Connect((*redis)->endpoint(), absl::Seconds(2));
    ASSERT_TRUE(connection.ok()) << connection.status();
    EventPublisher events(**connection, {.key_prefix = (*redis)->keys().prefix()},
                          RealClock::Get());
    ASSERT_TRUE(events.AcquireLease(session, "e2e", 1).ok());
    for (uint64_t seq = 1; seq <= kEvents; ++seq) {
      v1::Event event;
      event.set_session_id(session);
      event.set_seq(seq);
      event.set_epoch(1);
      event.mutable_text_delta()->set_text("token");
      ASSERT_TRUE(events.Publish(event, 1).ok());
      published = seq;
      absl::SleepFor(absl::Milliseconds(2));
    }
  });
  const bool streaming = WaitFor(absl::Seconds(30), [&] {
    for (const auto& client : clients) {
      if (client->count.load() < 20) return false;
    }
    return true;
  });
  const uint64_t published_at_kill = published.load();
  first->Signal(signal);
  ASSERT_TRUE(first->WaitForExit(absl::Seconds(10)).ok());
  publisher.join();
  for (auto& t : readers) t.join();

  ASSERT_TRUE(streaming) << "the clients were not all streaming before the kill";
  ASSERT_LT(published_at_kill, kEvents) << "the kill came after the last event";
  std::vector<uint64_t> all(kEvents);
  for (uint64_t i = 0; i < kEvents; ++i) all[i] = i + 1;
  for (const auto& client : clients) {
    EXPECT_EQ(client->first_end.error_code(), grpc::StatusCode::UNAVAILABLE)
        << client->first_end.error_message();
    EXPECT_GT(client->held_at_first_end, 0u);
    EXPECT_LT(client->held_at_first_end, kEvents);
    EXPECT_EQ(client->connections, 2);
    EXPECT_EQ(client->failure, "");
    EXPECT_EQ(client->received, all);
    if (signal == SIGTERM) {
      // A drain tells each client where it stands, and that is exactly what it holds.
      std::optional<v1::ErrorInfo> info = GetErrorInfo(FromGrpcStatus(client->first_end));
      ASSERT_TRUE(info.has_value()) << client->first_end.error_message();
      EXPECT_EQ(info->reason(), "GATEWAY_DRAINING");
      ASSERT_TRUE(client->server_cursor.has_value());
      EXPECT_EQ(*client->server_cursor, client->held_at_first_end);
    }
  }
}

// Proves: a gateway process killed in the middle of its streams costs its clients
// nothing: each resumes from its last seq on a second gateway that shares the same Redis
// and store, and ends with exactly 1..K while publishing goes on.
TEST(GatewayRestart, ClientsResumeOnASecondGatewaySharingRedisWithoutGapOrDuplicate) {
  StopAGatewayMidStream(SIGKILL);
}

// Proves: a gateway asked to stop (SIGTERM, as Kubernetes does) ends every open stream at
// once with UNAVAILABLE, GATEWAY_DRAINING and the stream's cursor, and a client resuming
// from that cursor on another gateway misses and repeats nothing.
TEST(GatewayRestart, ADrainingGatewayHandsEachStreamItsCursorToResumeElsewhere) {
  StopAGatewayMidStream(SIGTERM);
}

std::string Health(const ServiceProcess& process) {
  absl::StatusOr<std::string> health = CheckHealth(process.grpc_target());
  return health.ok() ? *health : health.status().ToString();
}

int Readyz(const ServiceProcess& process) {
  auto answer = HttpGet(process.admin_port(), "/readyz");
  return answer.ok() ? answer->first : 0;
}

// Proves: the gateway's health and /readyz say NOT_SERVING / 503 while either hard
// dependency (Redis, store-svc) is down, and SERVING / 200 again once it is back, with
// no restart of the gateway.
// Making sure each outage was real: Redis is killed (-9) and must refuse a connection
// before the check; store-svc is killed and must have exited; each comes back on the
// same port, since the gateway keeps its configured addresses.
TEST(GatewayHealth, NotServingWhileRedisOrStoreIsDownAndServingAfterEach) {
  auto db = TestDatabase::Create();
  ASSERT_TRUE(db.ok()) << db.status();
  auto migrate = RunCommand({.binary = BinaryPath("store-svc/parley-store"),
                             .args = {"migrate", "--database_url=" + (*db)->url()}});
  ASSERT_TRUE(migrate.ok() && migrate->exit_code == 0);
  auto redis = PrivateRedis::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  auto store = StartStore((*db)->url(), "127.0.0.1:0");
  ASSERT_NE(store, nullptr);
  const std::string store_target = store->grpc_target();
  auto gateway = ServiceProcess::Start(
      {.binary = BinaryPath("gateway/parley-gateway"),
       .args = {"--grpc_addr=127.0.0.1:0", "--admin_addr=127.0.0.1:0",
                "--store_addr=" + store_target, "--redis_url=" + (*redis)->url(),
                "--dependency_probe_interval=100ms"}});
  ASSERT_TRUE(gateway.ok());
  ASSERT_TRUE((*gateway)->WaitUntilServing(absl::Seconds(30)).ok()) << (*gateway)->Output();
  EXPECT_EQ(Readyz(**gateway), 200);

  ASSERT_TRUE((*redis)->Kill().ok());
  ASSERT_FALSE(RedisConnection::Connect((*redis)->endpoint(), absl::Seconds(1)).ok());
  EXPECT_TRUE(WaitFor(absl::Seconds(20), [&] { return Health(**gateway) == "NOT_SERVING"; }))
      << Health(**gateway);
  EXPECT_TRUE(WaitFor(absl::Seconds(5), [&] { return Readyz(**gateway) == 503; }));
  ASSERT_TRUE((*redis)->StartAgain().ok());
  EXPECT_TRUE(WaitFor(absl::Seconds(20), [&] { return Health(**gateway) == "SERVING"; }))
      << Health(**gateway);
  EXPECT_TRUE(WaitFor(absl::Seconds(5), [&] { return Readyz(**gateway) == 200; }));

  store->Signal(SIGKILL);
  ASSERT_TRUE(store->WaitForExit(absl::Seconds(10)).ok());
  EXPECT_TRUE(WaitFor(absl::Seconds(20), [&] { return Health(**gateway) == "NOT_SERVING"; }))
      << Health(**gateway);
  EXPECT_TRUE(WaitFor(absl::Seconds(5), [&] { return Readyz(**gateway) == 503; }));
  store = StartStore((*db)->url(), store_target);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(WaitFor(absl::Seconds(20), [&] { return Health(**gateway) == "SERVING"; }))
      << Health(**gateway);
  EXPECT_TRUE(WaitFor(absl::Seconds(5), [&] { return Readyz(**gateway) == 200; }));
  EXPECT_TRUE((*gateway)->running());
}

}  // namespace
}  // namespace parley::testing
