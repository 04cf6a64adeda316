// A real store for a test: a fresh Postgres database with the schema applied, the
// StoreService implementation behind an in-process gRPC server, and a stub to call it.
//
//   class SessionsTest : public StoreFixture {};
//   TEST_F(SessionsTest, ...) { auto s = CreateSession("tenant_a"); ... stub()->... }
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>

#include "common/clock.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "store-svc/api/store_service.h"
#include "store-svc/db/migrator.h"
#include "store-svc/db/pool.h"
#include "tests/harness/services.h"

namespace parley::store::testing {

class StoreFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    auto db = parley::testing::TestDatabase::Create();
    ASSERT_TRUE(db.ok()) << db.status();
    db_ = *std::move(db);
    telemetry::Logger logger("test", telemetry::LogLevel::kError);
    auto version = Migrate(db_->url(), BuiltinMigrations(), logger);
    ASSERT_TRUE(version.ok()) << version.status();
    pool_ = std::make_unique<PgPool>(PgPool::Options{.url = db_->url(), .size = 8},
                                     RealClock::Get(), &registry_);
    service_ = std::make_unique<StoreServiceImpl>(*pool_, limits_);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::StoreService::NewStub(channel_);
  }

  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  v1::StoreService::Stub* stub() { return stub_.get(); }
  const std::string& database_url() const { return db_->url(); }
  PgPool& pool() { return *pool_; }
  // The pool's metrics.
  const telemetry::Registry& registry() const { return registry_; }

  // Creates tenant `tenant_id` (idempotent).
  void CreateTenant(const std::string& tenant_id) {
    grpc::ClientContext context;
    v1::CreateTenantRequest request;
    request.set_tenant_id(tenant_id);
    v1::CreateTenantResponse response;
    grpc::Status status = stub_->CreateTenant(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }

  // Creates the tenant if needed and a session in it; returns the session.
  parley::v1::Session CreateSession(const std::string& tenant_id,
                                    parley::v1::CreateSessionRequest fields = {}) {
    CreateTenant(tenant_id);
    grpc::ClientContext context;
    v1::CreateSessionRequest request;
    request.set_tenant_id(tenant_id);
    *request.mutable_request() = std::move(fields);
    v1::CreateSessionResponse response;
    grpc::Status status = stub_->CreateSession(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.session();
  }

  StoreLimits limits_;

 private:
  std::unique_ptr<parley::testing::TestDatabase> db_;
  telemetry::Registry registry_;  // Outlives the pool.
  std::unique_ptr<PgPool> pool_;
  std::unique_ptr<StoreServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::StoreService::Stub> stub_;
};

}  // namespace parley::store::testing
