// The table's indexes and counts; see table.h. Every function is one short critical
// section of mu_ with no call out of this file while it is held.
#include "sandbox-svc/manager/table.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace parley::sandbox {

absl::Status SandboxTable::CheckQuota(const std::string& tenant_id) const {
  if (absl::Status s = CheckTenantQuota(tenant_id); !s.ok()) return s;
  return CheckNodeQuota();
}

absl::Status SandboxTable::CheckTenantQuota(const std::string& tenant_id) const {
  auto counted = live_per_tenant_.find(tenant_id);
  const int tenant = counted == live_per_tenant_.end() ? 0 : counted->second;
  if (!tenant_id.empty() && tenant >= max_sandboxes_per_tenant_) {
    absl::Status status = absl::ResourceExhaustedError(absl::StrCat(
        "tenant \"", tenant_id, "\" has ", tenant, " live sandboxes and the limit is ",
        max_sandboxes_per_tenant_, " (--max_sandboxes_per_tenant); destroy one first"));
    SetErrorInfo(status, "SANDBOX_QUOTA",
                 {{"scope", "tenant"},
                  {"limit", absl::StrCat(max_sandboxes_per_tenant_)},
                  {"live", absl::StrCat(tenant)}});
    return status;
  }
  return absl::OkStatus();
}

absl::Status SandboxTable::CheckNodeQuota() const {
  const int node = static_cast<int>(live_.size());
  if (node >= max_sandboxes_) {
    absl::Status status = absl::ResourceExhaustedError(
        absl::StrCat("this node runs ", node, " sandboxes and the limit is ", max_sandboxes_,
                     " (--max_sandboxes); retry later or elsewhere"));
    SetErrorInfo(
        status, "SANDBOX_QUOTA",
        {{"scope", "node"}, {"limit", absl::StrCat(max_sandboxes_)}, {"live", absl::StrCat(node)}});
    SetRetryDelay(status, 1000);
    return status;
  }
  return absl::OkStatus();
}

void SandboxTable::Count(const std::string& id, Owner owner) {
  if (!owner.tenant_id.empty()) ++live_per_tenant_[owner.tenant_id];
  live_[id] = std::move(owner);
}

void SandboxTable::IndexSession(const std::string& id, const Owner& owner) {
  if (owner.tenant_id.empty() || owner.session_id.empty()) return;
  auto [it, inserted] = by_session_.try_emplace({owner.tenant_id, owner.session_id}, id);
  // Keep an existing live sandbox as the session's one.
  if (!inserted && !live_.count(it->second)) it->second = id;
}

absl::Status SandboxTable::Reserve(std::shared_ptr<Sandbox> sandbox, const Owner& owner) {
  absl::MutexLock lock(&mu_);
  if (closed_) return absl::UnavailableError("parley-sandbox is shutting down");
  if (absl::Status s = CheckQuota(owner.tenant_id); !s.ok()) return s;
  const std::string id = sandbox->id();
  by_id_[id] = std::move(sandbox);
  IndexSession(id, owner);
  Count(id, owner);
  return absl::OkStatus();
}

void SandboxTable::Add(std::shared_ptr<Sandbox> sandbox) {
  absl::MutexLock lock(&mu_);
  const std::string id = sandbox->id();
  by_id_[id] = std::move(sandbox);
}

void SandboxTable::Adopt(const std::string& id, const Owner& owner) {
  absl::MutexLock lock(&mu_);
  IndexSession(id, owner);
  Count(id, owner);
}

void SandboxTable::AddToPool(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = live_.find(id);
  if (it == live_.end() || !it->second.tenant_id.empty()) return;
  pools_[it->second.template_name].push_back(id);
}

absl::StatusOr<std::shared_ptr<Sandbox>> SandboxTable::TakeWarm(const std::string& template_name,
                                                                const std::string& tenant_id,
                                                                const std::string& session_id) {
  absl::MutexLock lock(&mu_);
  // The node quota counts warm sandboxes already; taking one adds nothing to it.
  if (absl::Status s = CheckTenantQuota(tenant_id); !s.ok()) return s;
  auto pool = pools_.find(template_name);
  if (pool == pools_.end() || pool->second.empty()) return nullptr;
  const std::string id = pool->second.front();
  pool->second.pop_front();
  Owner owner{tenant_id, session_id, template_name};
  Count(id, owner);
  IndexSession(id, owner);
  return by_id_.at(id);
}

void SandboxTable::Release(const std::string& id) {
  absl::MutexLock lock(&mu_);
  auto it = live_.find(id);
  if (it == live_.end()) return;
  const Owner& owner = it->second;
  if (!owner.tenant_id.empty() && --live_per_tenant_[owner.tenant_id] == 0) {
    live_per_tenant_.erase(owner.tenant_id);
  }
  auto session = by_session_.find({owner.tenant_id, owner.session_id});
  if (session != by_session_.end() && session->second == id) by_session_.erase(session);
  auto pool = pools_.find(owner.template_name);
  if (pool != pools_.end()) {
    pool->second.erase(std::remove(pool->second.begin(), pool->second.end(), id),
                       pool->second.end());
  }
  live_.erase(it);
}

void SandboxTable::Forget(const std::string& id) {
  absl::MutexLock lock(&mu_);
  by_id_.erase(id);
}

void SandboxTable::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

std::shared_ptr<Sandbox> SandboxTable::Find(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

std::shared_ptr<Sandbox> SandboxTable::FindBySession(const std::string& tenant_id,
                                                     const std::string& session_id) const {
  absl::MutexLock lock(&mu_);
  auto it = by_session_.find({tenant_id, session_id});
  if (it == by_session_.end()) return nullptr;
  auto found = by_id_.find(it->second);
  return found == by_id_.end() ? nullptr : found->second;
}

std::vector<std::shared_ptr<Sandbox>> SandboxTable::All() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<Sandbox>> all;
  all.reserve(by_id_.size());
  for (const auto& [id, sandbox] : by_id_) all.push_back(sandbox);
  return all;
}

int SandboxTable::LiveCount() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(live_.size());
}

int SandboxTable::PoolReady(const std::string& template_name) const {
  absl::MutexLock lock(&mu_);
  auto it = pools_.find(template_name);
  return it == pools_.end() ? 0 : static_cast<int>(it->second.size());
}

}  // namespace parley::sandbox
