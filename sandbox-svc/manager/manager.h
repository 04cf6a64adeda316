// SandboxManager: the lifecycle of every sandbox on this replica — templates, create
// (from a warm pool when one is ready), acquire-for-session, pause/resume, destroy, TTL
// and idle reaping, per-tenant and per-node quotas, and recovery after a restart.
//
//   SandboxManager manager(options, templates, {{"local", &bwrap}}, &store, clock, &log);
//   manager.Start();                                   // recover records, start threads
//   Sandbox sandbox = *manager.Create(request);        // READY
//   auto daemon = *manager.Operate(tenant, sandbox.id());  // for exec and file calls
//   manager.Destroy(tenant, sandbox.id());
//
// Every sandbox has a record (StateStore) written before its provider does any work
// and on every change. All times come from `clock`, so TTL and idle expiry are tested
// with FakeClock and ReapOnce(). Errors follow sandbox.proto: NOT_FOUND for unknown
// ids and other tenants' sandboxes alike, FAILED_PRECONDITION "SANDBOX_GONE",
// RESOURCE_EXHAUSTED "SANDBOX_QUOTA", UNAVAILABLE when a provider or daemon fails.
//
// Threads: callers (the gRPC worker pool), one reaper thread and one pool-filler
// thread. `mu_` guards the table and indexes and is never held across I/O; each sandbox
// has a lifecycle mutex serializing its transitions (lock order: lifecycle, then mu_).
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/ids.h"
#include "parley/sandbox/v1/sandbox.pb.h"
#include "sandbox-svc/manager/daemon_client.h"
#include "sandbox-svc/manager/state_store.h"
#include "sandbox-svc/manager/templates.h"
#include "sandbox-svc/provider/provider.h"
#include "telemetry/log.h"
#include "telemetry/metrics.h"

namespace parley::sandbox {

struct ManagerOptions {
  int max_sandboxes = 500;            // Node quota: live sandboxes incl. warm ones.
  int max_sandboxes_per_tenant = 50;  // Tenant quota: CREATING + READY + PAUSED.
  // Reaper period; zero starts no reaper thread (tests call ReapOnce()).
  absl::Duration reap_interval = absl::Seconds(1);
  bool fill_pools = true;  // false: no filler thread (tests call FillPoolsOnce()).
  absl::Duration destroyed_retention = absl::Hours(1);
  absl::Duration touch_persist_interval = absl::Seconds(10);
  absl::Duration connect_timeout = absl::Seconds(10);
  absl::Duration pool_retry_max = absl::Seconds(30);
};

class SandboxManager {
 public:
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
  absl::StatusOr<::parley::sandbox::v1::ListSandboxesResponse> List(
      const ::parley::sandbox::v1::ListSandboxesRequest& request);
  absl::StatusOr<::parley::sandbox::v1::Sandbox> Pause(const std::string& tenant_id,
                                                       const std::string& sandbox_id);
  absl::StatusOr<::parley::sandbox::v1::Sandbox> Resume(const std::string& tenant_id,
                                                        const std::string& sandbox_id);
  absl::StatusOr<::parley::sandbox::v1::Sandbox> Destroy(const std::string& tenant_id,
                                                         const std::string& sandbox_id);

  // An exec or file call in progress on a sandbox: while one exists the sandbox is
  // not idle; its end resets the idle timer.
  class Operation {
   public:
    Operation(SandboxManager* manager, std::string sandbox_id,
              std::shared_ptr<DaemonConnection> daemon)
        : manager_(manager), sandbox_id_(std::move(sandbox_id)), daemon_(std::move(daemon)) {}
    ~Operation() { manager_->EndOperation(sandbox_id_); }
    Operation(const Operation&) = delete;
    Operation& operator=(const Operation&) = delete;
    DaemonConnection& daemon() { return *daemon_; }
    const std::string& sandbox_id() const { return sandbox_id_; }

   private:
    SandboxManager* manager_;
    std::string sandbox_id_;
    std::shared_ptr<DaemonConnection> daemon_;
  };

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
  void ReapOnce();
  // Creates warm sandboxes until every template's pool is at its target (or fails).
  void FillPoolsOnce();
  // Warm sandboxes ready for `template_name` now.
  int PoolReady(const std::string& template_name);

 private:
  struct Entry {
    absl::Mutex lifecycle;  // Serializes transitions; held across provider calls.
    SandboxRecord record;   // Guarded by SandboxManager::mu_.
    std::shared_ptr<DaemonConnection> daemon;           // Guarded by mu_.
    absl::Time touch_persisted = absl::InfinitePast();  // Guarded by mu_.
    int operations = 0;  // Exec/file calls in flight; guarded by mu_.
  };
  using EntryPtr = std::shared_ptr<Entry>;

