// SandboxManager: the lifecycle of every sandbox on this replica as the API sees it —
// templates, create (from a warm pool when one is ready), acquire-for-session,
// pause/resume, destroy, and the daemon of a sandbox for exec and file calls. It owns
// the parts that do the work (manager/README in sandbox-svc/README.md):
//
//   Sandbox       one sandbox's record, mutex, transitions       (sandbox.h)
//   SandboxTable  indexes by id, session and warm pool; quotas     (table.h)
//   Lifecycle     provider calls and record writes                 (lifecycle.h)
//   WarmPool, Reaper, Recover   the clients with threads or start-up work
//
//   SandboxManager manager(options, templates, {{"local", &bwrap}}, &store, clock, &log);
//   manager.Start();                                        // recover records, start threads
//   sandbox_pb::Sandbox sandbox = *manager.Create(request);  // READY
//   auto operation = *manager.Operate(tenant, sandbox.id());  // for exec and file calls
//   manager.Destroy(tenant, sandbox.id());
//
// Requests arrive validated (sandbox-svc/api/ applies the input rules of every call);
// the manager checks what only it can know: templates, providers, quotas, states.
// Errors follow sandbox.proto: NOT_FOUND for unknown ids and other tenants' sandboxes
// alike, FAILED_PRECONDITION "SANDBOX_GONE", RESOURCE_EXHAUSTED "SANDBOX_QUOTA",
// UNAVAILABLE when a provider or daemon fails. All times come from `clock`, so TTL and
// idle expiry are tested with FakeClock and ReapOnce().
//
// Thread-safe. Calls that create, resume or destroy block on a provider; the API runs
// them on its worker pool.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "parley/sandbox/v1/sandbox.pb.h"
#include "sandbox-svc/manager/lifecycle.h"
#include "sandbox-svc/manager/options.h"
#include "sandbox-svc/manager/reaper.h"
#include "sandbox-svc/manager/sandbox.h"
#include "sandbox-svc/manager/state_store.h"
#include "sandbox-svc/manager/table.h"
#include "sandbox-svc/manager/templates.h"
#include "sandbox-svc/manager/warm_pool.h"
#include "sandbox-svc/provider/provider.h"
#include "telemetry/log.h"
#include "telemetry/metrics.h"

namespace parley::sandbox {

class SandboxManager {
 public:
  using Operation = ::parley::sandbox::Operation;

  SandboxManager(ManagerOptions options, TemplateSet templates,
                 std::map<std::string, SandboxProvider*> providers, StateStore* store, Clock& clock,
                 const telemetry::Logger* logger, telemetry::Registry* registry = nullptr);
  ~SandboxManager();

  // Loads the records, adopts live sandboxes, reaps orphans, starts the threads.
  absl::Status Start();
  // Stops the threads; with `destroy_pooled`, destroys the warm sandboxes (tenant
  // sandboxes always survive: a restart adopts them).
  void Stop(bool destroy_pooled);

  std::vector<::parley::sandbox::v1::Template> ListTemplates();
  absl::StatusOr<::parley::sandbox::v1::Template> GetTemplate(const std::string& name);

  absl::StatusOr<::parley::sandbox::v1::Sandbox> Create(
      const ::parley::sandbox::v1::CreateSandboxRequest& request);

  struct Acquired {
    ::parley::sandbox::v1::Sandbox sandbox;
    bool created = false;
    bool resumed = false;
  };
  absl::StatusOr<Acquired> AcquireForSession(
      const ::parley::sandbox::v1::AcquireForSessionRequest& request);

