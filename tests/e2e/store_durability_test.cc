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

std::unique_ptr<ServiceProcess> StartStore(const std::string& database_url, const TestRedis* redis,
                                           std::vector<std::string> extra_args = {}) {
  ProcessOptions options{.binary = BinaryPath("store-svc/parley-store"),
                         .args = {"--grpc_addr=127.0.0.1:0", "--admin_addr=127.0.0.1:0",
                                  "--database_url=" + database_url}};
  options.args.insert(options.args.end(), extra_args.begin(), extra_args.end());
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

grpc::Status CreateTenant(StoreService::Stub& stub, const std::string& tenant) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  store::v1::CreateTenantRequest request;
  request.set_tenant_id(tenant);
  store::v1::CreateTenantResponse response;
  return stub.CreateTenant(&context, request, &response);
}

std::string Health(const ServiceProcess& process, const std::string& service = "") {
  absl::StatusOr<std::string> health = CheckHealth(process.grpc_target(), service);
  return health.ok() ? *health : health.status().ToString();
}

int Readyz(const ServiceProcess& process) {
  auto answer = HttpGet(process.admin_port(), "/readyz");
  return answer.ok() ? answer->first : 0;
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
  // The kill must have landed mid-work: counted once the process is gone (nothing can
  // commit after that), Postgres holds some but not all of the backlog.
  const int64_t after_kill = CountEvents((*db)->url());
  ASSERT_GT(after_kill, 0);
  ASSERT_LT(after_kill, total) << "the persister finished before the kill: nothing was proven";

  auto restarted = StartStore((*db)->url(), redis->get());
  ASSERT_NE(restarted, nullptr);
  ASSERT_TRUE(WaitFor(absl::Seconds(60), [&] { return CountEvents((*db)->url()) >= total; }))
      << CountEvents((*db)->url()) << " of " << total;
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

// Proves: a Postgres crash under write load loses no acknowledged write, and the same
// store-svc process (never restarted) writes again once Postgres is back.
// Making sure the crash hit: writers run without pause across it; Postgres stays down
// until some call was answered UNAVAILABLE (store-svc's retry budget is cut to 1 s so
// that comes quickly), i.e. writes were in flight and failed; and "wrote again" counts
// only acknowledgements of calls sent after Postgres was back up.
TEST(StoreDurability, PostgresCrashRestartUnderLoadLosesNoAcknowledgedWrite) {
  auto postgres = PrivatePostgres::Start();
  ASSERT_TRUE(postgres.ok()) << postgres.status();
  const std::string url = (*postgres)->url();
  ASSERT_TRUE(Migrate(url).ok());
  auto store = StartStore(url, nullptr, {"--db_retry_max_elapsed=1s"});
  ASSERT_NE(store, nullptr);
  auto stub = Stub(*store);
  std::vector<std::string> sessions;
  for (int i = 0; i < 4; ++i) sessions.push_back(CreateSession(*stub, "tenant_a"));

  // Writers send messages with idempotency keys and retry UNAVAILABLE with the same
  // key, as a client would; every OK answer is an acknowledged write.
  struct Ack {
    std::string session;
    std::string key;
  };
  absl::Mutex mu;
  std::vector<Ack> acknowledged;
  std::atomic<int> acks_after_restart{0};
  std::atomic<int> unavailable{0};
  std::atomic<bool> postgres_back{false};
  std::atomic<bool> stop{false};
  auto writer = [&](int w) {
    for (int n = 0; n < 100000 && !stop.load(); ++n) {
      const std::string& session = sessions[w];
      const std::string key = absl::StrCat("w", w, "-", n);
      for (int attempt = 0; attempt < 300; ++attempt) {
        const bool sent_after_restart = postgres_back.load();
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
          acknowledged.push_back({session, key});
          if (sent_after_restart) ++acks_after_restart;
          break;
        }
        ASSERT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
        ++unavailable;
        absl::SleepFor(absl::Milliseconds(50));
      }
    }
  };
  auto acked = [&] {
    absl::MutexLock lock(&mu);
    return acknowledged.size();
  };
  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w) writers.emplace_back(writer, w);
  auto finish = [&] {
    stop = true;
    for (auto& t : writers) t.join();
  };

  const bool loaded = WaitFor(absl::Seconds(30), [&] { return acked() >= 40; });
  ASSERT_TRUE((*postgres)->Crash().ok());
  const bool hit = WaitFor(absl::Seconds(30), [&] { return unavailable.load() > 0; });
  ASSERT_TRUE((*postgres)->StartAgain().ok());
  postgres_back = true;
  const bool wrote_again =
      WaitFor(absl::Seconds(60), [&] { return acks_after_restart.load() >= 40; });
  finish();
  ASSERT_TRUE(loaded) << "writers never got going";
  ASSERT_TRUE(hit) << "no call was answered UNAVAILABLE: the crash hit no write in flight";
  EXPECT_TRUE(wrote_again) << acks_after_restart.load()
                           << " writes acknowledged after Postgres came back";

  EXPECT_TRUE(store->running()) << "store-svc must survive a Postgres restart";
  EXPECT_TRUE(WaitFor(absl::Seconds(10), [&] { return Health(*store) == "SERVING"; }));
  pqxx::connection connection(url);
  pqxx::work tx(connection);
  for (const Ack& ack : acknowledged) {
    EXPECT_EQ(tx.exec_params1("SELECT count(*) FROM messages WHERE session_id = $1 AND "
                              "idempotency_key = $2",
                              ack.session, ack.key)[0]
                  .as<int>(),
              1)
        << ack.session << " " << ack.key;
  }
}

