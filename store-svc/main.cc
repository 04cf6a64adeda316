// parley-store: the only Postgres client. Owns every table and the schema.
//
//   parley-store [flags]           serve StoreService
//   parley-store migrate [flags]   apply pending schema migrations and exit
#include <unistd.h>

#include <iostream>
#include <pqxx/pqxx>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/config.h"
#include "common/redis.h"
#include "common/server/service_host.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "store-svc/api/store_service.h"
#include "store-svc/db/migrator.h"
#include "store-svc/db/pool.h"
#include "store-svc/persister/persister.h"

namespace {

struct StoreConfig {
  std::string database_url = "postgresql://postgres@127.0.0.1:55432/parley";
  std::string redis_url = "redis://127.0.0.1:56379";
  int64_t db_pool_size = 16;
  // Every call blocks a handler thread on Postgres, so as many calls can be in flight as
  // there are pool connections: that many threads are kept rather than churned.
  int64_t handler_idle_threads = 0;  // 0: db_pool_size
  // How long a call retries a lost Postgres before it answers UNAVAILABLE.
  absl::Duration db_retry_max_elapsed = absl::Seconds(20);
  bool persister = true;
  std::string redis_key_prefix;
};

std::string DefaultOwner() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return absl::StrCat(host, "/", getpid());
}

absl::Status ValidateDatabaseUrl(absl::string_view url) {
  if (absl::StartsWith(url, "postgresql://") || absl::StartsWith(url, "postgres://")) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError("expected postgresql://user@host:port/database");
}

// The health probe of Postgres: one connection of its own (not the pool's, so a busy
// pool never reads as a dead database), reopened after a failure.
class PostgresProbe {
 public:
  explicit PostgresProbe(const std::string& url)
      : url_(absl::StrCat(url, absl::StrContains(url, "?") ? "&" : "?", "connect_timeout=2")) {}

  absl::Status Check() {
    try {
      if (!connection_ || !connection_->is_open()) {
        connection_ = std::make_unique<pqxx::connection>(url_);
      }
      pqxx::nontransaction tx(*connection_);
      tx.exec("SELECT 1");
      return absl::OkStatus();
    } catch (const std::exception& e) {
      connection_.reset();
      return absl::UnavailableError(e.what());
    }
  }

 private:
  const std::string url_;
  std::unique_ptr<pqxx::connection> connection_;
};

int RunMigrate(const StoreConfig& config, const parley::ServerOptions& server) {
  parley::telemetry::Logger logger("parley-store",
                                   parley::telemetry::ParseLogLevel(server.log_level)
                                       .value_or(parley::telemetry::LogLevel::kInfo));
  absl::StatusOr<int> version =
      parley::store::Migrate(config.database_url, parley::store::BuiltinMigrations(), logger);
  if (!version.ok()) {
    logger.Error("migrate failed", {{"error", version.status().ToString()}});
    return 1;
  }
  logger.Info("schema up to date", {{"schema_version", *version}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  parley::ServerOptions server{.grpc_addr = "127.0.0.1:7073", .admin_addr = "127.0.0.1:9073"};
  StoreConfig config;
  parley::Flags flags("parley-store",
                      "Durable sessions, messages, turns and events in Postgres.\n"
                      "Commands: (none) serve; migrate: apply schema migrations and exit.");
  parley::AddServerFlags(flags, &server);
  flags.String("database_url", &config.database_url, "Postgres connection URL",
               ValidateDatabaseUrl);
  flags.String("redis_url", &config.redis_url, "Redis holding session event streams",
               parley::ValidateRedisUrl);
  flags.Int("db_pool_size", &config.db_pool_size,
            "Postgres connections (and so concurrent queries) per process", 1, 512);
  flags.Int("handler_idle_threads", &config.handler_idle_threads,
            "gRPC handler threads kept waiting for calls, at most (more start under load; "
            "below the calls in flight, a thread is created and ended per call); "
            "0: --db_pool_size",
            0, 1024);
  flags.Duration("db_retry_max_elapsed", &config.db_retry_max_elapsed,
                 "how long a call waits for a lost Postgres to return before it answers "
                 "UNAVAILABLE");
  flags.Bool("persister", &config.persister,
             "move session events from Redis into Postgres in this process");
  flags.String("redis_key_prefix", &config.redis_key_prefix,
               "prefix of every Redis key (tests use it to share one server)");
  const parley::Environment env = parley::ProcessEnvironment();
  std::vector<std::string> args =
      parley::ParseFlagsOrExit(flags, argc, argv, env, /*allow_positional=*/true);
  parley::ParseTracingEnvOrExit(env, &server);
  if (args.size() == 1 && args[0] == "migrate") return RunMigrate(config, server);
  if (!args.empty()) {
    std::cerr << "parley-store: unknown command \"" << args[0]
              << "\" (expected none or \"migrate\")\n";
    return 2;
  }

  server.sync_max_idle_threads = static_cast<int>(
      config.handler_idle_threads > 0 ? config.handler_idle_threads : config.db_pool_size);
  parley::ServiceHost host("parley-store", server);
  absl::StatusOr<int> version = parley::store::SchemaVersion(config.database_url);
  parley::telemetry::Gauge& schema_version =
      host.registry()
          .AddGauge("parley_store_schema_version", "Highest applied schema migration.")
          .WithLabels({});
  if (version.ok()) {
    schema_version.Set(*version);
    host.logger().Info("database reachable", {{"schema_version", *version}});
  } else {
    host.logger().Warn("database not reachable at start", {{"error", version.status().ToString()}});
  }
  parley::store::PgPool::Options pool_options{.url = config.database_url,
                                              .size = static_cast<int>(config.db_pool_size)};
  pool_options.retry.max_elapsed = config.db_retry_max_elapsed;
  parley::store::PgPool pool(pool_options, parley::RealClock::Get(), &host.registry());
  parley::store::StoreServiceImpl store(pool, parley::store::StoreLimits{});
  host.AddService(&store);
  PostgresProbe postgres(config.database_url);
  host.AddDependency("postgres", [&postgres] { return postgres.Check(); });
  std::unique_ptr<parley::store::EventPersister> persister;
  if (config.persister) {
    persister = std::make_unique<parley::store::EventPersister>(
        parley::store::PersisterOptions{.redis = *parley::ParseRedisUrl(config.redis_url),
                                        .key_prefix = config.redis_key_prefix,
                                        .owner = DefaultOwner()},
        pool, host.logger(), host.registry());
    persister->Start();
  }
  int code = host.Run();
  if (persister) persister->Stop();
  return code;
}
