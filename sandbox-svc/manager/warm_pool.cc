// The warm pool's filler and hand-off; see warm_pool.h. A hand-off is: take the oldest
// ready id from the table (quota checked there), claim the sandbox for the tenant, check
// that its processes still live, write its record.
#include "sandbox-svc/manager/warm_pool.h"

#include <algorithm>

#include "absl/cleanup/cleanup.h"

namespace parley::sandbox {

namespace sandbox_pb = ::parley::sandbox::v1;

WarmPool::WarmPool(const ManagerOptions& options, const TemplateSet& templates,
                   Lifecycle* lifecycle, SandboxTable* table, Clock& clock,
                   const telemetry::Logger* logger)
    : options_(options),
      templates_(templates),
      lifecycle_(lifecycle),
      table_(table),
      clock_(clock),
      logger_(logger) {}

void WarmPool::Start() {
  if (options_.fill_pools) filler_ = std::thread([this] { FillerLoop(); });
}

void WarmPool::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (filler_.joinable()) filler_.join();
}

std::optional<absl::StatusOr<sandbox_pb::Sandbox>> WarmPool::Take(const TemplateConfig& config,
                                                                  const SandboxTerms& terms) {
  // A warm sandbox may have died since it was made; try a few before building one.
  for (int attempt = 0; attempt < 3; ++attempt) {
    absl::StatusOr<std::shared_ptr<Sandbox>> taken =
        table_->TakeWarm(config.proto.name(), terms.tenant_id, terms.session_id);
    if (!taken.ok()) return absl::StatusOr<sandbox_pb::Sandbox>(taken.status());
    if (*taken == nullptr) return std::nullopt;
    Sandbox& sandbox = **taken;
    // The filler refills once this hand-off is over: its cold create (a bwrap start)
    // would otherwise compete for the CPU with the record write and the answer.
    absl::Cleanup wake_filler = [this] {
      absl::MutexLock lock(&mu_);
      wakeup_ = true;
    };
    // Claimed for the tenant at once, so quotas and lists see it.
    if (!sandbox.Claim(terms, clock_.Now())) continue;
    Sandbox::Turn turn = sandbox.WaitForTurn();
    if (!lifecycle_->Alive(sandbox.Record())) {
      lifecycle_->Fail(sandbox, "the warm sandbox's processes exited before it was handed out");
      continue;
    }
    if (absl::Status s = lifecycle_->Persist(sandbox); !s.ok()) {
      return absl::StatusOr<sandbox_pb::Sandbox>(s);
    }
    if (logger_ != nullptr) {
      logger_->Info("sandbox handed out from the warm pool", {{"sandbox_id", sandbox.id()},
                                                              {"tenant_id", terms.tenant_id},
                                                              {"template", config.proto.name()}});
    }
    return absl::StatusOr<sandbox_pb::Sandbox>(sandbox.View());
  }
  return std::nullopt;
}

bool WarmPool::ShouldFill(const std::string& name, int target) {
  // Read before mu_ is taken: the table's mutex and ours are never held together.
  const int ready = table_->PoolReady(name);
  const int live = table_->LiveCount();
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  if (ready + filling_[name] >= target || clock_.Now() < retry_at_[name]) return false;
  if (live >= options_.max_sandboxes) return false;
  filling_[name]++;
  return true;
}

bool WarmPool::FillOne(const TemplateConfig& config) {
  const std::string& name = config.proto.name();
  SandboxTerms terms;
  terms.ttl_s = config.proto.default_ttl_s();
  terms.idle_timeout_s = config.proto.default_idle_timeout_s();
  terms.on_expiry = config.proto.default_on_expiry();
  absl::StatusOr<sandbox_pb::Sandbox> sandbox =
      lifecycle_->ColdCreate(config, terms, /*pooled=*/true);
  if (sandbox.ok()) table_->AddToPool(sandbox->id());
  absl::MutexLock lock(&mu_);
  filling_[name]--;
  if (sandbox.ok()) {
    backoff_.erase(name);
    return true;
  }
  absl::Duration& backoff = backoff_[name];
  backoff = std::min(options_.pool_retry_max,
                     backoff == absl::ZeroDuration() ? absl::Milliseconds(100) : backoff * 2);
  retry_at_[name] = clock_.Now() + backoff;
  if (logger_ != nullptr) {
    logger_->Warn("cannot fill the warm pool",
                  {{"template", name},
                   {"error", sandbox.status().ToString()},
                   {"retry_in_ms", absl::ToInt64Milliseconds(backoff)}});
  }
  return false;
}

void WarmPool::FillOnce() {
  for (const auto& [name, config] : templates_.by_name) {
    const int target = static_cast<int>(config.proto.warm_pool_target());
    if (target == 0) continue;
    while (ShouldFill(name, target) && FillOne(config)) {
    }
  }
}

void WarmPool::FillerLoop() {
  while (true) {
    FillOnce();
    absl::MutexLock lock(&mu_);
    auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || wakeup_; };
    mu_.AwaitWithTimeout(absl::Condition(&wake), absl::Seconds(1));
    wakeup_ = false;
    if (stopping_) return;
  }
}

}  // namespace parley::sandbox
