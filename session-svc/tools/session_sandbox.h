// SessionSandbox: a turn's handle on its session's sandbox in sandbox-svc.
//
// The sandbox is acquired on first use (AcquireForSession: created from the session's
// template — from the warm pool when one is ready — or resumed when paused) and kept
// for the rest of the turn. When an operation finds it gone (destroyed, failed,
// expired, its daemon dead), the handle forgets it: the failed operation reports the
// loss, and the next one acquires a replacement, whose SandboxAttached event names the
// sandbox it replaces. Every call is cancelled at once when the turn is asked to stop
// (sandbox-svc then kills the process tree of an Exec).
//
//   SessionSandbox sandbox(replicas, {.tenant_id = t, .session_id = s}, stop);
//   if (absl::Status s = sandbox.Attach(&attached); !s.ok()) return s;  // Emit *attached if set.
//   absl::StatusOr<v1::ExecExit> exit = sandbox.Exec({"ls"}, absl::Seconds(10), on_chunk);
//
// Acquisition goes to any sandbox-svc replica, every later call to the replica that owns
// the attached sandbox (SandboxReplicas routes by id).
//
// Thread-safe: read-only tools of one step run in parallel on one handle.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "parley/sandbox/v1/sandbox.grpc.pb.h"
#include "parley/v1/events.pb.h"
#include "sandbox-svc/client/replicas.h"
#include "session-svc/turn/turn_control.h"

namespace parley::session::tools {

using SandboxReplicas = ::parley::sandbox::SandboxReplicas;
using SandboxStub = SandboxReplicas::Stub;

struct SandboxTarget {
  std::string tenant_id;
  std::string session_id;
  std::string template_name;  // Empty: sandbox-svc's default template.
};

// Whether `status`, from an operation in the sandbox, means the sandbox is gone (as
// opposed to a failure of the operation itself, like a missing file).
bool IsSandboxGone(const absl::Status& status);

class SessionSandbox {
 public:
  // `replicas` and `stop` must outlive the handle.
  SessionSandbox(SandboxReplicas& replicas, SandboxTarget target, StopSignal& stop);

  // Makes sure a sandbox is attached, acquiring one when there is none. Sets `*attached`
  // when this call created, resumed or replaced it (an event for clients).
  // Errors: as AcquireForSession (RESOURCE_EXHAUSTED quota, UNAVAILABLE, ...);
  // CANCELLED when the turn is stopping.
  absl::Status Attach(std::optional<v1::SandboxAttached>* attached);

  // Runs argv; `on_output` gets each stdout/stderr chunk as it arrives (on the calling
  // thread). Errors: FAILED_PRECONDITION when no sandbox is attached; the sandbox's
  // errors (IsSandboxGone tells a lost sandbox, which the handle then forgets).
  using OutputFn = std::function<void(v1::OutputStream stream, const std::string& data)>;
  absl::StatusOr<v1::ExecExit> Exec(const std::vector<std::string>& argv, absl::Duration timeout,
                                    const OutputFn& on_output);
  // Reads up to `max_bytes` of a file; `*size_bytes` gets the file's whole size.
  absl::StatusOr<std::string> ReadFile(const std::string& path, uint64_t max_bytes,
                                       uint64_t* size_bytes, absl::Duration timeout);
  // Replaces a file atomically, creating missing parent directories.
  absl::Status WriteFile(const std::string& path, const std::string& content,
                         absl::Duration timeout);
  absl::StatusOr<sandboxd::v1::ListDirResponse> ListFiles(const std::string& path, bool recursive,
                                                          uint32_t max_entries,
                                                          absl::Duration timeout);

  // A loss of the attached sandbox seen by an operation since the last call (an event
  // for clients), once; nullopt when there was none.
  std::optional<v1::SandboxLost> TakeLoss();

 private:
  // The attached sandbox: its id and the stub of the replica that owns it.
  struct Attached {
    std::string id;
    SandboxStub* owner = nullptr;
  };
  // FAILED_PRECONDITION when none is attached.
  absl::StatusOr<Attached> Current();
  // A client context with `timeout` that the turn's stop cancels.
  struct Call {
    grpc::ClientContext context;
    std::unique_ptr<StopHook> hook;
  };
  std::unique_ptr<Call> NewCall(absl::Duration timeout);
  // Maps a finished call's status; forgets the sandbox when the status says it is gone.
  absl::Status Finished(const std::string& sandbox_id, const grpc::Status& status);

  SandboxReplicas& replicas_;
  const SandboxTarget target_;
  StopSignal& stop_;
  absl::Mutex mu_;
  std::string sandbox_id_ ABSL_GUARDED_BY(mu_);
  std::string lost_sandbox_id_ ABSL_GUARDED_BY(mu_);  // Forgotten after a loss.
  std::optional<v1::SandboxLost> unreported_loss_ ABSL_GUARDED_BY(mu_);
};

}  // namespace parley::session::tools
