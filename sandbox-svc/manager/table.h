// SandboxTable: the sandboxes of this replica by id, the indexes over them and the quota
// counts — and nothing about any one sandbox's state, which its Sandbox owns.
//
//   SandboxTable table(/*max_sandboxes=*/500, /*max_sandboxes_per_tenant=*/50);
//   if (absl::Status s = table.Reserve(sandbox, {tenant, session, "python"}); !s.ok()) ...
//   std::shared_ptr<Sandbox> mine = table.Find(id);
//   table.Release(id);   // FAILED or DESTROYED: no longer counted or indexed
//
// Indexes: (tenant, session) → id of its live sandbox; template → READY warm ids, oldest
// first. Counts: every *live* id (CREATING, READY, PAUSED) with whom it counts against —
// a tenant, or only the node while it is warm. A quota check and the reservation it
// guards are one critical section, so two creates cannot both squeeze under a limit.
//
// Thread-safe. Its mutex is never held together with a sandbox's (the table is told
// tenant, session and template; it never reads a record), and never across I/O.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "sandbox-svc/manager/sandbox.h"

namespace parley::sandbox {

class SandboxTable {
 public:
  // Whom a live sandbox counts against and where it is indexed.
  struct Owner {
    std::string tenant_id;  // Empty: a warm sandbox (node quota only).
    std::string session_id;
    std::string template_name;
  };

  SandboxTable(int max_sandboxes, int max_sandboxes_per_tenant)
      : max_sandboxes_(max_sandboxes), max_sandboxes_per_tenant_(max_sandboxes_per_tenant) {}

  // Admits a new live sandbox: RESOURCE_EXHAUSTED "SANDBOX_QUOTA" (scope tenant or
  // node) when over a limit, UNAVAILABLE once Close() was called.
  absl::Status Reserve(std::shared_ptr<Sandbox> sandbox, const Owner& owner);
  // Adds a sandbox found at start-up, not counted (Adopt counts it).
  void Add(std::shared_ptr<Sandbox> sandbox);
  // Counts and indexes a recovered READY or PAUSED sandbox, without a quota check.
  void Adopt(const std::string& id, const Owner& owner);
  // A warm sandbox is READY: it joins its template's pool (not when no longer live).
  void AddToPool(const std::string& id);
  // The oldest warm sandbox of `template_name`, now counted against `tenant_id` and
  // indexed under its session; nullptr when the pool is empty. The tenant's quota only
  // (taking a warm one adds nothing to the node). The caller claims the sandbox itself.
  absl::StatusOr<std::shared_ptr<Sandbox>> TakeWarm(const std::string& template_name,
                                                    const std::string& tenant_id,
                                                    const std::string& session_id);
  // No longer live: leaves the counts, the session index and the pool. Idempotent.
  void Release(const std::string& id);
  // Gone from the table (its record too, by the caller).
  void Forget(const std::string& id);
  // Refuses every Reserve from now on (shutdown).
  void Close();

  std::shared_ptr<Sandbox> Find(const std::string& id) const;
  // The live sandbox of (tenant, session), or nullptr.
  std::shared_ptr<Sandbox> FindBySession(const std::string& tenant_id,
                                         const std::string& session_id) const;
  std::vector<std::shared_ptr<Sandbox>> All() const;
  int LiveCount() const;
  int PoolReady(const std::string& template_name) const;

 private:
  // Tenant first, then node: RESOURCE_EXHAUSTED SANDBOX_QUOTA naming the scope.
  absl::Status CheckQuota(const std::string& tenant_id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckTenantQuota(const std::string& tenant_id) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckNodeQuota() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void IndexSession(const std::string& id, const Owner& owner) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Count(const std::string& id, Owner owner) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int max_sandboxes_;
  const int max_sandboxes_per_tenant_;

  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Sandbox>> by_id_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Owner> live_ ABSL_GUARDED_BY(mu_);  // id → whom it counts against.
  std::map<std::string, int> live_per_tenant_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, std::string> by_session_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::deque<std::string>> pools_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace parley::sandbox
