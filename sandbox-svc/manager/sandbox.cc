// One sandbox's state machine; see sandbox.h. Everything here is in memory: the caller
// persists the record after a transition and does the provider's work between them.
#include "sandbox-svc/manager/sandbox.h"

#include "absl/strings/str_cat.h"
#include "common/proto_time.h"
#include "common/status.h"

namespace parley::sandbox {

namespace sandbox_pb = ::parley::sandbox::v1;

absl::Status SandboxNotFound(const std::string& sandbox_id) {
  absl::Status status = absl::NotFoundError(absl::StrCat("sandbox \"", sandbox_id, "\" not found"));
  // Tells callers a missing sandbox from a missing file (both NOT_FOUND).
  SetErrorInfo(status, "SANDBOX_NOT_FOUND");
  return status;
}

absl::Status SandboxOnAnotherReplica(const std::string& sandbox_id, uint32_t owner, uint32_t self) {
  absl::Status status = absl::FailedPreconditionError(
      absl::StrCat("sandbox \"", sandbox_id, "\" belongs to sandbox-svc replica ", owner,
                   ", not to this one (replica ", self, "): send calls for it to replica ", owner,
                   " (SandboxReplicas routes by id)"));
  SetErrorInfo(status, "SANDBOX_WRONG_REPLICA",
               {{"owner_replica", absl::StrCat(owner)}, {"replica", absl::StrCat(self)}});
  return status;
}

absl::Status SandboxGone(const sandbox_pb::Sandbox& sandbox) {
  absl::Status status = absl::FailedPreconditionError(absl::StrCat(
      "sandbox ", sandbox.id(), " is ", sandbox_pb::SandboxState_Name(sandbox.state()),
      sandbox.state_message().empty() ? "" : absl::StrCat(": ", sandbox.state_message())));
  SetErrorInfo(status, "SANDBOX_GONE", {{"state", sandbox_pb::SandboxState_Name(sandbox.state())}});
  return status;
}

bool IsLive(sandbox_pb::SandboxState state) {
  return state == sandbox_pb::SANDBOX_STATE_CREATING || state == sandbox_pb::SANDBOX_STATE_READY ||
         state == sandbox_pb::SANDBOX_STATE_PAUSED;
}

Sandbox::Sandbox(SandboxRecord record) : id_(record.sandbox.id()), record_(std::move(record)) {}

SandboxRecord Sandbox::Record() const {
  absl::MutexLock lock(&mu_);
  return record_;
}

sandbox_pb::Sandbox Sandbox::View() const {
  absl::MutexLock lock(&mu_);
  return record_.sandbox;
}

bool Sandbox::BelongsTo(const std::string& tenant_id) const {
  absl::MutexLock lock(&mu_);
  return !record_.pooled && record_.sandbox.tenant_id() == tenant_id;
}

std::shared_ptr<DaemonConnection> Sandbox::daemon() const {
  absl::MutexLock lock(&mu_);
  return daemon_;
}

int Sandbox::operations() const {
  absl::MutexLock lock(&mu_);
  return operations_;
}

// ---------------------------------------------------------------------------------
// The turn

Sandbox::Turn::~Turn() {
  if (sandbox_ != nullptr) sandbox_->EndTurn();
}

Sandbox::Turn Sandbox::WaitForTurn() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](bool* in_transition) { return !*in_transition; }, &in_transition_));
  in_transition_ = true;
  return Turn(this);
}

std::optional<Sandbox::Turn> Sandbox::TryTurn() {
  absl::MutexLock lock(&mu_);
  if (in_transition_) return std::nullopt;
  in_transition_ = true;
  return Turn(this);
}

void Sandbox::EndTurn() {
  absl::MutexLock lock(&mu_);
  in_transition_ = false;
}

// ---------------------------------------------------------------------------------
// Transitions

void Sandbox::SetState(sandbox_pb::SandboxState state, std::string message, absl::Time now) {
  sandbox_pb::Sandbox& sandbox = record_.sandbox;
  sandbox.set_state(state);
  sandbox.set_state_message(std::move(message));
  *sandbox.mutable_update_time() = ToTimestamp(now);
  if (state != sandbox_pb::SANDBOX_STATE_READY) sandbox.clear_expire_time();
}

void Sandbox::SetProviderState(ProviderState state) {
  absl::MutexLock lock(&mu_);
  record_.provider_state = std::move(state);
}

void Sandbox::SetDaemon(std::shared_ptr<DaemonConnection> daemon) {
  absl::MutexLock lock(&mu_);
  daemon_ = std::move(daemon);
}

