// The reaper's pass; see reaper.h. All time comes from the clock, so tests drive expiry
// with a FakeClock and ReapOnce().
#include "sandbox-svc/manager/reaper.h"

#include <map>
#include <optional>

#include "common/proto_time.h"

namespace parley::sandbox {

namespace sandbox_pb = ::parley::sandbox::v1;

namespace {

// "ttl" or "idle" when a READY sandbox has expired at `now`; empty otherwise.
std::string ExpiryReason(const sandbox_pb::Sandbox& sandbox, int operations, absl::Time now) {
  if (sandbox.has_expire_time() && now >= FromTimestamp(sandbox.expire_time())) return "ttl";
  if (sandbox.idle_timeout_s() > 0 && operations == 0 &&
      now >= FromTimestamp(sandbox.last_active_time()) + absl::Seconds(sandbox.idle_timeout_s())) {
    return "idle";
  }
  return "";
}

}  // namespace

Reaper::Reaper(const ManagerOptions& options, const TemplateSet& templates, Lifecycle* lifecycle,
               SandboxTable* table, StateStore* store, Clock& clock,
               const telemetry::Logger* logger, telemetry::Registry* registry)
    : options_(options),
      templates_(templates),
      lifecycle_(lifecycle),
      table_(table),
      store_(store),
      clock_(clock),
      logger_(logger) {
  if (registry != nullptr) {
    live_gauge_ = &registry->AddGauge("parley_sandbox_sandboxes",
                                      "Sandboxes on this replica by state", {"state"});
    pool_gauge_ = &registry->AddGauge("parley_sandbox_pool_ready",
                                      "Warm sandboxes ready per template", {"template"});
    pool_target_gauge_ =
        &registry->AddGauge("parley_sandbox_pool_target",
                            "Warm sandboxes each template's pool is kept at", {"template"});
    expired_total_ = &registry->AddCounter("parley_sandbox_expired_total", "TTL and idle expiries",
                                           {"reason", "action"});
  }
}

void Reaper::Start() {
  if (options_.reap_interval > absl::ZeroDuration()) {
    thread_ = std::thread([this] { ReaperLoop(); });
  }
}

void Reaper::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void Reaper::ReaperLoop() {
  while (true) {
    ReapOnce();
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.reap_interval);
    if (stopping_) return;
  }
}

void Reaper::ReapOnce() {
  const absl::Time now = clock_.Now();
  std::vector<std::string> forget;
  for (const std::shared_ptr<Sandbox>& sandbox : table_->All()) {
    // Never wait behind a long transition (a create, a destroy): next pass.
    std::optional<Sandbox::Turn> turn = sandbox->TryTurn();
    if (!turn.has_value()) continue;
    ReapOne(*sandbox, now, &forget);
  }
  for (const std::string& id : forget) {
    (void)store_->Remove(id);
    table_->Forget(id);
  }
  UpdateGauges();
}

void Reaper::ReapOne(Sandbox& sandbox, absl::Time now, std::vector<std::string>* forget) {
  const SandboxRecord snapshot = sandbox.Record();
  const sandbox_pb::Sandbox& view = snapshot.sandbox;
  const bool retention_over =
      now >= FromTimestamp(view.update_time()) + options_.destroyed_retention;
  switch (view.state()) {
    case sandbox_pb::SANDBOX_STATE_READY: {
      if (!lifecycle_->Alive(snapshot)) {
        lifecycle_->Fail(sandbox, "the sandbox's processes exited unexpectedly");
        return;
      }
      if (snapshot.pooled) return;
      const std::string reason = ExpiryReason(view, sandbox.operations(), now);
      if (!reason.empty()) Expire(sandbox, view, reason);
      return;
    }
    case sandbox_pb::SANDBOX_STATE_FAILED:
      if (!snapshot.provider_state.empty()) {
        lifecycle_->Fail(sandbox, view.state_message());  // Retries the cleanup.
      } else if (retention_over) {
        forget->push_back(sandbox.id());
      }
      return;
    case sandbox_pb::SANDBOX_STATE_DESTROYED:
      if (retention_over) forget->push_back(sandbox.id());
      return;
    default:
      return;
  }
}

void Reaper::Expire(Sandbox& sandbox, const sandbox_pb::Sandbox& view, const std::string& reason) {
  const bool pause = view.on_expiry() == sandbox_pb::ON_EXPIRY_PAUSE;
  if (logger_ != nullptr) {
    logger_->Info("sandbox expired", {{"sandbox_id", sandbox.id()},
                                      {"tenant_id", view.tenant_id()},
                                      {"reason", reason},
                                      {"action", pause ? "pause" : "destroy"}});
  }
  if (expired_total_ != nullptr) {
    expired_total_->WithLabels({reason, pause ? "pause" : "destroy"}).Increment();
  }
  const std::string why = reason == "ttl" ? "ttl expired" : "idle timeout";
  if (!pause) {
    (void)lifecycle_->Destroy(sandbox, why);
    return;
  }
  absl::StatusOr<sandbox_pb::Sandbox> paused = lifecycle_->Pause(sandbox, why);
  if (!paused.ok() && logger_ != nullptr) {  // Stays READY; the next pass retries.
    logger_->Warn("expired sandbox not paused",
                  {{"sandbox_id", sandbox.id()}, {"error", paused.status().ToString()}});
  }
}

void Reaper::UpdateGauges() {
  if (live_gauge_ == nullptr) return;
  std::map<sandbox_pb::SandboxState, int> counts;
  for (const std::shared_ptr<Sandbox>& sandbox : table_->All()) {
    counts[sandbox->View().state()]++;
  }
  for (int state = sandbox_pb::SANDBOX_STATE_CREATING; state <= sandbox_pb::SANDBOX_STATE_FAILED;
       ++state) {
    auto typed = static_cast<sandbox_pb::SandboxState>(state);
    live_gauge_->WithLabels({sandbox_pb::SandboxState_Name(typed)}).Set(counts[typed]);
  }
  for (const auto& [name, config] : templates_.by_name) {
    pool_gauge_->WithLabels({name}).Set(table_->PoolReady(name));
    pool_target_gauge_->WithLabels({name}).Set(config.proto.warm_pool_target());
  }
}

}  // namespace parley::sandbox
