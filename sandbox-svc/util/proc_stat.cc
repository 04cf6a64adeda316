// /proc/<pid>/stat parsing. The command name (field 2) may contain spaces and parentheses,
// so the fields are counted from after the last ')'. One bounded read, no allocation
// beyond the result.
#include "sandbox-svc/util/proc_stat.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "absl/strings/numbers.h"
#include "common/unique_fd.h"

namespace parley::sandbox {

std::optional<ProcStat> ReadProcStat(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  UniqueFd fd(::open(path, O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return std::nullopt;
  char buffer[1024];
  ssize_t n = ::read(fd.get(), buffer, sizeof(buffer) - 1);
  if (n <= 0) return std::nullopt;
  buffer[n] = '\0';
  const char* close_paren = std::strrchr(buffer, ')');
  if (close_paren == nullptr) return std::nullopt;
  // Fields 3 (state), 4 (ppid), then 5..21 skipped, then 22 (starttime).
  ProcStat stat;
  int ppid = 0;
  unsigned long long start_time = 0;
  int parsed = std::sscanf(close_paren + 1,
                           " %c %d %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s "
                           "%*s %llu",
                           &stat.state, &ppid, &start_time);
  if (parsed < 2) return std::nullopt;
  stat.ppid = ppid;
  stat.start_time = parsed == 3 ? start_time : 0;
  return stat;
}

std::vector<pid_t> AllPids() {
  std::vector<pid_t> pids;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return pids;
  while (struct dirent* entry = ::readdir(proc)) {
    int pid = 0;
    if (absl::SimpleAtoi(entry->d_name, &pid)) pids.push_back(pid);
  }
  ::closedir(proc);
  return pids;
}

}  // namespace parley::sandbox
