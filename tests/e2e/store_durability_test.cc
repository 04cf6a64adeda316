// store-svc as a process, under the failures DESIGN §3 names: killed in the middle of
// persisting events, and its Postgres crash-restarted while requests keep coming.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <pqxx/pqxx>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "tests/harness/services.h"

namespace parley::testing {
namespace {

using store::v1::StoreService;

absl::Status Migrate(const std::string& url) {
  auto result = RunCommand({.binary = BinaryPath("store-svc/parley-store"),
                            .args = {"migrate", "--database_url=" + url}});
  if (!result.ok()) return result.status();
  if (result->exit_code != 0) return absl::InternalError(result->output);
  return absl::OkStatus();
}

std::unique_ptr<ServiceProcess> StartStore(const std::string& database_url,
                                           const TestRedis* redis) {
  ProcessOptions options{.binary = BinaryPath("store-svc/parley-store"),
                         .args = {"--grpc_addr=127.0.0.1:0", "--admin_addr=127.0.0.1:0",
                                  "--database_url=" + database_url}};
  if (redis != nullptr) {
    options.args.push_back("--redis_url=" + redis->url());
    options.args.push_back("--redis_key_prefix=" + redis->keys().prefix());
  } else {
    options.args.push_back("--persister=false");
  }
  auto process = ServiceProcess::Start(options);
  EXPECT_TRUE(process.ok()) << process.status();
  if (!process.ok()) return nullptr;
  absl::Status serving = (*process)->WaitUntilServing(absl::Seconds(30));
  EXPECT_TRUE(serving.ok()) << serving << (*process)->Output();
  return *std::move(process);
}

std::unique_ptr<StoreService::Stub> Stub(const ServiceProcess& store) {
  return StoreService::NewStub(
      grpc::CreateChannel(store.grpc_target(), grpc::InsecureChannelCredentials()));
}

std::string CreateSession(StoreService::Stub& stub, const std::string& tenant) {
  {
    grpc::ClientContext context;
    store::v1::CreateTenantRequest request;
    request.set_tenant_id(tenant);
    store::v1::CreateTenantResponse response;
    EXPECT_TRUE(stub.CreateTenant(&context, request, &response).ok());
  }
  grpc::ClientContext context;
  store::v1::CreateSessionRequest request;
  request.set_tenant_id(tenant);
  store::v1::CreateSessionResponse response;
  grpc::Status status = stub.CreateSession(&context, request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response.session().id();
}

int64_t CountEvents(const std::string& url) {
  pqxx::connection connection(url);
  pqxx::work tx(connection);
  return tx.exec("SELECT count(*) FROM events")[0][0].as<int64_t>();
}

TEST(StoreDurability, PersisterKilledMidBatchLeavesExactlyOneToNAfterRestart) {
  auto db = TestDatabase::Create();
  ASSERT_TRUE(db.ok()) << db.status();
  ASSERT_TRUE(Migrate((*db)->url()).ok());
  auto redis = TestRedis::Create();
  ASSERT_TRUE(redis.ok()) << redis.status();

  // Sessions are created through a store without a persister; the backlog is then
  // published to Redis the way session-svc does it.
  constexpr int kSessions = 8;
  constexpr uint64_t kEvents = 2500;
  std::vector<std::string> sessions;
  {
    auto store = StartStore((*db)->url(), nullptr);
    ASSERT_NE(store, nullptr);
    auto stub = Stub(*store);
    for (int i = 0; i < kSessions; ++i) sessions.push_back(CreateSession(*stub, "tenant_a"));
  }
  const RedisKeys& keys = (*redis)->keys();
  for (const std::string& session : sessions) {
    for (uint64_t seq = 1; seq <= kEvents; ++seq) {
      v1::Event event;
      event.set_session_id(session);
      event.set_seq(seq);
      event.set_epoch(1);
      event.mutable_text_delta()->set_text(std::string(200, 'x'));
      ASSERT_TRUE((*redis)
                      ->connection()
                      .Command({"XADD", keys.EventStream(session), absl::StrCat(seq, "-0"), "e",
                                event.SerializeAsString()})
                      .ok());
    }
    ASSERT_TRUE((*redis)->connection().Command({"ZADD", keys.PersistQueue(), "1", session}).ok());
  }

  // Kill -9 as soon as some, but not all, events are durable.
  auto store = StartStore((*db)->url(), redis->get());
  ASSERT_NE(store, nullptr);
  int64_t at_kill = 0;
  for (int i = 0; i < 10000 && at_kill == 0; ++i) {
    at_kill = CountEvents((*db)->url());
    if (at_kill == 0) absl::SleepFor(absl::Milliseconds(2));
  }
  store->Signal(SIGKILL);
  ASSERT_TRUE(store->WaitForExit(absl::Seconds(10)).ok());
  ASSERT_GT(at_kill, 0);
  const int64_t total = kSessions * static_cast<int64_t>(kEvents);

  auto restarted = StartStore((*db)->url(), redis->get());
  ASSERT_NE(restarted, nullptr);
  for (int i = 0; i < 3000 && CountEvents((*db)->url()) < total; ++i) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  pqxx::connection connection((*db)->url());
  pqxx::work tx(connection);
  for (const std::string& session : sessions) {
    pqxx::row row = tx.exec_params1(
        "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM events WHERE "
        "session_id = $1",
        session);
    EXPECT_EQ(row[0].as<int64_t>(), static_cast<int64_t>(kEvents)) << session;
    EXPECT_EQ(row[1].as<int64_t>(), static_cast<int64_t>(kEvents)) << session;
    EXPECT_EQ(row[2].as<int64_t>(), 1) << session;
    EXPECT_EQ(row[3].as<int64_t>(), static_cast<int64_t>(kEvents)) << session;
  }
}

TEST(StoreDurability, PostgresCrashRestartUnderLoadLosesNoAcknowledgedWrite) {
  auto postgres = PrivatePostgres::Start();
  ASSERT_TRUE(postgres.ok()) << postgres.status();
  const std::string url = (*postgres)->url();
  ASSERT_TRUE(Migrate(url).ok());
  auto store = StartStore(url, nullptr);
  ASSERT_NE(store, nullptr);
  auto stub = Stub(*store);
  std::vector<std::string> sessions;
  for (int i = 0; i < 4; ++i) sessions.push_back(CreateSession(*stub, "tenant_a"));

  // Writers send messages with idempotency keys and retry UNAVAILABLE with the same
  // key, as a client would; every OK answer is an acknowledged write.
  absl::Mutex mu;
  std::vector<std::pair<std::string, std::string>> acknowledged;  // (session, key)
  std::atomic<bool> stop{false};
  auto writer = [&](int w) {
    for (int n = 0; n < 400 && !stop.load(); ++n) {
      const std::string& session = sessions[w];
      const std::string key = absl::StrCat("w", w, "-", n);
      for (int attempt = 0; attempt < 50; ++attempt) {
        grpc::ClientContext context;
        context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
        store::v1::EnqueueTurnRequest request;
        request.set_tenant_id("tenant_a");
        request.mutable_request()->set_session_id(session);
        request.mutable_request()->set_idempotency_key(key);
        request.mutable_request()->add_content()->set_text("hello");
        store::v1::EnqueueTurnResponse response;
        grpc::Status status = stub->EnqueueTurn(&context, request, &response);
        if (status.ok()) {
          absl::MutexLock lock(&mu);
          acknowledged.emplace_back(session, key);
          break;
        }
        ASSERT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
        absl::SleepFor(absl::Milliseconds(100));
      }
    }
  };
  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w) writers.emplace_back(writer, w);
  absl::SleepFor(absl::Milliseconds(500));
  ASSERT_TRUE((*postgres)->RestartImmediately().ok());
  absl::SleepFor(absl::Milliseconds(500));
  stop = true;
  for (auto& t : writers) t.join();

  ASSERT_FALSE(acknowledged.empty());
  EXPECT_TRUE(store->running()) << "store-svc must survive a Postgres restart";
  EXPECT_EQ(*CheckHealth(store->grpc_target()), "SERVING");
  pqxx::connection connection(url);
  pqxx::work tx(connection);
  for (const auto& [session, key] : acknowledged) {
    EXPECT_EQ(tx.exec_params1("SELECT count(*) FROM messages WHERE session_id = $1 AND "
                              "idempotency_key = $2",
                              session, key)[0]
                  .as<int>(),
              1)
        << session << " " << key;
  }
}

}  // namespace
}  // namespace parley::testing
