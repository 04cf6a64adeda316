// The one reader of /proc/<pid>/stat, for parley-sandboxd (finding an exec's process tree)
// and the providers (identifying, stopping and killing a sandbox's processes).
//
//   for (pid_t pid : AllPids()) {
//     std::optional<ProcStat> stat = ReadProcStat(pid);
//     if (stat && stat->ppid == parent && !stat->dead()) ...
//   }
//
// A process may exit between a scan and a read: every function treats "gone" as an
// answer (nullopt, or absent from the list), never as an error. Thread-safe.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace parley::sandbox {

struct ProcStat {
  char state = '\0';        // Field 3: 'R', 'S', 'D', 'T', 'Z', 'X', ...
  pid_t ppid = 0;           // Field 4.
  uint64_t start_time = 0;  // Field 22: clock ticks since boot; with the pid, unique.

  // A zombie or a process being torn down: no longer running anything.
  bool dead() const { return state == 'Z' || state == 'X'; }
};

// The fields of /proc/<pid>/stat, or nullopt when the process is gone (or unreadable).
std::optional<ProcStat> ReadProcStat(pid_t pid);

// The pids listed in /proc right now.
std::vector<pid_t> AllPids();

}  // namespace parley::sandbox
