// Host-side process helpers for providers: spawning a child with a new session, another
// uid, a cgroup and a chosen set of fds; identifying processes across restarts (pid +
// start time); finding every process of a pid namespace; stopping, continuing and
// killing them.
//
//   SpawnRequest request{.path = "/usr/bin/bwrap", .argv = {...}, .fds = {{sock, 3}}};
//   absl::StatusOr<pid_t> pid = Spawn(request);
//   uint64_t started = ProcessStartTime(*pid);   // record both: pids are reused
//   if (!ProcessMatches(pid, started)) { /* it is gone */ }
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace parley::sandbox {

struct SpawnRequest {
  std::string path;               // Absolute path of the program.
  std::vector<std::string> argv;  // argv[0] included.
  std::vector<std::string> env;   // "NAME=value".
  // (fd in this process, fd number in the child). Everything else is closed; stdin is
  // /dev/null unless mapped.
  std::vector<std::pair<int, int>> fds;
  int output_fd = -1;        // stdout and stderr of the child (-1: /dev/null).
  // Open cgroup.procs files (one per hierarchy) the child joins before it execs.
  std::vector<int> cgroup_procs_fds;
  std::optional<uid_t> uid;  // Run as this uid/gid with no supplementary groups.
  std::optional<gid_t> gid;
};

// Starts the program in a new session with default signal dispositions and an empty
// signal mask (the service host blocks SIGTERM/SIGINT in every thread; a child must
// not inherit that). Uses clone(CLONE_VM | CLONE_VFORK) like posix_spawn, so the cost
// does not grow with this process's memory. Errors: the exec failure (errno) as
// UNAVAILABLE; RESOURCE_EXHAUSTED when clone fails.
absl::StatusOr<pid_t> Spawn(const SpawnRequest& request);

// The start time of a process in clock ticks since boot (/proc/<pid>/stat field 22);
// 0 when it does not exist. Together with the pid it names a process uniquely.
uint64_t ProcessStartTime(pid_t pid);

// True when `pid` exists, is not a zombie, and started at `start_time`.
bool ProcessMatches(pid_t pid, uint64_t start_time);

// Reaps `pid` if it is our child and has exited; true when it is gone (reaped or not
// our child and no longer running).
bool ReapIfExited(pid_t pid);

// Waits up to `timeout` for a process to be gone (reaping it when it is our child).
bool WaitForExit(pid_t pid, uint64_t start_time, absl::Duration timeout);

// Every live process in the same pid namespace as `init_pid` (init included), found by
// comparing /proc/<pid>/ns/pid links.
std::vector<pid_t> ProcessesInPidNamespace(pid_t init_pid);

// The pid namespace of a process (its /proc/<pid>/ns/pid link, "pid:[4026531836]"), or ""
// when it is gone.
std::string PidNamespaceOf(pid_t pid);

// Every live process grouped by pid namespace (keys as PidNamespaceOf), from one pass over
// /proc: for looking at many sandboxes at once without a scan per sandbox.
std::map<std::string, std::vector<pid_t>> ProcessesByPidNamespace();

// The one-letter state of a process ('R', 'S', 'T', 'Z', ...), or '\0' when gone.
char ProcessState(pid_t pid);

// Whether SIGSTOP is pending for `pid` (sent, not yet acted on).
bool StopPending(pid_t pid);

// Sends SIGSTOP to every process of the namespace until one pass finds all of them
// stopped (a process may fork between a scan and the signal, and stops only when it
// next runs; one blocked in the kernel ('D') with the stop pending counts as stopped).
// Bounded by 10 s; FAILED_PRECONDITION when the tree did not settle.
absl::Status StopPidNamespace(pid_t init_pid);
// SIGCONT to every process of the namespace.
absl::Status ContinuePidNamespace(pid_t init_pid);

// Pids of processes whose command line contains `needle` (a unique path).
std::vector<pid_t> ProcessesWithArgument(const std::string& needle);

// Removes a directory tree without following symlinks; makes directories writable
// first when needed (a sandbox may chmod its files). Missing is fine.
absl::Status RemoveTree(const std::string& path);

}  // namespace parley::sandbox
