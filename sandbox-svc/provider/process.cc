// Spawning and /proc scans. The child side of Spawn() runs in a vfork-style clone that
// shares our memory, so it uses only raw system calls: glibc's setuid wrappers would
// try to signal the other threads of this (the parent's) process.
#include "sandbox-svc/provider/process.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
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
#include "sandbox-svc/util/exec_order.h"
#include "sandbox-svc/util/proc_stat.h"

namespace parley::sandbox {
namespace {

// The fd on which a PreparedChild's launcher waits for its order.
constexpr int kLaunchFd = 3;

struct ChildArgs {
  const std::vector<int>* cgroup_procs_fds;
  ExecPlan plan;
};

int ChildMain(void* raw) {
  const ChildArgs& args = *static_cast<const ChildArgs*>(raw);
  ResetSignalsForExec();
  for (int procs_fd : *args.cgroup_procs_fds) {
    if (::write(procs_fd, "0", 1) != 1) ExecFailed(args.plan.error_fd);
  }
  ExecPlanned(args.plan);
}

// Owned copies of a SpawnRequest's strings and fd numbers, and the plan pointing at them.
class PlanStorage {
 public:
  explicit PlanStorage(const SpawnRequest& request)
      : path_(request.path), argv_storage_(request.argv), env_storage_(request.env) {
    for (std::string& arg : argv_storage_) argv_.push_back(arg.data());
    argv_.push_back(nullptr);
    for (std::string& var : env_storage_) envp_.push_back(var.data());
    envp_.push_back(nullptr);
    for (const auto& [from, to] : request.fds) {
      from_.push_back(from);
      to_.push_back(to);
    }
    plan_.path = path_.c_str();
    plan_.argv = argv_.data();
    plan_.envp = envp_.data();
    plan_.fds_from = from_.data();
    plan_.fds_to = to_.data();
    plan_.fd_count = from_.size();
    plan_.output_fd = request.output_fd;
    plan_.set_uid = request.uid.has_value();
    plan_.uid = request.uid.value_or(0);
    plan_.set_gid = request.gid.has_value();
    plan_.gid = request.gid.value_or(0);
  }
  const ExecPlan& plan() const { return plan_; }

 private:
  std::string path_;
  std::vector<std::string> argv_storage_, env_storage_;
  std::vector<char*> argv_, envp_;
  std::vector<int> from_, to_;
  ExecPlan plan_;
};

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

// Reads the child's report after an exec attempt: EOF is success (the close-on-exec end
// closed), an errno is the failure, which also reaps the child.
absl::StatusOr<pid_t> ExecOutcome(pid_t pid, int error_read, const std::string& path) {
  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(error_read, &child_errno, sizeof(child_errno));
  } while (n < 0 && errno == EINTR);
  if (n == 0) return pid;
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (n != sizeof(child_errno)) {
    return absl::UnavailableError(absl::StrCat("cannot start ", path, ": the child died"));
  }
  return absl::UnavailableError(
      absl::StrCat("cannot start ", path, ": ", std::strerror(child_errno)));
}

}  // namespace

absl::StatusOr<pid_t> Spawn(const SpawnRequest& request) {
  if (request.fds.size() > kMaxExecFds) return absl::InvalidArgumentError("too many fds to pass");
  PlanStorage storage(request);
  int error_pipe[2];
  if (::pipe2(error_pipe, O_CLOEXEC) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  UniqueFd error_read(error_pipe[0]);
  UniqueFd error_write(error_pipe[1]);
  UniqueFd devnull(::open("/dev/null", O_RDWR | O_CLOEXEC));
  ChildArgs args{&request.cgroup_procs_fds, storage.plan()};
  args.plan.error_fd = error_write.get();
  args.plan.devnull_fd = devnull.get();

  // The child shares our memory until it execs (like posix_spawn); a signal handler of
  // ours must not run on its stack, so block everything around the clone.
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
  return ExecOutcome(pid, error_read.get(), request.path);
}

absl::StatusOr<PreparedChild> PreparedChild::Start(const std::string& launcher_path,
                                                   const std::vector<int>& cgroup_procs_fds) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat("socketpair: ", std::strerror(errno)));
  }
  UniqueFd ours(pair[0]);
  UniqueFd theirs(pair[1]);
  // Spawned like any program (so it shares nothing with us): the child joins the groups
  // before its exec, and Spawn returns once it has exec'd the launcher.
  SpawnRequest request;
  request.path = launcher_path;
  request.argv = {"parley-sbx-launcher", absl::StrCat("--launch_fd=", kLaunchFd)};
  request.fds = {{theirs.get(), kLaunchFd}};
  request.cgroup_procs_fds = cgroup_procs_fds;
  absl::StatusOr<pid_t> pid = Spawn(request);
  if (!pid.ok()) return pid.status();
  return PreparedChild(*pid, std::move(ours));
}

PreparedChild& PreparedChild::operator=(PreparedChild&& other) noexcept {
  if (this != &other) {
    Discard();
    pid_ = std::exchange(other.pid_, -1);
    control_ = std::move(other.control_);
  }
  return *this;
}

void PreparedChild::Discard() {
  if (pid_ <= 0) return;
  control_.reset();  // EOF: the launcher exits at once.
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

absl::StatusOr<pid_t> PreparedChild::Exec(const SpawnRequest& request) && {
  if (pid_ <= 0) return absl::FailedPreconditionError("the prepared child was used already");
  if (!request.cgroup_procs_fds.empty()) {
    return absl::InvalidArgumentError("a prepared child's groups are fixed when it starts");
  }
  ExecOrder exec_order{request.path,           request.argv, request.env, {},
                       request.output_fd >= 0, request.uid,  request.gid};
  std::vector<int> fds;
  for (const auto& [from, to] : request.fds) {
    exec_order.fds_to.push_back(to);
    fds.push_back(from);
  }
  if (request.output_fd >= 0) fds.push_back(request.output_fd);
  absl::StatusOr<std::string> encoded = EncodeExecOrder(exec_order);
  if (!encoded.ok()) return encoded.status();
  std::string& order = *encoded;

  iovec iov{order.data(), order.size()};
  alignas(cmsghdr) char control_data[CMSG_SPACE(sizeof(int) * (kMaxExecFds + 1))] = {};
  msghdr message{};
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  if (!fds.empty()) {
    message.msg_control = control_data;
    message.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&message);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t sent;
  do {
    sent = ::sendmsg(control_.get(), &message, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  const pid_t pid = std::exchange(pid_, -1);
  UniqueFd control = std::move(control_);
  if (sent < 0) {
    const int send_errno = errno;
    // A child whose joins failed reported why before it exited.
    int child_errno = 0;
    const ssize_t n = ::recv(control.get(), &child_errno, sizeof(child_errno), MSG_DONTWAIT);
    control.reset();  // A child still waiting sees EOF and exits.
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return absl::UnavailableError(
        absl::StrCat("cannot start ", request.path, ": ",
                     n == sizeof(child_errno)
                         ? std::strerror(child_errno)
                         : absl::StrCat("order not delivered: ", std::strerror(send_errno))));
  }
  return ExecOutcome(pid, control.get(), request.path);
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
