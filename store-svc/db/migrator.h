// Schema migrations for the Parley database.
//
// Migrations are the numbered files in store-svc/migrations/ (NNNN_name.sql), compiled
// into the binary so a deployed parley-store always carries exactly the schema it
// expects. Migrate() applies the ones not yet recorded in `schema_migrations`, in
// order, each in its own transaction together with its record, under a Postgres
// advisory lock so two replicas starting at once apply each migration exactly once.
// Every migration is also written to be idempotent (IF NOT EXISTS), because a table
// may exist that was created outside this system.
//
//   absl::StatusOr<int> version = Migrate(database_url, BuiltinMigrations(), logger);
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "telemetry/log.h"

namespace parley::store {

struct Migration {
  int version;
  std::string name;
  std::string sql;
};

// The migrations compiled into this binary, ordered by version.
const std::vector<Migration>& BuiltinMigrations();

// Applies pending migrations; returns the schema version afterwards. UNAVAILABLE when
// Postgres cannot be reached; INTERNAL (naming the migration) when one fails, in which
// case that migration is rolled back and later ones are not tried.
absl::StatusOr<int> Migrate(const std::string& database_url,
                            const std::vector<Migration>& migrations,
                            const telemetry::Logger& logger);

// The highest applied version, 0 for an empty database.
absl::StatusOr<int> SchemaVersion(const std::string& database_url);

}  // namespace parley::store
