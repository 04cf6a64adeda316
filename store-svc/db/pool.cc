#include "store-svc/db/pool.h"

#include "absl/strings/str_cat.h"

namespace parley::store {
namespace {

// Classifies what a failed attempt threw. Transient failures are retried.
absl::Status StatusFromException() {
  try {
    throw;
  } catch (const pqxx::broken_connection& e) {
    return absl::UnavailableError(absl::StrCat("postgres connection: ", e.what()));
  } catch (const pqxx::in_doubt_error& e) {
    // The commit may or may not have happened; every store write is idempotent or
    // fenced, so trying again is safe.
    return absl::UnavailableError(absl::StrCat("postgres commit in doubt: ", e.what()));
  } catch (const pqxx::serialization_failure& e) {
    return absl::AbortedError(absl::StrCat("postgres serialization failure: ", e.what()));
  } catch (const pqxx::deadlock_detected& e) {
    return absl::AbortedError(absl::StrCat("postgres deadlock: ", e.what()));
  } catch (const pqxx::sql_error& e) {
    const std::string& state = e.sqlstate();
    // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, 08xxx
    // connection exceptions: the server is restarting.
    if (state.rfind("57P0", 0) == 0 || state.rfind("08", 0) == 0) {
      return absl::UnavailableError(absl::StrCat("postgres restarting: ", e.what()));
    }
    if (state == "23503") {
      // The SQL text stays out of the answer: callers get the fact, not the query.
      return absl::FailedPreconditionError("a referenced row does not exist");
    }
    if (state == "23505") return absl::AlreadyExistsError("the row already exists");
    return absl::InternalError(absl::StrCat("postgres: ", e.what(), " [", state, "]"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("postgres: ", e.what()));
  }
}

}  // namespace

std::string PreparedName(pqxx::connection_base& connection, const std::string& sql) {
  std::string name = absl::StrCat("p", absl::Hex(std::hash<std::string>{}(sql)));
  connection.prepare(name, sql);
  return name;
}

PgPool::PgPool(Options options, Clock& clock) : options_(std::move(options)), clock_(clock) {}

std::unique_ptr<pqxx::connection> PgPool::Acquire() {
  {
    absl::MutexLock lock(&mu_);
    auto available = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !idle_.empty() || open_ < options_.size;
    };
    mu_.Await(absl::Condition(&available));
    if (!idle_.empty()) {
      std::unique_ptr<pqxx::connection> connection = std::move(idle_.back());
      idle_.pop_back();
      return connection;
    }
    ++open_;
  }
  try {
    return std::make_unique<pqxx::connection>(options_.url);
  } catch (...) {
    absl::MutexLock lock(&mu_);
    --open_;
    throw;
  }
}

void PgPool::Release(std::unique_ptr<pqxx::connection> connection) {
  absl::MutexLock lock(&mu_);
  if (connection && connection->is_open()) {
    idle_.push_back(std::move(connection));
  } else {
    --open_;
  }
}

absl::Status PgPool::Run(const std::function<absl::Status(pqxx::connection&)>& body) {
  // Only failures of the database itself are retried, never a status the body chose
  // to return (an ABORTED version mismatch must reach the caller).
  bool transient = false;
  return RetryStatus(
      options_.retry, clock_,
      [&]() -> absl::Status {
        transient = false;
        std::unique_ptr<pqxx::connection> connection;
        absl::Status status;
        try {
          connection = Acquire();
          status = body(*connection);
        } catch (const StatusException& e) {
          status = e.status;
        } catch (...) {
          status = StatusFromException();
          transient = status.code() == absl::StatusCode::kUnavailable ||
                      status.code() == absl::StatusCode::kAborted;
          // A connection that failed mid-transaction may be unusable; open a fresh one.
          if (status.code() == absl::StatusCode::kUnavailable) connection.reset();
        }
        Release(std::move(connection));
        return status;
      },
      [&](const absl::Status&) { return transient; });
}

}  // namespace parley::store