  struct CreateParams {
    std::string tenant_id;
    std::string session_id;
    const TemplateConfig* config = nullptr;
    uint64_t ttl_s = 0;
    uint64_t idle_timeout_s = 0;
    ::parley::sandbox::v1::OnExpiry on_expiry = ::parley::sandbox::v1::ON_EXPIRY_UNSPECIFIED;
    std::map<std::string, std::string> labels;
  };

  absl::StatusOr<CreateParams> ResolveCreate(
      const std::string& tenant_id, const std::string& session_id, const std::string& template_name,
      uint64_t ttl_s, uint64_t idle_timeout_s, ::parley::sandbox::v1::OnExpiry on_expiry,
      const google::protobuf::Map<std::string, std::string>& labels);
  absl::StatusOr<::parley::sandbox::v1::Sandbox> CreateResolved(const CreateParams& params,
                                                                bool* from_pool);
  // Builds a sandbox from scratch; `pooled` ones have no tenant.
  absl::StatusOr<::parley::sandbox::v1::Sandbox> ColdCreate(const CreateParams& params,
                                                            bool pooled);
  // Gives a warm sandbox to a tenant; nullopt when the pool had none that is alive.
  std::optional<absl::StatusOr<::parley::sandbox::v1::Sandbox>> TakeFromPool(
      const CreateParams& params);
  absl::Status CheckQuota(const std::string& tenant_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // The tenant's sandbox: INVALID_ARGUMENT for a bad tenant id, NOT_FOUND when there is
  // no such sandbox, it is another tenant's, or it is still in a warm pool.
  absl::StatusOr<EntryPtr> FindOrNotFound(const std::string& tenant_id,
                                          const std::string& sandbox_id);
  SandboxSpec SpecFor(const SandboxRecord& record) const;
  SandboxProvider* ProviderFor(const SandboxRecord& record) const;
  absl::Status Persist(Entry& entry) ABSL_LOCKS_EXCLUDED(mu_);
  void SetState(Entry& entry, ::parley::sandbox::v1::SandboxState state, std::string message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Index(const std::string& id, const Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Unindex(const std::string& id, const Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Transitions; the caller holds entry.lifecycle.
  absl::StatusOr<::parley::sandbox::v1::Sandbox> PauseLocked(Entry& entry, const std::string& why);
  absl::StatusOr<::parley::sandbox::v1::Sandbox> ResumeLocked(Entry& entry, bool* resumed);
  absl::StatusOr<::parley::sandbox::v1::Sandbox> DestroyLocked(Entry& entry,
                                                               const std::string& why);
  // Marks FAILED and releases the provider's resources.
  void FailLocked(Entry& entry, const std::string& message);
  absl::Status ConnectLocked(Entry& entry);
  absl::StatusOr<std::shared_ptr<DaemonConnection>> ConnectWhileAlive(
      SandboxProvider& provider, const ProviderState& state, const DaemonEndpoint& endpoint);

  void EndOperation(const std::string& sandbox_id);
  // Counts an operation and touches the idle timer; the caller holds mu_.
  std::unique_ptr<Operation> BeginOperationLocked(Entry& entry, absl::Time now, bool* persist)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Recover();
  void ReaperLoop();
  void FillerLoop();
  void UpdateGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A template as the API shows it: with its pool's fill and its provider's cgroup mode.
  ::parley::sandbox::v1::Template TemplateView(const TemplateConfig& config)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  static absl::Status NotFound(const std::string& sandbox_id);
  static absl::Status Gone(const ::parley::sandbox::v1::Sandbox& sandbox);

  const ManagerOptions options_;
  const TemplateSet templates_;
  const std::map<std::string, SandboxProvider*> providers_;
  StateStore* const store_;
  Clock& clock_;
  const telemetry::Logger* const logger_;
  IdGenerator ids_;

  telemetry::GaugeFamily* live_gauge_ = nullptr;
  telemetry::GaugeFamily* pool_gauge_ = nullptr;
  telemetry::HistogramFamily* create_seconds_ = nullptr;
  telemetry::CounterFamily* expired_total_ = nullptr;

  absl::Mutex mu_;
  std::map<std::string, EntryPtr> entries_ ABSL_GUARDED_BY(mu_);
  // (tenant, session) → id of its live sandbox.
  std::map<std::pair<std::string, std::string>, std::string> by_session_ ABSL_GUARDED_BY(mu_);
  // template → ids of READY warm sandboxes, oldest first.
  std::map<std::string, std::deque<std::string>> pools_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> pool_filling_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, std::shared_ptr<absl::Mutex>> session_locks_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, absl::Time> pool_retry_at_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, absl::Duration> pool_backoff_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool pool_wakeup_ ABSL_GUARDED_BY(mu_) = false;

  std::thread reaper_;
  std::thread filler_;
};

}  // namespace parley::sandbox
