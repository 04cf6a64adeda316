// Lifecycle: the steps of a sandbox's life that do I/O — provider calls, record writes,
// the daemon's Hello — shared by the manager's calls, the warm pool, the reaper and
// recovery. It owns no thread and no sandbox; it runs on whichever thread asks.
//
//   Lifecycle lifecycle(options, templates, providers, &store, &table, clock, logger);
//   auto made = lifecycle.ColdCreate(*templates.Find("python"), terms, /*pooled=*/false);
//   Sandbox::Turn turn = sandbox->WaitForTurn();
//   lifecycle.Destroy(*sandbox, "destroyed by request");
//
// The rules that keep it correct:
//  - A record is persisted before the provider is asked to do anything (Plan, then
//    write, then Start), and after every transition.
//  - Transitions other than ColdCreate require the caller to hold the sandbox's turn;
//    no mutex is held across a provider call or a record write.
//  - A failure leaves the sandbox FAILED with the reason and its resources released
//    (or kept for the reaper to retry when releasing them failed); a sandbox that
//    stops being live leaves the table's counts in the same step.
// Errors follow sandbox.proto: FAILED_PRECONDITION "SANDBOX_GONE", UNAVAILABLE when a
// provider or daemon fails.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/ids.h"
#include "parley/sandbox/v1/sandbox.pb.h"
#include "sandbox-svc/manager/daemon_client.h"
#include "sandbox-svc/manager/options.h"
#include "sandbox-svc/manager/sandbox.h"
#include "sandbox-svc/manager/state_store.h"
#include "sandbox-svc/manager/table.h"
#include "sandbox-svc/manager/templates.h"
#include "sandbox-svc/provider/provider.h"
#include "telemetry/log.h"

namespace parley::sandbox {

class Lifecycle {
 public:
  Lifecycle(const ManagerOptions& options, const TemplateSet& templates,
            const std::map<std::string, SandboxProvider*>& providers, StateStore* store,
            SandboxTable* table, Clock& clock, const telemetry::Logger* logger);

  // Builds a sandbox of `config` from scratch: reserved in the table (quotas), recorded
  // CREATING, started, connected, READY. A `pooled` one is warm: no tenant yet.
  absl::StatusOr<::parley::sandbox::v1::Sandbox> ColdCreate(const TemplateConfig& config,
                                                            const SandboxTerms& terms, bool pooled);

  // Transitions; the caller holds the sandbox's turn.
  absl::StatusOr<::parley::sandbox::v1::Sandbox> Pause(Sandbox& sandbox, const std::string& why);
  // `resumed` says whether it was PAUSED (false when it was READY already).
  absl::StatusOr<::parley::sandbox::v1::Sandbox> Resume(Sandbox& sandbox, bool* resumed);
  absl::StatusOr<::parley::sandbox::v1::Sandbox> Destroy(Sandbox& sandbox, const std::string& why);
  // Marks FAILED and releases the provider's resources.
  void Fail(Sandbox& sandbox, const std::string& message);
  // Connects to a READY sandbox's daemon unless connected (after a restart).
  absl::Status Connect(Sandbox& sandbox);
  // After a failed call: whether the sandbox's processes (or Pod) still exist.
  bool Alive(const SandboxRecord& record);

  // Writes the sandbox's record; logs a failure. The caller holds the turn.
  absl::Status Persist(Sandbox& sandbox);
  SandboxProvider* ProviderFor(const SandboxRecord& record) const;
  Clock& clock() const { return clock_; }

 private:
  SandboxSpec SpecFor(const SandboxRecord& record) const;
  // Persists every provider state the provider reports while it builds.
  RecordFn Recorder(Sandbox& sandbox);
  // Starts a recorded CREATING sandbox and makes it READY; on error it is FAILED.
  // `recording` is the time the record took, for the log line.
  absl::Status Build(Sandbox& sandbox, SandboxProvider& provider, const SandboxSpec& spec,
                     const ProviderState& plan, absl::Duration recording);
  absl::StatusOr<std::shared_ptr<DaemonConnection>> ConnectWhileAlive(
      SandboxProvider& provider, const ProviderState& state, const DaemonEndpoint& endpoint);
  // Fail, then the error callers get: SANDBOX_GONE.
  absl::Status FailGone(Sandbox& sandbox, const std::string& message);

  const ManagerOptions& options_;
  const TemplateSet& templates_;
  const std::map<std::string, SandboxProvider*>& providers_;
  StateStore* const store_;
  SandboxTable* const table_;
  Clock& clock_;
  const telemetry::Logger* const logger_;
  IdGenerator ids_;
};

}  // namespace parley::sandbox
