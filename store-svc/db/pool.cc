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

std::string OperationName(absl::string_view function_name) {
  absl::string_view name = function_name.substr(0, function_name.find('('));
  size_t qualifier = name.find_last_of(": ");
  if (qualifier != absl::string_view::npos) name.remove_prefix(qualifier + 1);
  return name.empty() ? "unknown" : std::string(name);
}

PgPool::PgPool(Options options, Clock& clock, telemetry::Registry* registry)
    : options_(std::move(options)), clock_(clock), metrics_(MakeMetrics(registry, options_.size)) {}

std::unique_ptr<PgPool::Metrics> PgPool::MakeMetrics(telemetry::Registry* registry, int size) {
  if (registry == nullptr) return nullptr;
  registry->AddGauge("parley_store_db_pool_size", "Postgres connections the pool may open.")
      .WithLabels({})
      .Set(size);
  telemetry::GaugeFamily& connections =
      registry->AddGauge("parley_store_db_pool_connections",
                         "Open Postgres connections, by state (in_use, idle).", {"state"});
  return std::make_unique<Metrics>(Metrics{
      .query_seconds = registry->AddHistogram(
          "parley_store_query_seconds",
          "Time of one database operation (waiting for a connection, its statements and "
          "retries), by operation: the StoreService method or the shared query that ran it.",
          {"operation"}),
      .wait_seconds = registry
                          ->AddHistogram("parley_store_db_pool_wait_seconds",
                                         "Time a call waited for a free connection.", {})
                          .WithLabels({}),
      .in_use = connections.WithLabels({"in_use"}),
      .idle = connections.WithLabels({"idle"}),
      .waiting = registry
                     ->AddGauge("parley_store_db_pool_waiting",
                                "Calls waiting for a free connection (the pool is exhausted).")
                     .WithLabels({}),
  });
}

void PgPool::PublishUsage() {
  if (!metrics_) return;
  metrics_->in_use.Set(open_ - static_cast<int>(idle_.size()));
  metrics_->idle.Set(static_cast<double>(idle_.size()));
  metrics_->waiting.Set(waiting_);
}

telemetry::Histogram& PgPool::QuerySeconds(const std::source_location& caller) {
  const char* key = caller.function_name();
  {
    absl::ReaderMutexLock lock(&series_mu_);
    auto it = series_.find(key);
    if (it != series_.end()) return *it->second;
  }
  telemetry::Histogram& series = metrics_->query_seconds.WithLabels({OperationName(key)});
  absl::MutexLock lock(&series_mu_);
  series_.emplace(key, &series);
  return series;
}

std::unique_ptr<pqxx::connection> PgPool::Acquire() {
  {
    absl::MutexLock lock(&mu_);
    auto available = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !idle_.empty() || open_ < options_.size;
    };
    if (!available()) {
      absl::Time start = absl::Now();
      ++waiting_;
      PublishUsage();
      mu_.Await(absl::Condition(&available));
      --waiting_;
      if (metrics_) metrics_->wait_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - start));
    } else if (metrics_) {
      metrics_->wait_seconds.Observe(0);
    }
    if (!idle_.empty()) {
      std::unique_ptr<pqxx::connection> connection = std::move(idle_.back());
      idle_.pop_back();
      PublishUsage();
      return connection;
    }
    ++open_;
    PublishUsage();
  }
  // Should this throw, the slot stays counted until the caller's Release(nullptr) gives it
  // back (giving it back here too counted every failed connect twice, and the pool then
  // opened more connections than its size once Postgres returned).
  return std::make_unique<pqxx::connection>(options_.url);
}

void PgPool::Release(std::unique_ptr<pqxx::connection> connection) {
  absl::MutexLock lock(&mu_);
  if (connection && connection->is_open()) {
    idle_.push_back(std::move(connection));
  } else {
    --open_;
  }
  PublishUsage();
}

absl::Status PgPool::Run(const std::function<absl::Status(pqxx::connection&)>& body,
                         std::source_location caller) {
  absl::Time start = absl::Now();
  absl::Status status = RunWithRetries(body);
  if (metrics_) QuerySeconds(caller).Observe(absl::ToDoubleSeconds(absl::Now() - start));
  return status;
}

absl::Status PgPool::RunWithRetries(const std::function<absl::Status(pqxx::connection&)>& body) {
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
