// ProcessTree: one exec'd program and everything it starts, killable as a whole.
//
// Start() forks a supervisor: a child subreaper in a new process group. The supervisor
// forks the program (rlimits, cwd, env, stdio pipes applied in the child), then reaps
// children until none is left, writing the program's wait status to a status pipe as
// soon as the program itself ends. Any descendant the program leaves behind — even one
// that setsid()s into another group — is re-parented to the supervisor, so KillAll()
// can find and SIGKILL the whole tree by walking /proc from the supervisor down.
//
//   auto tree = ProcessTree::Start(spec, limits);
//   poll({tree->stdout_fd(), tree->stderr_fd(), tree->status_fd()}, ...);
//   tree->KillAll();  // on timeout or cancel; returns once no descendant is left
//
// The parent must ignore SIGCHLD (parley-sandboxd does): supervisors are reaped by the
// kernel, and the program's status comes through the status pipe.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace parley::sandbox {

// Resource limits for exec'd programs; 0 means "leave as is".
struct ExecLimits {
  uint64_t address_space_bytes = 0;  // RLIMIT_AS
  uint64_t cpu_seconds = 0;          // RLIMIT_CPU
  uint64_t max_processes = 0;        // RLIMIT_NPROC
  uint64_t max_open_files = 0;       // RLIMIT_NOFILE
  uint64_t max_file_size_bytes = 0;  // RLIMIT_FSIZE
};

struct ExecSpec {
  std::vector<std::string> argv;  // argv[0] is looked up in the PATH of `env`.
  std::vector<std::string> env;   // "NAME=value" entries.
  UniqueFd cwd;                   // Directory fd; the program starts there.
  bool has_stdin = false;         // Without it stdin is /dev/null.
};

class ProcessTree {
 public:
  // Starts the supervisor and the program. A program that cannot be found or executed
  // is not an error: the tree then reports exit status 127 or 126 and a message on
  // stderr, like a shell would. Errors: RESOURCE_EXHAUSTED when fork fails (process
  // limit), INTERNAL for pipe failures.
  static absl::StatusOr<std::unique_ptr<ProcessTree>> Start(ExecSpec spec,
                                                            const ExecLimits& limits);
  // Closes the pipes and kills nothing: call KillAll() first if anything may still run.
  ~ProcessTree();

  // Read ends (non-blocking) and the stdin write end (non-blocking; -1 without stdin).
  int stdout_fd() const { return stdout_.get(); }
  int stderr_fd() const { return stderr_.get(); }
  int stdin_fd() const { return stdin_.get(); }
  void CloseStdin() { stdin_.reset(); }
  void CloseOutputs() {
    stdout_.reset();
    stderr_.reset();
  }
  // Readable once the program ended; ReadStatus() then returns its wait status.
  int status_fd() const { return status_.get(); }
  // The wait status, or nullopt when the supervisor died without reporting (killed).
  std::optional<int> ReadStatus();

  // A message the tree wrote to stderr itself (e.g. "command not found"), to be sent
  // before any output; empty otherwise.
  const std::string& startup_message() const { return startup_message_; }

  // SIGKILLs the process group and every descendant of the supervisor, then the
  // supervisor. Bounded; returns when none is left or after ~2 s of trying.
  void KillAll();

  pid_t supervisor_pid() const { return supervisor_; }

 private:
  ProcessTree() = default;
  pid_t supervisor_ = -1;
  bool killed_ = false;
  UniqueFd stdin_;
  UniqueFd stdout_;
  UniqueFd stderr_;
  UniqueFd status_;
  std::string startup_message_;
};

}  // namespace parley::sandbox
