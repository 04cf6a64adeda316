// Process trees for Exec. Between fork and exec only async-signal-safe system calls
// run (the daemon is multi-threaded); _Fork() is used because it skips the atfork
// handlers that could take locks held by other threads.
#include "sandbox-svc/sandboxd/exec.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/posix.h"
#include "sandbox-svc/util/proc_stat.h"

namespace parley::sandbox {
namespace {

// What the supervisor reports on the error pipe when the program never ran.
struct StartReport {
  int stage;  // 1: fork failed, 2: exec failed.
  int error;
};

absl::Status Internal(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

bool MakePipe(UniqueFd& read_end, UniqueFd& write_end) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return false;
  read_end.reset(fds[0]);
  write_end.reset(fds[1]);
  return true;
}

void SetNonBlocking(int fd) {
  if (fd >= 0) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
}

std::string LookupEnv(const std::vector<std::string>& env, absl::string_view name) {
  std::string value;
  for (const std::string& entry : env) {
    if (entry.size() > name.size() && entry[name.size()] == '=' &&
        absl::string_view(entry).substr(0, name.size()) == name) {
      value = entry.substr(name.size() + 1);
    }
  }
  return value;
}

// Resolves a program name without "/" through PATH, as execvp would. Returns the path
// or sets `exit_code`/`message` (127 not found, 126 not executable).
std::string ResolveProgram(const std::string& name, const std::vector<std::string>& env,
                           int& exit_code, std::string& message) {
  if (name.find('/') != std::string::npos) return name;
  std::string path = LookupEnv(env, "PATH");
  if (path.empty()) path = "/usr/local/bin:/usr/bin:/bin";
  bool found_not_executable = false;
  for (absl::string_view dir : absl::StrSplit(path, ':')) {
    std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", name);
    struct stat st {};
    if (::stat(candidate.c_str(), &st) != 0 || S_ISDIR(st.st_mode)) continue;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    found_not_executable = true;
  }
  exit_code = found_not_executable ? 126 : 127;
  message = absl::StrCat("parley-sandboxd: ", name, ": ",
                         found_not_executable ? "Permission denied" : "command not found", "\n");
  return "";
}

void SetLimit(int resource, uint64_t value) {
  if (value == 0) return;
  struct rlimit limit {
    value, value
  };
  ::setrlimit(resource, &limit);
}

// The program's side of the fork. Never returns.
[[noreturn]] void RunProgram(const char* path, char* const* argv, char* const* envp, int stdin_fd,
                             int stdout_fd, int stderr_fd, int cwd_fd, int report_fd,
                             const ExecLimits& limits) {
  ResetSignalsForExec();
  if (stdin_fd < 0) stdin_fd = ::open("/dev/null", O_RDONLY);
  ::dup2(stdin_fd, 0);
  ::dup2(stdout_fd, 1);
  ::dup2(stderr_fd, 2);
  if (cwd_fd >= 0) ::fchdir(cwd_fd);
  SetLimit(RLIMIT_AS, limits.address_space_bytes);
  SetLimit(RLIMIT_CPU, limits.cpu_seconds);
  SetLimit(RLIMIT_NPROC, limits.max_processes);
  SetLimit(RLIMIT_NOFILE, limits.max_open_files);
  SetLimit(RLIMIT_FSIZE, limits.max_file_size_bytes);
  // Everything else the daemon had open closes on exec; the report pipe too.
  ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
  ::execve(path, argv, envp);
  StartReport report{2, errno};
  (void)!::write(report_fd, &report, sizeof(report));
  ::_exit(report.error == ENOENT ? 127 : 126);
}

// The supervisor's side of the fork. Never returns.
[[noreturn]] void Supervise(const char* path, char* const* argv, char* const* envp, int stdin_fd,
                            int stdout_fd, int stderr_fd, int cwd_fd, int report_fd, int status_fd,
                            const ExecLimits& limits) {
  ::setpgid(0, 0);
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigaction(SIGCHLD, &dfl, nullptr);  // The daemon ignores it; we must wait.
  pid_t program = ::_Fork();
  if (program == 0) {
    RunProgram(path, argv, envp, stdin_fd, stdout_fd, stderr_fd, cwd_fd, report_fd, limits);
  }
  if (program < 0) {
    StartReport report{1, errno};
    (void)!::write(report_fd, &report, sizeof(report));
    ::_exit(1);
  }
  // Keep only the status pipe: the pipes of the program must reach EOF when it and
  // its descendants close them, and the daemon's sockets are not ours to hold.
  if (status_fd > 0) ::close_range(0, static_cast<unsigned>(status_fd) - 1, 0);
  ::close_range(static_cast<unsigned>(status_fd) + 1, ~0U, 0);
  while (true) {
    int wait_status = 0;
    pid_t pid = ::waitpid(-1, &wait_status, 0);
    if (pid == program) {
      (void)!::write(status_fd, &wait_status, sizeof(wait_status));
      ::close(status_fd);
    } else if (pid < 0 && errno != EINTR) {
      ::_exit(0);  // ECHILD: the whole tree is gone.
    }
  }
}

// Pids of every live (non-zombie) descendant of `root`, from /proc.
std::vector<pid_t> LiveDescendants(pid_t root) {
  std::multimap<pid_t, pid_t> children;
  std::map<pid_t, ProcStat> stats;
  for (pid_t pid : AllPids()) {
    std::optional<ProcStat> stat = ReadProcStat(pid);
    if (!stat) continue;
    children.emplace(stat->ppid, pid);
    stats[pid] = *stat;
  }
  std::vector<pid_t> result;
  std::vector<pid_t> frontier = {root};
  while (!frontier.empty()) {
    pid_t parent = frontier.back();
    frontier.pop_back();
    auto [begin, end] = children.equal_range(parent);
    for (auto it = begin; it != end; ++it) {
      frontier.push_back(it->second);
      if (!stats[it->second].dead()) result.push_back(it->second);
    }
  }
  return result;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ProcessTree>> ProcessTree::Start(ExecSpec spec,
                                                                const ExecLimits& limits) {
  std::unique_ptr<ProcessTree> tree(new ProcessTree());
  UniqueFd out_w, err_w, status_w, report_r, report_w, stdin_r;
  if (!MakePipe(tree->stdout_, out_w) || !MakePipe(tree->stderr_, err_w) ||
      !MakePipe(tree->status_, status_w) || !MakePipe(report_r, report_w) ||
      (spec.has_stdin && !MakePipe(stdin_r, tree->stdin_))) {
    return Internal("pipe");
  }
  SetNonBlocking(tree->stdout_.get());
  SetNonBlocking(tree->stderr_.get());
  SetNonBlocking(tree->stdin_.get());

  int exit_code = 0;
  std::string path = ResolveProgram(spec.argv[0], spec.env, exit_code, tree->startup_message_);
  if (path.empty()) {
    // Nothing to run: report the shell-style status through the same pipes.
    int wait_status = exit_code << 8;
    (void)!::write(status_w.get(), &wait_status, sizeof(wait_status));
    tree->stdin_.reset();
    return tree;
  }

  std::vector<char*> argv, envp;
  for (std::string& arg : spec.argv) argv.push_back(arg.data());
  argv.push_back(nullptr);
  for (std::string& var : spec.env) envp.push_back(var.data());
  envp.push_back(nullptr);

  pid_t supervisor = ::_Fork();
  if (supervisor == 0) {
    Supervise(path.c_str(), argv.data(), envp.data(), stdin_r.get(), out_w.get(), err_w.get(),
              spec.cwd.get(), report_w.get(), status_w.get(), limits);
  }
  if (supervisor < 0) {
    absl::Status status = absl::ResourceExhaustedError(
        absl::StrCat("cannot start a process: ", std::strerror(errno)));
    return status;
  }
  tree->supervisor_ = supervisor;
  ::setpgid(supervisor, supervisor);  // Also done by the child; whichever runs first.
  out_w.reset();
  err_w.reset();
  status_w.reset();
  report_w.reset();
  stdin_r.reset();

  // EOF on the report pipe means the program was exec'd (its copy closed on exec).
  StartReport report{};
  ssize_t n;
  do {
    n = ::read(report_r.get(), &report, sizeof(report));
  } while (n < 0 && errno == EINTR);
  if (n == sizeof(report)) {
    if (report.stage == 1) {
      tree->KillAll();
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot start a process: ", std::strerror(report.error)));
    }
    tree->startup_message_ =
        absl::StrCat("parley-sandboxd: ", spec.argv[0], ": ", std::strerror(report.error), "\n");
  }
  return tree;
}

ProcessTree::~ProcessTree() = default;

std::optional<int> ProcessTree::ReadStatus() {
  int wait_status = 0;
  ssize_t n;
  do {
    n = ::read(status_.get(), &wait_status, sizeof(wait_status));
  } while (n < 0 && errno == EINTR);
  status_.reset();
  if (n != sizeof(wait_status)) return std::nullopt;
  return wait_status;
}

void ProcessTree::KillAll() {
  if (supervisor_ <= 0 || killed_) return;
  killed_ = true;
  // Kill descendants while the supervisor lives: it is their reaper, so orphans of
  // killed processes land on it (and show up in the next scan), never on init.
  const absl::Time give_up = absl::Now() + absl::Seconds(2);
  for (int pass = 0; pass < 10000 && absl::Now() < give_up; ++pass) {
    std::vector<pid_t> live = LiveDescendants(supervisor_);
    if (live.empty()) break;
    for (pid_t pid : live) ::kill(pid, SIGKILL);
    if (pass > 0) ::usleep(500);
  }
  ::kill(supervisor_, SIGKILL);
}

}  // namespace parley::sandbox