// Proves: store-svc's gRPC health and /readyz say NOT_SERVING / 503 while its Postgres
// is down and SERVING / 200 again once it is back, with no restart of store-svc.
// Making sure the outage was real: while health says NOT_SERVING a call is answered
// UNAVAILABLE, and after recovery the same process answers it OK.
// Readiness ("" and /readyz) follows Postgres; liveness stays SERVING throughout, so
// Kubernetes takes the Pod out of its Service but does not restart it.
TEST(StoreDurability, HealthAndReadyzFollowPostgresDownAndBack) {
  auto postgres = PrivatePostgres::Start();
  ASSERT_TRUE(postgres.ok()) << postgres.status();
  ASSERT_TRUE(Migrate((*postgres)->url()).ok());
  auto store = StartStore((*postgres)->url(), nullptr,
                          {"--db_retry_max_elapsed=200ms", "--dependency_probe_interval=100ms"});
  ASSERT_NE(store, nullptr);
  auto stub = Stub(*store);
  EXPECT_EQ(Health(*store), "SERVING");
  EXPECT_EQ(Health(*store, "liveness"), "SERVING");
  EXPECT_EQ(Readyz(*store), 200);

  ASSERT_TRUE((*postgres)->Crash().ok());
  EXPECT_TRUE(WaitFor(absl::Seconds(20), [&] { return Health(*store) == "NOT_SERVING"; }))
      << Health(*store);
  EXPECT_EQ(Health(*store, "liveness"), "SERVING");
  EXPECT_TRUE(WaitFor(absl::Seconds(5), [&] { return Readyz(*store) == 503; }));
  EXPECT_EQ(CreateTenant(*stub, "tenant_down").error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Health(*store, "liveness"), "SERVING");

  ASSERT_TRUE((*postgres)->StartAgain().ok());
  EXPECT_TRUE(WaitFor(absl::Seconds(20), [&] { return Health(*store) == "SERVING"; }))
      << Health(*store);
  EXPECT_TRUE(WaitFor(absl::Seconds(5), [&] { return Readyz(*store) == 200; }));
  EXPECT_TRUE(CreateTenant(*stub, "tenant_back").ok());
  EXPECT_EQ(Health(*store, "liveness"), "SERVING");
  EXPECT_EQ(CheckHealth(store->grpc_target(), "no-such-service").status().code(),
            absl::StatusCode::kNotFound)
      << "a name nobody registered is not silently SERVING";
  EXPECT_TRUE(store->running());
  EXPECT_NE(store->Output().find("\"msg\":\"dependency down\""), std::string::npos);
}

}  // namespace
}  // namespace parley::testing