absl::Status Sandbox::Ready(std::shared_ptr<DaemonConnection> daemon, std::string message,
                            absl::Time now) {
  absl::MutexLock lock(&mu_);
  sandbox_pb::Sandbox& sandbox = record_.sandbox;
  const sandbox_pb::SandboxState from = sandbox.state();
  if (from != sandbox_pb::SANDBOX_STATE_CREATING && from != sandbox_pb::SANDBOX_STATE_PAUSED) {
    return SandboxGone(sandbox);
  }
  daemon_ = std::move(daemon);
  SetState(sandbox_pb::SANDBOX_STATE_READY, std::move(message), now);
  *sandbox.mutable_last_active_time() = ToTimestamp(now);
  if (!record_.pooled && sandbox.ttl_s() > 0) {
    const absl::Time start =
        from == sandbox_pb::SANDBOX_STATE_CREATING ? FromTimestamp(sandbox.create_time()) : now;
    *sandbox.mutable_expire_time() = ToTimestamp(start + absl::Seconds(sandbox.ttl_s()));
  }
  return absl::OkStatus();
}

absl::Status Sandbox::Paused(ProviderState state, std::string why, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (record_.sandbox.state() != sandbox_pb::SANDBOX_STATE_READY)
    return SandboxGone(record_.sandbox);
  record_.provider_state = std::move(state);
  SetState(sandbox_pb::SANDBOX_STATE_PAUSED, std::move(why), now);
  return absl::OkStatus();
}

absl::Status Sandbox::NotDestroyedLocked() const {
  if (record_.sandbox.state() == sandbox_pb::SANDBOX_STATE_DESTROYED) {
    return SandboxGone(record_.sandbox);
  }
  return absl::OkStatus();
}

absl::Status Sandbox::Destroyed(std::string why, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (absl::Status alive = NotDestroyedLocked(); !alive.ok()) return alive;
  SetState(sandbox_pb::SANDBOX_STATE_DESTROYED, std::move(why), now);
  record_.provider_state.clear();
  daemon_.reset();
  return absl::OkStatus();
}

absl::Status Sandbox::Failed(std::string message, bool cleaned, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (absl::Status alive = NotDestroyedLocked(); !alive.ok()) return alive;
  record_.pooled = false;
  SetState(sandbox_pb::SANDBOX_STATE_FAILED, std::move(message), now);
  if (cleaned) record_.provider_state.clear();
  daemon_.reset();
  return absl::OkStatus();
}

absl::Status Sandbox::FailedAsIs(std::string message, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (absl::Status alive = NotDestroyedLocked(); !alive.ok()) return alive;
  SetState(sandbox_pb::SANDBOX_STATE_FAILED, std::move(message), now);
  return absl::OkStatus();
}

bool Sandbox::Claim(const SandboxTerms& terms, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (!record_.pooled || record_.sandbox.state() != sandbox_pb::SANDBOX_STATE_READY) return false;
  sandbox_pb::Sandbox& sandbox = record_.sandbox;
  record_.pooled = false;
  sandbox.set_tenant_id(terms.tenant_id);
  sandbox.set_session_id(terms.session_id);
  sandbox.mutable_labels()->insert(terms.labels.begin(), terms.labels.end());
  sandbox.set_ttl_s(terms.ttl_s);
  sandbox.set_idle_timeout_s(terms.idle_timeout_s);
  sandbox.set_on_expiry(terms.on_expiry);
  *sandbox.mutable_create_time() = ToTimestamp(now);
  *sandbox.mutable_last_active_time() = ToTimestamp(now);
  *sandbox.mutable_update_time() = ToTimestamp(now);
  if (terms.ttl_s > 0) {
    *sandbox.mutable_expire_time() = ToTimestamp(now + absl::Seconds(terms.ttl_s));
  }
  return true;
}

void Sandbox::Touch(absl::Time now) {
  absl::MutexLock lock(&mu_);
  *record_.sandbox.mutable_last_active_time() = ToTimestamp(now);
}

// ---------------------------------------------------------------------------------
// Operations

absl::StatusOr<std::shared_ptr<DaemonConnection>> Sandbox::BeginOperation(
    absl::Time now, absl::Duration persist_interval, bool* persist) {
  absl::MutexLock lock(&mu_);
  const sandbox_pb::SandboxState state = record_.sandbox.state();
  if (state == sandbox_pb::SANDBOX_STATE_DESTROYED || state == sandbox_pb::SANDBOX_STATE_FAILED) {
    return SandboxGone(record_.sandbox);
  }
  if (state != sandbox_pb::SANDBOX_STATE_READY || daemon_ == nullptr) return nullptr;
  *record_.sandbox.mutable_last_active_time() = ToTimestamp(now);
  ++operations_;
  *persist = now - touch_persisted_ >= persist_interval;
  if (*persist) touch_persisted_ = now;
  return daemon_;
}

void Sandbox::EndOperation(absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (operations_ > 0) --operations_;
  if (record_.sandbox.state() == sandbox_pb::SANDBOX_STATE_READY) {
    *record_.sandbox.mutable_last_active_time() = ToTimestamp(now);
  }
}

}  // namespace parley::sandbox
