// See posix.h. Nothing here allocates before the directory is open or takes a lock in
// ResetSignalsForExec, which runs in children that share the parent's memory.
#include "common/posix.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "absl/strings/string_view.h"

namespace parley {

void ResetSignalsForExec() {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, sizeof(uint64_t));
}

absl::StatusOr<std::vector<std::string>> ListDirNames(
    int dir_fd, absl::FunctionRef<absl::Status(int error)> error_for) {
  // fdopendir takes ownership of its fd, so hand it a duplicate.
  int dup_fd = ::fcntl(dir_fd, F_DUPFD_CLOEXEC, 0);
  if (dup_fd < 0) return error_for(errno);
  DIR* dir = ::fdopendir(dup_fd);
  if (dir == nullptr) {
    const int error = errno;
    ::close(dup_fd);
    return error_for(error);
  }
  std::vector<std::string> names;
  while (struct dirent* entry = ::readdir(dir)) {
    absl::string_view name(entry->d_name);
    if (name != "." && name != "..") names.emplace_back(name);
  }
  ::closedir(dir);
  return names;
}

}  // namespace parley
