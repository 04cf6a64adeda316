// One Exec call of parley-sandboxd: the reactor that runs a command in a ProcessTree
// (exec.h) and streams its output under gRPC flow control.
//
//   ExecSlots slots(64);
//   ExecContext exec{limits, base_env, workspace, slots};
//   return StartExec(exec, *request, CheckToken(context));
//
// Threads: a pump thread per running exec owns the ProcessTree. It alternates between
// waiting for the previous message to be written (one write in flight, so a slow reader
// blocks the program through its pipe) and polling the pipes, the status pipe and an
// eventfd. gRPC's threads run OnWriteDone and OnCancel, which only set flags under the
// reactor's mutex and wake the pump through the eventfd; OnDone joins the pump. The
// deadline, a cancel and a failed write all end in KillAll(); the call then finishes
// without waiting for pipe EOF.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "parley/sandboxd/v1/operations.pb.h"
#include "sandbox-svc/sandboxd/exec.h"
#include "sandbox-svc/sandboxd/files.h"

namespace parley::sandbox {

// The cap on concurrent execs in one daemon (each holds a pump thread). Thread-safe.
class ExecSlots {
 public:
  explicit ExecSlots(int limit) : limit_(limit) {}

  // Takes a slot; false when `limit` execs are running.
  bool TryAcquire();
  // Gives back a slot taken by TryAcquire().
  void Release() { running_.fetch_sub(1); }
  int limit() const { return limit_; }

 private:
  const int limit_;
  std::atomic<int> running_{0};
};

// What an exec needs from the daemon; everything outlives every exec (the service owns it).
struct ExecContext {
  const ExecLimits& limits;                  // Applied to the program.
  const std::vector<std::string>& base_env;  // "NAME=value"; the command's env goes on top.
  const Workspace& workspace;                // Resolves the command's cwd.
  ExecSlots& slots;
};

// Starts an Exec call and returns its reactor. `admitted` is the caller's token check: an
// error finishes the call with it. Then the command is validated (ValidateExecCommand),
// its cwd opened (NOT_FOUND "cwd: …"), a slot taken (RESOURCE_EXHAUSTED
// "TOO_MANY_PROCESSES") and the tree started; any error finishes the call at once.
grpc::ServerWriteReactor<::parley::sandboxd::v1::ExecResponse>* StartExec(
    const ExecContext& context, const ::parley::sandboxd::v1::ExecRequest& request,
    const absl::Status& admitted);

}  // namespace parley::sandbox
