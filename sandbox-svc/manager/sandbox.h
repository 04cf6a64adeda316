// Sandbox: one sandbox of this replica — its record, the mutex that guards it, its legal
// transitions, its daemon connection and the exec/file calls in flight on it.
//
//   Sandbox::Turn turn = sandbox->WaitForTurn();    // one transition at a time
//   SandboxRecord record = sandbox->Record();       // a copy; no lock held after this
//   ... provider->Pause(spec, state) ...            // I/O with no lock of ours held
//   absl::Status s = sandbox->Paused(state, "paused by request", now);
//
// Legal transitions: CREATING → READY (Ready), READY → PAUSED (Paused), PAUSED → READY
// (Ready), any state → FAILED (Failed, FailedAsIs) and any but DESTROYED → DESTROYED
// (Destroyed); a READY warm sandbox is handed to a tenant by Claim. A transition that
// does I/O between reading the record and changing it holds the sandbox's turn: the
// turn is a flag waited for on the mutex, not a held lock, so no mutex is held across
// a provider call. Reads (Record, View) never wait for a turn.
//
// Thread-safe. The mutex is a leaf: nothing else is locked while it is held (the
// table's mutex and this one are never held together; see sandbox-svc/README.md).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "parley/sandbox/v1/sandbox.pb.h"
#include "sandbox-svc/manager/daemon_client.h"
#include "sandbox-svc/manager/state_store.h"

namespace parley::sandbox {

// What a tenant's sandbox is made with (a cold create, or a warm sandbox's hand-off).
struct SandboxTerms {
  std::string tenant_id;  // Empty: a warm sandbox of no tenant yet.
  std::string session_id;
  std::map<std::string, std::string> labels;
  uint64_t ttl_s = 0;
  uint64_t idle_timeout_s = 0;
  ::parley::sandbox::v1::OnExpiry on_expiry = ::parley::sandbox::v1::ON_EXPIRY_UNSPECIFIED;
};

// NOT_FOUND "SANDBOX_NOT_FOUND": also what another tenant's or a warm sandbox looks like.
absl::Status SandboxNotFound(const std::string& sandbox_id);
// FAILED_PRECONDITION "SANDBOX_WRONG_REPLICA": `sandbox_id` is replica `owner`'s, and this
// is replica `self`. The message and ErrorInfo name the owner.
absl::Status SandboxOnAnotherReplica(const std::string& sandbox_id, uint32_t owner, uint32_t self);
// FAILED_PRECONDITION "SANDBOX_GONE" naming the sandbox's state and why it is in it.
absl::Status SandboxGone(const ::parley::sandbox::v1::Sandbox& sandbox);
// CREATING, READY and PAUSED: what quotas count.
bool IsLive(::parley::sandbox::v1::SandboxState state);

class Sandbox {
 public:
  explicit Sandbox(SandboxRecord record);
  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;

  const std::string& id() const { return id_; }

  // Copies taken under the mutex.
  SandboxRecord Record() const ABSL_LOCKS_EXCLUDED(mu_);
  ::parley::sandbox::v1::Sandbox View() const ABSL_LOCKS_EXCLUDED(mu_);
  // True when this is `tenant_id`'s sandbox; false for another tenant's and a warm one.
  bool BelongsTo(const std::string& tenant_id) const ABSL_LOCKS_EXCLUDED(mu_);
  // The connection to its daemon; nullptr until connected (and after it ends).
  std::shared_ptr<DaemonConnection> daemon() const ABSL_LOCKS_EXCLUDED(mu_);
  int operations() const ABSL_LOCKS_EXCLUDED(mu_);

  // The right to run one transition. Move-only; gives the turn back when destroyed.
  class Turn {
   public:
    Turn(Turn&& other) noexcept : sandbox_(std::exchange(other.sandbox_, nullptr)) {}
    Turn& operator=(Turn&&) = delete;
    ~Turn();

