// PgPool's metrics: query latency by operation, named after the calling function, and the
// pool's usage (connections in use and idle, callers waiting, wait time), read the way
// Prometheus reads them, from the registry's text.
#include "store-svc/db/pool.h"

#include <gtest/gtest.h>

#include <thread>

#include "absl/strings/match.h"
#include "absl/synchronization/notification.h"
#include "tests/harness/services.h"
#include "tests/store/store_fixture.h"

namespace parley::store {
namespace {

using parley::testing::MetricSample;
using parley::testing::WaitFor;

TEST(OperationName, IsTheUnqualifiedNameOfTheCallingFunction) {
  EXPECT_EQ(OperationName("grpc::Status parley::store::StoreServiceImpl::GetSession("
                          "grpc::ServerContext*, const GetSessionRequest*, "
                          "GetSessionResponse*)"),
            "GetSession");
  EXPECT_EQ(OperationName("absl::lts_20220623::StatusOr<parley::store::{anonymous}::ClaimRound> "
                          "parley::store::{anonymous}::ClaimUncapped(parley::store::PgPool&, "
                          "const ClaimNextTurnRequest&)"),
            "ClaimUncapped");
  // A lambda is named after the function it is in.
  EXPECT_EQ(OperationName("parley::store::EventPersister::FlushSession(const string&)::"
                          "<lambda(pqxx::work&)>"),
            "FlushSession");
  EXPECT_EQ(OperationName("int main()"), "main");
  EXPECT_EQ(OperationName(""), "unknown");
}

class PoolMetricsTest : public testing::StoreFixture {
 protected:
  std::optional<double> Sample(const std::string& series) {
    return MetricSample(registry().RenderText(), series);
  }
};

TEST_F(PoolMetricsTest, StoreCallsAreTimedByTheirMethod) {
  parley::v1::Session session = CreateSession("tenant_a");
  grpc::ClientContext context;
  v1::GetSessionRequest request;
  request.set_tenant_id("tenant_a");
  request.set_session_id(session.id());
  v1::GetSessionResponse response;
  ASSERT_TRUE(stub()->GetSession(&context, request, &response).ok());

  EXPECT_EQ(Sample("parley_store_query_seconds_count{operation=\"GetSession\"}"), 1);
  EXPECT_EQ(Sample("parley_store_query_seconds_count{operation=\"CreateSession\"}"), 1);
  EXPECT_GT(Sample("parley_store_query_seconds_sum{operation=\"GetSession\"}").value_or(0), 0);
  // No id reaches a label.
  EXPECT_FALSE(absl::StrContains(registry().RenderText(), session.id()));
  EXPECT_EQ(Sample("parley_store_db_pool_size"), 8);
  EXPECT_EQ(Sample("parley_store_db_pool_connections{state=\"in_use\"}"), 0);
  EXPECT_GE(Sample("parley_store_db_pool_connections{state=\"idle\"}").value_or(0), 1);
}

TEST(PoolMetrics, CountsCallersWaitingForABusyPool) {
  auto db = parley::testing::TestDatabase::Create();
  ASSERT_TRUE(db.ok()) << db.status();
  telemetry::Registry registry;
  PgPool pool(PgPool::Options{.url = (*db)->url(), .size = 1}, RealClock::Get(), &registry);
  auto sample = [&](const std::string& series) {
    return MetricSample(registry.RenderText(), series).value_or(-1);
  };

  absl::Notification holding, release;
  std::thread holder([&] {
    (void)pool.Run([&](pqxx::connection&) {
      holding.Notify();
      release.WaitForNotification();
      return absl::OkStatus();
    });
  });
  holding.WaitForNotification();
  EXPECT_EQ(sample("parley_store_db_pool_connections{state=\"in_use\"}"), 1);
  std::thread waiter([&] {
    (void)pool.Autocommit<int>([](pqxx::nontransaction& tx) -> absl::StatusOr<int> {
      return tx.exec1("SELECT 1")[0].as<int>();
    });
  });
  EXPECT_TRUE(
      WaitFor(absl::Seconds(10), [&] { return sample("parley_store_db_pool_waiting") == 1; }));
  absl::SleepFor(absl::Milliseconds(20));  // So the wait is measurably long.
  release.Notify();
  holder.join();
  waiter.join();

  EXPECT_EQ(sample("parley_store_db_pool_waiting"), 0);
  EXPECT_EQ(sample("parley_store_db_pool_connections{state=\"in_use\"}"), 0);
  EXPECT_EQ(sample("parley_store_db_pool_connections{state=\"idle\"}"), 1);
  EXPECT_EQ(sample("parley_store_db_pool_wait_seconds_count"), 2);
  EXPECT_GE(sample("parley_store_db_pool_wait_seconds_sum"), 0.02);
}

TEST(PoolMetrics, FailedConnectsGiveTheirSlotBack) {
  // Nothing listens on port 1: every connect fails at once.
  telemetry::Registry registry;
  PgPool pool(PgPool::Options{.url = "postgresql://parley@127.0.0.1:1/none",
                              .size = 1,
                              .retry = {.initial = absl::Milliseconds(1),
                                        .max = absl::Milliseconds(5),
                                        .max_elapsed = absl::Milliseconds(100)}},
              RealClock::Get(), &registry);
  absl::Status status = pool.Run([](pqxx::connection&) { return absl::OkStatus(); });
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;

  // Every attempt's slot came back exactly once: nothing in use, and the pool still opens
  // at most its size.
  EXPECT_EQ(
      MetricSample(registry.RenderText(), "parley_store_db_pool_connections{state=\"in_use\"}"), 0);
}

}  // namespace
}  // namespace parley::store
