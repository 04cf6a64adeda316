// The real parley-gateway binary streams events: wired to Redis and a real parley-store,
// an event published the way session-svc does reaches a StreamEvents client.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/events/publisher.h"
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

std::string Health(const ServiceProcess& process) {
  absl::StatusOr<std::string> health = CheckHealth(process.grpc_target());
  return health.ok() ? *health : health.status().ToString();
}

int Readyz(const ServiceProcess& process) {
  auto answer = HttpGet(process.admin_port(), "/readyz");
  return answer.ok() ? answer->first : 0;
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