  absl::StatusOr<::parley::sandbox::v1::Sandbox> Get(const std::string& tenant_id,
                                                     const std::string& sandbox_id);
  // INVALID_ARGUMENT for a page_token this manager did not make.
  absl::StatusOr<::parley::sandbox::v1::ListSandboxesResponse> List(
      const ::parley::sandbox::v1::ListSandboxesRequest& request);
  absl::StatusOr<::parley::sandbox::v1::Sandbox> Pause(const std::string& tenant_id,
                                                       const std::string& sandbox_id);
  absl::StatusOr<::parley::sandbox::v1::Sandbox> Resume(const std::string& tenant_id,
                                                        const std::string& sandbox_id);
  absl::StatusOr<::parley::sandbox::v1::Sandbox> Destroy(const std::string& tenant_id,
                                                         const std::string& sandbox_id);

  // For exec and file calls: the daemon of a READY sandbox (resumed first when paused,
  // connected on first use after a restart). May block on a resume or a connect.
  absl::StatusOr<std::unique_ptr<Operation>> Operate(const std::string& tenant_id,
                                                     const std::string& sandbox_id);
  // The same without blocking: nullptr when Operate() would have to wait (paused, not
  // connected yet); errors as Operate().
  absl::StatusOr<std::unique_ptr<Operation>> TryOperate(const std::string& tenant_id,
                                                        const std::string& sandbox_id);
  // After a call to the daemon failed with UNAVAILABLE: if the sandbox's processes are
  // gone, marks it FAILED and returns FAILED_PRECONDITION "SANDBOX_GONE"; otherwise
  // returns `error` (retryable).
  absl::Status DaemonFailed(const std::string& sandbox_id, const absl::Status& error);

  // One pass of the reaper: TTL and idle expiry, dead sandboxes, cleanup, forgetting.
  void ReapOnce() { reaper_.ReapOnce(); }
  // Creates warm sandboxes until every template's pool is at its target (or fails).
  void FillPoolsOnce() { pool_.FillOnce(); }
  // Warm sandboxes ready for `template_name` now.
  int PoolReady(const std::string& template_name) { return table_.PoolReady(template_name); }

 private:
  // A create as the manager resolves it: the template and the terms with its defaults.
  struct CreateParams {
    const TemplateConfig* config = nullptr;
    SandboxTerms terms;
  };
  template <typename Request>
  absl::StatusOr<CreateParams> ResolveCreate(const Request& request) const;
  // From the warm pool when it has one, else from scratch.
  absl::StatusOr<::parley::sandbox::v1::Sandbox> CreateFrom(const CreateParams& params);
  // The live sandbox of the request's session (resumed when paused), if any.
  std::optional<absl::StatusOr<Acquired>> ReuseSession(
      const ::parley::sandbox::v1::AcquireForSessionRequest& request);
  // Waits until no other AcquireForSession of `key` runs; LeaveSession ends it.
  void EnterSession(const std::pair<std::string, std::string>& key)
      ABSL_LOCKS_EXCLUDED(sessions_mu_);
  void LeaveSession(const std::pair<std::string, std::string>& key)
      ABSL_LOCKS_EXCLUDED(sessions_mu_);

  // The tenant's sandbox; NOT_FOUND when there is no such sandbox, it is another
  // tenant's, or it is still in a warm pool.
  absl::StatusOr<std::shared_ptr<Sandbox>> FindOrNotFound(const std::string& tenant_id,
                                                          const std::string& sandbox_id);
  // A template as the API shows it: with its pool's fill and its provider's cgroup mode.
  ::parley::sandbox::v1::Template TemplateView(const TemplateConfig& config);

  const ManagerOptions options_;
  const TemplateSet templates_;
  const std::map<std::string, SandboxProvider*> providers_;
  StateStore* const store_;
  Clock& clock_;
  const telemetry::Logger* const logger_;
  telemetry::HistogramFamily* create_seconds_ = nullptr;

  SandboxTable table_;
  Lifecycle lifecycle_;
  WarmPool pool_;
  Reaper reaper_;

  // (tenant, session) pairs with an AcquireForSession in progress. Waited on, never
  // held across the create it serializes.
  absl::Mutex sessions_mu_;
  std::set<std::pair<std::string, std::string>> sessions_in_progress_ ABSL_GUARDED_BY(sessions_mu_);
};

}  // namespace parley::sandbox
