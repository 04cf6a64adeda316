#include "store-svc/db/migrator.h"

#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"

namespace parley::store {
namespace {

// Arbitrary but fixed: the advisory lock key that serialises migrators.
constexpr int64_t kMigrationLockKey = 0x7061726c6579;  // "parley"

constexpr char kCreateMigrationsTable[] = R"sql(
CREATE TABLE IF NOT EXISTS schema_migrations (
  version    integer PRIMARY KEY,
  name       text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
))sql";

int CurrentVersion(pqxx::connection& connection) {
  pqxx::work tx(connection);
  pqxx::result rows = tx.exec("SELECT COALESCE(MAX(version), 0) FROM schema_migrations");
  tx.commit();
  return rows[0][0].as<int>();
}

}  // namespace

absl::StatusOr<int> Migrate(const std::string& database_url,
                            const std::vector<Migration>& migrations,
                            const telemetry::Logger& logger) {
  std::unique_ptr<pqxx::connection> connection;
  try {
    connection = std::make_unique<pqxx::connection>(database_url);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("postgres: ", e.what()));
  }
  try {
    {
      pqxx::nontransaction tx(*connection);
      tx.exec(absl::StrCat("SELECT pg_advisory_lock(", kMigrationLockKey, ")"));
      tx.exec(kCreateMigrationsTable);
    }
    int version = CurrentVersion(*connection);
    for (const Migration& migration : migrations) {
      if (migration.version <= version) continue;
      try {
        pqxx::work tx(*connection);
        tx.exec(migration.sql);
        tx.exec_params("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                       migration.version, migration.name);
        tx.commit();
      } catch (const std::exception& e) {
        pqxx::nontransaction unlock(*connection);
        unlock.exec(absl::StrCat("SELECT pg_advisory_unlock(", kMigrationLockKey, ")"));
        return absl::InternalError(absl::StrCat("migration ", migration.version, " (",
                                                migration.name, ") failed: ", e.what()));
      }
      version = migration.version;
      logger.Info("migration applied", {{"version", version}, {"name", migration.name}});
    }
    pqxx::nontransaction unlock(*connection);
    unlock.exec(absl::StrCat("SELECT pg_advisory_unlock(", kMigrationLockKey, ")"));
    return version;
  } catch (const pqxx::broken_connection& e) {
    return absl::UnavailableError(absl::StrCat("postgres: ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("migrations: ", e.what()));
  }
}

absl::StatusOr<int> SchemaVersion(const std::string& database_url) {
  try {
    pqxx::connection connection(database_url);
    pqxx::work tx(connection);
    pqxx::result exists = tx.exec("SELECT to_regclass('schema_migrations') IS NOT NULL");
    if (!exists[0][0].as<bool>()) return 0;
    pqxx::result rows = tx.exec("SELECT COALESCE(MAX(version), 0) FROM schema_migrations");
    return rows[0][0].as<int>();
  } catch (const pqxx::broken_connection& e) {
    return absl::UnavailableError(absl::StrCat("postgres: ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("schema version: ", e.what()));
  }
}

}  // namespace parley::store
