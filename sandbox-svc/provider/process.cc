// Spawning and /proc scans. The child side of Spawn() runs in a vfork-style clone that
// shares our memory, so it uses only raw system calls: glibc's setuid wrappers would
// try to signal the other threads of this (the parent's) process.
#include "sandbox-svc/provider/process.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/posix.h"
#include "common/unique_fd.h"
#include "sandbox-svc/util/proc_stat.h"

namespace parley::sandbox {
namespace {

struct ChildArgs {
  const SpawnRequest* request;
  char* const* argv;
  char* const* envp;
  int error_fd;
  int devnull_fd;
};

constexpr int kHighFdBase = 1000;

[[noreturn]] void ChildFail(int error_fd) {
  int error = errno;
  (void)!::write(error_fd, &error, sizeof(error));
  ::_exit(127);
}

int ChildMain(void* raw) {
  const ChildArgs& args = *static_cast<const ChildArgs*>(raw);
  const SpawnRequest& request = *args.request;

  ResetSignalsForExec();

  for (int procs_fd : request.cgroup_procs_fds) {
    if (::write(procs_fd, "0", 1) != 1) ChildFail(args.error_fd);
  }
  if (::syscall(SYS_setsid) < 0) ChildFail(args.error_fd);
  if (request.gid) {
    if (::syscall(SYS_setgroups, 0, nullptr) != 0) ChildFail(args.error_fd);
    if (::syscall(SYS_setresgid, *request.gid, *request.gid, *request.gid) != 0) {
      ChildFail(args.error_fd);
    }
  }
  if (request.uid && ::syscall(SYS_setresuid, *request.uid, *request.uid, *request.uid) != 0) {
    ChildFail(args.error_fd);
  }

  // Move every fd we need above the targets first, so no dup2 clobbers a source.
  int error_fd = ::fcntl(args.error_fd, F_DUPFD_CLOEXEC, kHighFdBase);
  if (error_fd < 0) ::_exit(127);
  int next = error_fd + 1;
  int devnull = ::fcntl(args.devnull_fd, F_DUPFD, next);
  next = devnull + 1;
  int output = request.output_fd >= 0 ? ::fcntl(request.output_fd, F_DUPFD, next) : devnull;
  if (output >= next) next = output + 1;
  int max_target = 2;
  int moved[64];
  const size_t count = std::min<size_t>(request.fds.size(), 64);
  for (size_t i = 0; i < count; ++i) {
    moved[i] = ::fcntl(request.fds[i].first, F_DUPFD, next);
    if (moved[i] < 0) ChildFail(error_fd);
    next = moved[i] + 1;
    max_target = std::max(max_target, request.fds[i].second);
  }
  ::dup2(devnull, 0);
  ::dup2(output, 1);
  ::dup2(output, 2);
  for (size_t i = 0; i < count; ++i) {
    if (::dup2(moved[i], request.fds[i].second) < 0) ChildFail(error_fd);
  }
  if (error_fd > max_target + 1) {
    ::close_range(static_cast<unsigned>(max_target) + 1, static_cast<unsigned>(error_fd) - 1, 0);
  }
  ::close_range(static_cast<unsigned>(error_fd) + 1, ~0U, 0);
  ::execve(request.path.c_str(), args.argv, args.envp);
  ChildFail(error_fd);
}

absl::Status RemoveAt(int dir_fd, const std::string& name, const std::string& shown, int depth) {
  struct stat st {};
  if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    return errno == ENOENT
               ? absl::OkStatus()
               : absl::InternalError(absl::StrCat("stat ", shown, ": ", std::strerror(errno)));
  }
  if (S_ISDIR(st.st_mode)) {
    if (depth > 4096) return absl::InternalError(absl::StrCat("remove ", shown, ": too deep"));
    UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd.valid() && errno == EACCES) {
      ::fchmodat(dir_fd, name.c_str(), 0700, 0);
      fd.reset(::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    }
    if (!fd.valid()) {
      return absl::InternalError(absl::StrCat("open ", shown, ": ", std::strerror(errno)));
    }
    ::fchmod(fd.get(), 0700);  // A sandbox may have made its directories read-only.
    absl::StatusOr<std::vector<std::string>> names = ListDirNames(fd.get(), [&](int error) {
      return absl::InternalError(absl::StrCat("list ", shown, ": ", std::strerror(error)));
    });
    if (!names.ok()) return names.status();
    for (const std::string& child : *names) {
      absl::Status status = RemoveAt(fd.get(), child, absl::StrCat(shown, "/", child), depth + 1);
      if (!status.ok()) return status;
    }
    if (::unlinkat(dir_fd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
      return absl::InternalError(absl::StrCat("rmdir ", shown, ": ", std::strerror(errno)));
    }
    return absl::OkStatus();
  }
  if (::unlinkat(dir_fd, name.c_str(), 0) != 0 && errno != ENOENT) {
    return absl::InternalError(absl::StrCat("unlink ", shown, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<pid_t> Spawn(const SpawnRequest& request) {
  if (request.fds.size() > 64) return absl::InvalidArgumentError("too many fds to pass");
  std::vector<std::string> argv_storage = request.argv;
  std::vector<std::string> env_storage = request.env;
  std::vector<char*> argv, envp;
  for (std::string& arg : argv_storage) argv.push_back(arg.data());
  argv.push_back(nullptr);
  for (std::string& var : env_storage) envp.push_back(var.data());
  envp.push_back(nullptr);

  int error_pipe[2];
  if (::pipe2(error_pipe, O_CLOEXEC) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  UniqueFd error_read(error_pipe[0]);
  UniqueFd error_write(error_pipe[1]);
  UniqueFd devnull(::open("/dev/null", O_RDWR | O_CLOEXEC));
  ChildArgs args{&request, argv.data(), envp.data(), error_write.get(), devnull.get()};

  // The child shares our memory until it execs; a signal handler of ours must not run
  // on its stack, so block everything around the clone.
  std::vector<char> stack(256 * 1024);
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  pid_t pid =
      ::clone(ChildMain, stack.data() + stack.size(), CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
  int clone_errno = errno;
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  if (pid < 0) {
    return absl::ResourceExhaustedError(absl::StrCat("clone: ", std::strerror(clone_errno)));
  }
  error_write.reset();
  int child_errno = 0;
  ssize_t n = ::read(error_read.get(), &child_errno, sizeof(child_errno));
  if (n == sizeof(child_errno)) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    return absl::UnavailableError(
        absl::StrCat("cannot start ", request.path, ": ", std::strerror(child_errno)));
  }
  return pid;
}

uint64_t ProcessStartTime(pid_t pid) {
  std::optional<ProcStat> stat = ReadProcStat(pid);
  return stat ? stat->start_time : 0;
}

char ProcessState(pid_t pid) {
  std::optional<ProcStat> stat = ReadProcStat(pid);
  return stat ? stat->state : '\0';
}

bool StopPending(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  const uint64_t stop_bit = uint64_t{1} << (SIGSTOP - 1);
  while (std::getline(in, line)) {
    absl::string_view value(line);
    if (!absl::ConsumePrefix(&value, "SigPnd:") && !absl::ConsumePrefix(&value, "ShdPnd:")) {
      continue;
    }
    uint64_t mask = 0;
    if (absl::SimpleHexAtoi(absl::StripAsciiWhitespace(value), &mask) && (mask & stop_bit) != 0) {
      return true;
    }
  }
  return false;
}

bool ProcessMatches(pid_t pid, uint64_t start_time) {
  if (pid <= 0) return false;
  std::optional<ProcStat> stat = ReadProcStat(pid);
  return stat && !stat->dead() && stat->start_time != 0 && stat->start_time == start_time;
}

bool ReapIfExited(pid_t pid) {
  if (pid <= 0) return true;
  int status = 0;
  pid_t result = ::waitpid(pid, &status, WNOHANG);
  if (result == pid) return true;
  if (result == 0) return false;
  // Not our child (adopted after a restart): gone when it no longer runs.
  char state = ProcessState(pid);
  return state == '\0' || state == 'Z' || state == 'X';
}

bool WaitForExit(pid_t pid, uint64_t start_time, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (true) {
    if (!ProcessMatches(pid, start_time)) {
      ReapIfExited(pid);
      return true;
    }
    if (ReapIfExited(pid)) return true;
    if (absl::Now() >= give_up) return false;
    absl::SleepFor(absl::Milliseconds(2));
  }
}

std::string PidNamespaceOf(pid_t pid) {
  char buffer[128];
  std::string link = absl::StrCat("/proc/", pid, "/ns/pid");
  ssize_t n = ::readlink(link.c_str(), buffer, sizeof(buffer));
  return n > 0 ? std::string(buffer, static_cast<size_t>(n)) : "";
}

std::map<std::string, std::vector<pid_t>> ProcessesByPidNamespace() {
  std::map<std::string, std::vector<pid_t>> result;
  for (pid_t pid : AllPids()) {
    std::string ns = PidNamespaceOf(pid);
    if (!ns.empty()) result[ns].push_back(pid);
  }
  return result;
}

std::vector<pid_t> ProcessesInPidNamespace(pid_t init_pid) {
  std::vector<pid_t> result;
  const std::string target = PidNamespaceOf(init_pid);
  if (target.empty()) return result;
  for (pid_t pid : AllPids()) {
    if (PidNamespaceOf(pid) == target) result.push_back(pid);
  }
  return result;
}

absl::Status StopPidNamespace(pid_t init_pid) {
  // A process stops only when it next runs, which on a loaded host can take a while, and
  // one may fork between two scans: scan until all are stopped, bounded by time (not by
  // a number of passes, which a busy scheduler outlasts).
  constexpr absl::Duration kStopTimeout = absl::Seconds(10);
  const absl::Time give_up = absl::Now() + kStopTimeout;
  std::string running;  // The processes of the last scan that had not stopped.
  for (int pass = 0; pass == 0 || absl::Now() < give_up; ++pass) {
    std::vector<pid_t> pids = ProcessesInPidNamespace(init_pid);
    if (pids.empty()) return absl::NotFoundError("the sandbox's processes are gone");
    bool all_stopped = true;
    running.clear();
    for (pid_t pid : pids) {
      char state = ProcessState(pid);
      if (state == 'T' || state == 't' || state == 'Z' || state == 'X' || state == '\0') continue;
      // Blocked in the kernel with the stop pending: it stops before it runs any more of
      // its own code. (A vfork parent whose child was stopped before its exec stays here
      // until the resume: waiting for it would never end.)
      if (state == 'D' && StopPending(pid)) continue;
      ::kill(pid, SIGSTOP);
      all_stopped = false;
      absl::StrAppend(&running, running.empty() ? "" : ", ", pid, " (", std::string(1, state), ")");
    }
    if (all_stopped) return absl::OkStatus();
    absl::SleepFor(absl::Microseconds(pass < 10 ? 200 : 2000));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("the sandbox's processes did not all stop within ",
                   absl::FormatDuration(kStopTimeout), "; still running: ", running));
}

absl::Status ContinuePidNamespace(pid_t init_pid) {
  std::vector<pid_t> pids = ProcessesInPidNamespace(init_pid);
  if (pids.empty()) return absl::NotFoundError("the sandbox's processes are gone");
  for (pid_t pid : pids) ::kill(pid, SIGCONT);
  return absl::OkStatus();
}

std::vector<pid_t> ProcessesWithArgument(const std::string& needle) {
  std::vector<pid_t> result;
  for (pid_t pid : AllPids()) {
    std::ifstream in(absl::StrCat("/proc/", pid, "/cmdline"));
    std::stringstream buffer;
    buffer << in.rdbuf();
    std::string cmdline = buffer.str();
    for (absl::string_view arg : absl::StrSplit(cmdline, '\0')) {
      if (arg == needle) {
        result.push_back(pid);
        break;
      }
    }
  }
  return result;
}

absl::Status RemoveTree(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string parent = slash == 0 ? "/" : path.substr(0, slash);
  std::string name = path.substr(slash + 1);
  UniqueFd dir(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid()) return errno == ENOENT ? absl::OkStatus() : absl::InternalError(parent);
  return RemoveAt(dir.get(), name, path, 0);
}

}  // namespace parley::sandbox
