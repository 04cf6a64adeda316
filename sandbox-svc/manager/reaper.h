// Reaper: the periodic pass over every sandbox — TTL and idle expiry (pause or destroy,
// as the sandbox's on_expiry says), READY sandboxes whose processes died (FAILED and
// cleaned up), FAILED ones whose cleanup failed (retried), and DESTROYED or FAILED
// records past --destroyed_retention (forgotten). It also sets the state gauges.
//
//   Reaper reaper(options, templates, &lifecycle, &table, &store, clock, logger, registry);
//   reaper.Start();      // a thread every options.reap_interval (none when zero)
//   reaper.ReapOnce();   // tests: one pass, on a FakeClock
//
// Threads: its own thread (or the caller's, for ReapOnce). It only *tries* a sandbox's
// turn: a sandbox in the middle of a transition is looked at on the next pass. `mu_`
// guards only the stop flag.
#pragma once

#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "sandbox-svc/manager/lifecycle.h"
#include "sandbox-svc/manager/options.h"
#include "sandbox-svc/manager/state_store.h"
#include "sandbox-svc/manager/table.h"
#include "sandbox-svc/manager/templates.h"
#include "telemetry/log.h"
#include "telemetry/metrics.h"

namespace parley::sandbox {

class Reaper {
 public:
  Reaper(const ManagerOptions& options, const TemplateSet& templates, Lifecycle* lifecycle,
         SandboxTable* table, StateStore* store, Clock& clock, const telemetry::Logger* logger,
         telemetry::Registry* registry);
  ~Reaper() { Stop(); }

  // Starts the reaper thread unless options.reap_interval is zero.
  void Start();
  // Stops and joins it; idempotent.
  void Stop();
  // One pass over every sandbox.
  void ReapOnce();

 private:
  // Looks at one sandbox whose turn the caller holds; adds it to `forget` when its
  // record has been kept long enough.
  void ReapOne(Sandbox& sandbox, absl::Time now, std::vector<std::string>* forget);
  // Applies on_expiry to a READY tenant sandbox whose TTL or idle timeout ran out.
  void Expire(Sandbox& sandbox, const ::parley::sandbox::v1::Sandbox& view,
              const std::string& reason);
  void UpdateGauges();
  void ReaperLoop();

  const ManagerOptions& options_;
  const TemplateSet& templates_;
  Lifecycle* const lifecycle_;
  SandboxTable* const table_;
  StateStore* const store_;
  Clock& clock_;
  const telemetry::Logger* const logger_;
  telemetry::GaugeFamily* live_gauge_ = nullptr;
  telemetry::GaugeFamily* pool_gauge_ = nullptr;
  telemetry::GaugeFamily* pool_target_gauge_ = nullptr;
  telemetry::CounterFamily* expired_total_ = nullptr;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace parley::sandbox