   private:
    friend class Sandbox;
    explicit Turn(Sandbox* sandbox) : sandbox_(sandbox) {}
    Sandbox* sandbox_;
  };
  // Waits until no other transition is in progress.
  Turn WaitForTurn() ABSL_LOCKS_EXCLUDED(mu_);
  // The turn, or nullopt at once when a transition is in progress.
  std::optional<Turn> TryTurn() ABSL_LOCKS_EXCLUDED(mu_);

  // Transitions; the caller has the turn. Each stamps update_time with `now`.
  //
  // What the provider has built so far (persisted by the caller).
  void SetProviderState(ProviderState state) ABSL_LOCKS_EXCLUDED(mu_);
  // Keeps the connection made to a READY sandbox's daemon.
  void SetDaemon(std::shared_ptr<DaemonConnection> daemon) ABSL_LOCKS_EXCLUDED(mu_);
  // CREATING or PAUSED → READY: a tenant's TTL runs from creation, and from a resume
  // afresh (TTL counts running time, as sandbox.proto says).
  absl::Status Ready(std::shared_ptr<DaemonConnection> daemon, std::string message, absl::Time now)
      ABSL_LOCKS_EXCLUDED(mu_);
  // READY → PAUSED with the provider's state after the pause.
  absl::Status Paused(ProviderState state, std::string why, absl::Time now)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Any state but DESTROYED → DESTROYED: nothing of it exists any more.
  absl::Status Destroyed(std::string why, absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Any state but DESTROYED → FAILED; its resources are gone when `cleaned`, else kept
  // for a retry.
  absl::Status Failed(std::string message, bool cleaned, absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Any state but DESTROYED → FAILED, its resources still recorded for a later cleanup
  // (the provider could not destroy it, or is not configured here).
  absl::Status FailedAsIs(std::string message, absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Each refused move is SANDBOX_GONE and changes nothing.

  // A READY warm sandbox becomes the tenant's in `terms`; false when it is not a READY
  // warm one (any more). Needs no turn: it changes no provider state.
  bool Claim(const SandboxTerms& terms, absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // Marks it in use now (the idle timer starts again).
  void Touch(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);

  // An exec or file call starts: SANDBOX_GONE when DESTROYED or FAILED; nullptr when it
  // is not READY or not connected (the caller must resume or connect first); else its
  // daemon. `persist` says whether the touch is due to be written (at most once per
  // `persist_interval`).
  absl::StatusOr<std::shared_ptr<DaemonConnection>> BeginOperation(absl::Time now,
                                                                   absl::Duration persist_interval,
                                                                   bool* persist)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The call ended: the idle timeout counts from here.
  void EndOperation(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void SetState(::parley::sandbox::v1::SandboxState state, std::string message, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndTurn() ABSL_LOCKS_EXCLUDED(mu_);
  // SANDBOX_GONE once DESTROYED: the state nothing leaves.
  absl::Status NotDestroyedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string id_;
  mutable absl::Mutex mu_;
  SandboxRecord record_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<DaemonConnection> daemon_ ABSL_GUARDED_BY(mu_);
  bool in_transition_ ABSL_GUARDED_BY(mu_) = false;
  int operations_ ABSL_GUARDED_BY(mu_) = 0;  // Exec/file calls in flight.
  absl::Time touch_persisted_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

// An exec or file call in progress on a sandbox: while one exists the sandbox is not
// idle; its end resets the idle timer. Made by SandboxManager::Operate.
class Operation {
 public:
  Operation(std::shared_ptr<Sandbox> sandbox, std::shared_ptr<DaemonConnection> daemon,
            Clock& clock)
      : sandbox_(std::move(sandbox)), daemon_(std::move(daemon)), clock_(clock) {}
  ~Operation() { sandbox_->EndOperation(clock_.Now()); }
  Operation(const Operation&) = delete;
  Operation& operator=(const Operation&) = delete;

  DaemonConnection& daemon() { return *daemon_; }
  const std::string& sandbox_id() const { return sandbox_->id(); }

 private:
  std::shared_ptr<Sandbox> sandbox_;
  std::shared_ptr<DaemonConnection> daemon_;
  Clock& clock_;
};

}  // namespace parley::sandbox
