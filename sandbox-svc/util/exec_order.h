// The last steps before a sandbox process runs its program, shared by parley-sandbox's
// spawner and the launcher mode of parley-sandboxd: an ExecPlan (new session, uid and
// gid, the fds, exec) carried out without allocating, and the exec order — an ExecPlan
// sent over a SOCK_SEQPACKET socket to a process that waits for it.
//
//   // In a child, after fork or in a clone sharing our memory:
//   ExecPlan plan{.path = "/usr/bin/bwrap", .argv = argv, .envp = envp, ...};
//   ExecPlanned(plan);  // never returns; a failure's errno goes to plan.error_fd
//
//   // In a waiting process (parley-sandboxd --launch_fd=3):
//   AwaitExecOrder(3);  // execs what EncodeExecOrder() encoded, or exits on EOF
//
// Everything here runs after fork() of a multithreaded process, so it uses only raw
// system calls and the stack.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace parley::sandbox {

inline constexpr size_t kMaxExecFds = 64;  // Fds mapped into one program.
inline constexpr size_t kMaxExecOrderBytes = 32 * 1024;
inline constexpr size_t kMaxExecOrderStrings = 256;  // Path + argv + env.

// Everything a child needs to exec a program, prepared so that the child allocates
// nothing.
struct ExecPlan {
  const char* path = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const int* fds_from = nullptr;  // fds_from[i] becomes fds_to[i] in the program.
  const int* fds_to = nullptr;
  size_t fd_count = 0;
  int output_fd = -1;  // stdout and stderr; -1: /dev/null.
  int devnull_fd = -1;
  int error_fd = -1;  // Close-on-exec: EOF on its other end means the exec succeeded.
  bool set_uid = false, set_gid = false;  // setgid also drops supplementary groups.
  uid_t uid = 0;
  gid_t gid = 0;
};

// Writes errno to `error_fd` and exits 127.
[[noreturn]] void ExecFailed(int error_fd);

// A new session (unless the process leads one already), the gid and uid, stdin from
// /dev/null, stdout/stderr to output_fd, the mapped fds and nothing else, then exec.
[[noreturn]] void ExecPlanned(const ExecPlan& plan);

// What an exec order carries besides its fds.
struct ExecOrder {
  std::string path;
  std::vector<std::string> argv;  // argv[0] included.
  std::vector<std::string> env;   // "NAME=value".
  std::vector<int> fds_to;        // The fd numbers in the program, in the order sent.
  bool has_output = false;        // One more fd after those: stdout and stderr.
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
};

// The order's bytes (sent with its fds as SCM_RIGHTS in one message); INVALID_ARGUMENT
// when it exceeds the limits above.
absl::StatusOr<std::string> EncodeExecOrder(const ExecOrder& order);

// Receives one order on `control_fd` (made close-on-exec here, so that a successful exec
// reads as EOF on the other end) and execs it; a failure's errno goes back on the same
// socket. EOF before an order exits 0.
[[noreturn]] void AwaitExecOrder(int control_fd);

}  // namespace parley::sandbox
