// PgPool: a fixed set of Postgres connections and the one way store-svc runs SQL.
//
//   absl::StatusOr<Session> session = pool.Transact<Session>(
//       [&](pqxx::work& tx) -> absl::StatusOr<Session> { ... });
//
// Transact() borrows a connection (waiting while all are busy), runs the function in a
// transaction and commits only when it returns OK: a non-OK result or an exception
// rolls everything back, so an error can never be half-committed. Serialization
// failures, deadlocks and broken connections are retried with capped backoff within
// `retry.max_elapsed`, on a fresh connection when the old one broke, which is how
// store-svc rides out a Postgres restart. The function may therefore run more than
// once: it must be a pure function of its inputs and the database (generate ids
// before calling Transact, not inside).
//
// Errors: UNAVAILABLE when Postgres stays unreachable, ABORTED when conflicts persist,
// INTERNAL for other SQL errors (the message names the statement's error). Thread-safe.
//
// Metrics (given a registry): every call's latency, by operation — the name of the
// function that called the pool, taken from its source location, so a handler's
// StoreService method (`GetSession`) or a shared query's helper (`AppendEventBatch`) —
// and the pool's usage: connections in use and idle, the configured size, callers
// waiting for a connection and how long they waited. Operation names come from the code,
// never from data, so no id can reach a label.
#pragma once

#include <functional>
#include <memory>
#include <pqxx/pqxx>
#include <source_location>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/retry.h"
#include "telemetry/metrics.h"

namespace parley::store {

class PgPool {
 public:
  struct Options {
    std::string url;
    int size = 8;
    BackoffPolicy retry{.initial = absl::Milliseconds(20),
                        .max = absl::Seconds(1),
                        .max_elapsed = absl::Seconds(20)};
  };

  // Does not connect: connections open on first use, so a store can start before its
  // database. With `registry` (which must outlive the pool) the pool exports its metrics
  // there (see above).
  PgPool(Options options, Clock& clock, telemetry::Registry* registry = nullptr);

  // Runs `body` without BEGIN/COMMIT: each statement commits as it runs, so reads and
  // single-statement writes save two round trips. A body that writes must do it in one
  // statement (nothing here can roll back). Same retry rules as Transact.
  //
  // `caller` names the operation in the latency metric; leave it to its default.
  template <typename T>
  absl::StatusOr<T> Autocommit(const std::function<absl::StatusOr<T>(pqxx::nontransaction&)>& body,
                               std::source_location caller = std::source_location::current()) {
    return RunIn<pqxx::nontransaction, T>(body, caller);
  }

  template <typename T>
  absl::StatusOr<T> Transact(const std::function<absl::StatusOr<T>(pqxx::work&)>& body,
                             std::source_location caller = std::source_location::current()) {
    return RunIn<pqxx::work, T>(body, caller);
  }

  // Runs `body` on a borrowed connection with the same retry rules, for work that
  // manages its own transactions (COPY into a temporary table, advisory locks).
  absl::Status Run(const std::function<absl::Status(pqxx::connection&)>& body,
                   std::source_location caller = std::source_location::current());

 private:
  // Runs `body` in a `Tx` on a borrowed connection; commits only when it returns OK (a
  // non-OK result or an exception leaves the transaction to abort in its destructor).
  template <typename Tx, typename T>
  absl::StatusOr<T> RunIn(const std::function<absl::StatusOr<T>(Tx&)>& body,
                          std::source_location caller) {
    absl::StatusOr<T> result = absl::UnknownError("not run");
    absl::Status status = Run(
        [&](pqxx::connection& connection) -> absl::Status {
          Tx tx(connection);
          result = body(tx);
          if (!result.ok()) return result.status();
          tx.commit();
          return absl::OkStatus();
        },
        caller);
    if (!status.ok()) return status;
    return result;
  }

  // The pool's series; absent without a registry.
  struct Metrics {
    telemetry::HistogramFamily& query_seconds;
    telemetry::Histogram& wait_seconds;
    telemetry::Gauge& in_use;
    telemetry::Gauge& idle;
    telemetry::Gauge& waiting;
  };
  static std::unique_ptr<Metrics> MakeMetrics(telemetry::Registry* registry, int size);

  absl::Status RunWithRetries(const std::function<absl::Status(pqxx::connection&)>& body);
  // Takes a slot (waiting while none is free) and an idle connection, or opens one. The
  // slot is the caller's even when opening throws: every Acquire is matched by exactly one
  // Release, of nullptr when there is no usable connection to give back.
  std::unique_ptr<pqxx::connection> Acquire();
  void Release(std::unique_ptr<pqxx::connection> connection);
  // Sets the usage gauges from the counts.
  void PublishUsage() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The latency series of the operation that called from `caller`.
  telemetry::Histogram& QuerySeconds(const std::source_location& caller);

  const Options options_;
  Clock& clock_;
  const std::unique_ptr<Metrics> metrics_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;     // Borrowed or idle.
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;  // Callers blocked in Acquire.
  // function_name() is a string with static storage, one per call site: its address is
  // the key, so a call parses its caller's name only the first time.
  absl::Mutex series_mu_;
  absl::flat_hash_map<const char*, telemetry::Histogram*> series_ ABSL_GUARDED_BY(series_mu_);
};

// The operation a call site names: the unqualified name of the function
// `function_name` (a std::source_location::function_name()) belongs to, or of the
// function enclosing it when it is a lambda. "grpc::Status ns::StoreServiceImpl::GetSession(
// grpc::ServerContext*, ...)" gives "GetSession". Empty input gives "unknown".
std::string OperationName(absl::string_view function_name);

// Runs `sql` with `args` as a prepared statement of the transaction's connection, so
// each distinct statement is parsed once per connection and, once Postgres settles on a
// generic plan, planned once too (planning was about half of a claim's database time
// when every call went through exec_params). The statement is named by a hash of its
// text; pqxx prepares it lazily on first use, and a connection opened after a
// Postgres restart prepares it afresh.
//
// Use it for statements whose plan does not depend on the argument values. A statement
// with optional filters (`$1 = '' OR column = $1`) is better planned per call with
// exec_params, where the planner sees which filters are in play.
// Defines `sql` on `connection` (a no-op when it already is) and returns its name.
std::string PreparedName(pqxx::connection_base& connection, const std::string& sql);

template <typename... Args>
pqxx::result Exec(pqxx::transaction_base& tx, const std::string& sql, Args&&... args) {
  return tx.exec_prepared(PreparedName(tx.conn(), sql), std::forward<Args>(args)...);
}

// Thrown inside a Transact body to abort it with a specific status (e.g. a NOT_FOUND
// discovered halfway through). Caught by the pool and returned, never retried.
struct StatusException {
  absl::Status status;
};

}  // namespace parley::store
