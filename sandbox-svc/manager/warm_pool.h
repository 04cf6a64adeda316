// WarmPool: READY sandboxes made ahead of demand, `warm_pool_target` per template, and
// their hand-off to a tenant — a create that costs a record write instead of a boot.
//
//   WarmPool pool(options, templates, &lifecycle, &table, clock, logger);
//   pool.Start();                                   // the filler thread
//   auto warm = pool.Take(*templates.Find("python"), terms);   // nullopt: make one cold
//   pool.Stop();
//
// Threads: one filler thread (FillerLoop) makes warm sandboxes one at a time, within the
// node quota, with capped backoff after failures; Take runs on the caller's thread and
// wakes the filler. The ready ids are the table's pool index; `mu_` guards only the
// filler's own bookkeeping and is never held with the table's mutex or across I/O.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "parley/sandbox/v1/sandbox.pb.h"
#include "sandbox-svc/manager/lifecycle.h"
#include "sandbox-svc/manager/options.h"
#include "sandbox-svc/manager/table.h"
#include "sandbox-svc/manager/templates.h"
#include "telemetry/log.h"

namespace parley::sandbox {

class WarmPool {
 public:
  WarmPool(const ManagerOptions& options, const TemplateSet& templates, Lifecycle* lifecycle,
           SandboxTable* table, Clock& clock, const telemetry::Logger* logger);
  ~WarmPool() { Stop(); }

  // Starts the filler thread when options.fill_pools.
  void Start();
  // Stops and joins the filler; idempotent.
  void Stop();
  // Creates warm sandboxes until every template's pool is at its target (or fails).
  void FillOnce();
  // Hands a warm sandbox of `config` to the tenant in `terms` (tenant quota checked);
  // nullopt when the pool has none that is alive.
  std::optional<absl::StatusOr<::parley::sandbox::v1::Sandbox>> Take(const TemplateConfig& config,
                                                                     const SandboxTerms& terms);

 private:
  // Whether another warm sandbox of `name` should be made now; counts it as filling.
  bool ShouldFill(const std::string& name, int target);
  // One warm sandbox of `config`; false after a failure (the template backs off).
  bool FillOne(const TemplateConfig& config);
  void FillerLoop();

  const ManagerOptions& options_;
  const TemplateSet& templates_;
  Lifecycle* const lifecycle_;
  SandboxTable* const table_;
  Clock& clock_;
  const telemetry::Logger* const logger_;

  absl::Mutex mu_;
  std::map<std::string, int> filling_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, absl::Time> retry_at_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, absl::Duration> backoff_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wakeup_ ABSL_GUARDED_BY(mu_) = false;
  std::thread filler_;
};

}  // namespace parley::sandbox
