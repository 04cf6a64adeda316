// The local provider. Start() is on the cold-create path, so it does as little as
// possible: mkdir + chown the workspace, bind the socket, one clone+exec of bwrap, and
// one read of bwrap's --info-fd for the namespace init's pid. Readiness is the
// manager's Hello on the socket (the kernel queues the connection until the daemon
// accepts), so nothing here polls.
#include "sandbox-svc/provider/bwrap_provider.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "sandbox-svc/contract/sandbox_id.h"
#include "sandbox-svc/provider/process.h"

namespace parley::sandbox {
namespace {

constexpr const char* kSandboxHome = "/workspace";
constexpr const char* kDaemonInSandbox = "/.parley/sandboxd";
constexpr size_t kIdLength = kMaxSandboxIdLength;  // "sbx_r9999_" + 26.

// /etc entries a Debian userland needs (copied into the sandboxes' /etc snapshot);
// everything else of the host's /etc stays out.
constexpr const char* kEtcEntries[] = {"ld.so.cache",
                                       "ld.so.conf",
                                       "ld.so.conf.d",
                                       "alternatives",
                                       "ssl",
                                       "ca-certificates",
                                       "ca-certificates.conf",
                                       "nsswitch.conf",
                                       "localtime",
                                       "mime.types",
                                       "protocols",
                                       "services",
                                       "os-release",
                                       "debian_version",
                                       "bash.bashrc",
                                       "profile",
                                       "inputrc",
                                       "magic",
                                       "python3",
                                       "python3.11",
                                       "perl",
                                       "gitconfig"};
constexpr const char* kNetworkEtcEntries[] = {"resolv.conf", "hosts", "gai.conf", "host.conf"};

absl::Status MakeDir(const std::string& path, mode_t mode) {
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(absl::StrCat("mkdir ", path, ": ", std::strerror(errno)));
  }
  ::chmod(path.c_str(), mode);
  return absl::OkStatus();
}

absl::Status WriteWholeFile(const std::string& path, const std::string& content, mode_t mode) {
  std::string temp = absl::StrCat(path, ".tmp.", ::getpid());
  {
    std::ofstream out(temp, std::ios::trunc);
    out << content;
    if (!out) return absl::FailedPreconditionError(absl::StrCat("write ", temp));
  }
  ::chmod(temp.c_str(), mode);
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("rename ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

int64_t GetInt(const ProviderState& state, const std::string& key) {
  int64_t value = 0;
  return absl::SimpleAtoi(StateValue(state, key), &value) ? value : 0;
}

std::string TailOfFile(const std::string& path, size_t max_bytes = 2000) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  if (text.size() > max_bytes) text = "…" + text.substr(text.size() - max_bytes);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

// Reads bwrap's --info-fd JSON until EOF or the deadline; returns "child-pid".
absl::StatusOr<pid_t> ReadChildPid(int fd, absl::Time deadline) {
  std::string text;
  char buffer[1024];
  while (true) {
    int64_t wait_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (wait_ms <= 0) return absl::DeadlineExceededError("bwrap did not report its child");
    pollfd pfd{fd, POLLIN, 0};
    int ready = ::poll(&pfd, 1, static_cast<int>(wait_ms));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buffer, static_cast<size_t>(n));
    if (text.find('}') != std::string::npos) break;
  }
  size_t key = text.find("\"child-pid\"");
  if (key == std::string::npos) return absl::UnavailableError("bwrap exited before starting");
  size_t colon = text.find(':', key);
  size_t end = text.find_first_of(",}", colon);
  int pid = 0;
  if (colon == std::string::npos || end == std::string::npos ||
      !absl::SimpleAtoi(absl::StripAsciiWhitespace(text.substr(colon + 1, end - colon - 1)),
                        &pid)) {
    return absl::UnavailableError(absl::StrCat("unreadable bwrap info: ", text));
  }
  return pid;
}

// Copies a file, symlink or directory tree from the host's /etc into the sandboxes' /etc
// snapshot, skipping whatever is not world-readable (e.g. /etc/ssl/private): a sandbox
// sees only configuration any host user could read. Files are replaced by rename, so
// running sandboxes (which bind the directory) see either the old or the new file.
void CopyWorldReadable(const std::string& from, const std::string& to, int depth) {
  struct stat st {};
  if (depth > 16 || ::lstat(from.c_str(), &st) != 0) return;
  if (S_ISLNK(st.st_mode)) {
    char target[4096];
    ssize_t n = ::readlink(from.c_str(), target, sizeof(target) - 1);
    if (n <= 0) return;
    std::string temp = absl::StrCat(to, ".tmp.", ::getpid());
    ::unlink(temp.c_str());
    if (::symlink(std::string(target, static_cast<size_t>(n)).c_str(), temp.c_str()) == 0) {
      ::rename(temp.c_str(), to.c_str());
    }
    return;
  }
  if (S_ISDIR(st.st_mode)) {
    if ((st.st_mode & (S_IROTH | S_IXOTH)) != (S_IROTH | S_IXOTH)) return;
    ::mkdir(to.c_str(), 0755);
    DIR* dir = ::opendir(from.c_str());
    if (dir == nullptr) return;
    std::vector<std::string> names;
    while (struct dirent* entry = ::readdir(dir)) {
      std::string name = entry->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(dir);
    for (const std::string& name : names) {
      CopyWorldReadable(from + "/" + name, to + "/" + name, depth + 1);
    }
    return;
  }
  if (!S_ISREG(st.st_mode) || !(st.st_mode & S_IROTH)) return;
  std::ifstream in(from, std::ios::binary);
  std::string temp = absl::StrCat(to, ".tmp.", ::getpid());
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    out << in.rdbuf();
  }
  ::chmod(temp.c_str(), (st.st_mode & 0111) ? 0755 : 0644);
  ::rename(temp.c_str(), to.c_str());
}

// argv[0] of a sandbox's bwrap processes.
std::string ProcessMarker(const std::string& id) { return absl::StrCat("parley-sbx:", id); }

bool SameFile(const std::string& a, const std::string& b) {
  struct stat sa {
  }, sb{};
  if (::stat(a.c_str(), &sa) != 0 || ::stat(b.c_str(), &sb) != 0) return false;
  return sa.st_size == sb.st_size && sa.st_mtim.tv_sec == sb.st_mtim.tv_sec &&
         sa.st_mtim.tv_nsec == sb.st_mtim.tv_nsec;
}

// The sandbox's group name. Records written before groups were named by id alone hold
// the group's full cgroup2 path; its last component is the same name.
std::string CgroupName(const ProviderState& state) {
  std::string group = StateValue(state, "cgroup");
  size_t slash = group.rfind('/');
  return slash == std::string::npos ? group : group.substr(slash + 1);
}

}  // namespace

BwrapProvider::BwrapProvider(BwrapOptions options) : options_(std::move(options)) {}

std::string BwrapProvider::WorkspacePath(const std::string& id) const {
  return absl::StrCat(options_.state_dir, "/workspaces/", id);
}
std::string BwrapProvider::SocketPath(const std::string& id) const {
  return absl::StrCat(options_.state_dir, "/run/", id, ".sock");
}
std::string BwrapProvider::LogPath(const std::string& id) const {
  return absl::StrCat(options_.state_dir, "/logs/", id, ".log");
}

absl::Status BwrapProvider::Init() {
  const std::string& dir = options_.state_dir;
  if (dir.empty() || dir.front() != '/') {
    return absl::FailedPreconditionError(
        absl::StrCat("state dir must be an absolute path, got \"", dir, "\""));
  }
  const size_t socket_length = dir.size() + std::strlen("/run/") + kIdLength + std::strlen(".sock");
  if (socket_length >= sizeof(sockaddr_un::sun_path)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "state dir \"", dir, "\" is too long: sandbox sockets under it would need ", socket_length,
        " bytes, Unix sockets allow ", sizeof(sockaddr_un::sun_path) - 1, " (use at most ",
        sizeof(sockaddr_un::sun_path) - 1 - (socket_length - dir.size()), " bytes)"));
  }
  if (::access(options_.bwrap_path.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "bubblewrap not found at ", options_.bwrap_path, " (install the bubblewrap package)"));
  }
  as_root_ = ::geteuid() == 0 && options_.uid_base > 0;
  // The sandbox uids must traverse the state dir to reach their workspace, the daemon
  // and etc/, but not list it.
  for (const auto& [sub, mode] : std::vector<std::pair<std::string, mode_t>>{{"", 0711},
                                                                             {"/workspaces", 0711},
                                                                             {"/run", 0700},
                                                                             {"/logs", 0700},
                                                                             {"/etc", 0755},
                                                                             {"/bin", 0755}}) {
    if (absl::Status s = MakeDir(dir + sub, mode); !s.ok()) return s;
  }
  if (absl::Status s = InstallDaemon(); !s.ok()) return s;
  if (absl::Status s =
          WriteWholeFile(dir + "/etc/passwd",
                         "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
                         "sandbox:x:1000:1000:sandbox:/workspace:/bin/sh\n"
                         "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
                         0644);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = WriteWholeFile(dir + "/etc/group",
                                      "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n", 0644);
      !s.ok()) {
    return s;
  }
  for (const char* entry : kEtcEntries) {
    CopyWorldReadable(absl::StrCat("/etc/", entry), absl::StrCat(dir, "/etc/", entry), 0);
  }
  // Resolver files exist in the snapshot (a copy, or empty) so that templates with
  // network can bind the live ones over them: bwrap cannot create a mount point
  // inside the read-only /etc.
  for (const char* entry : kNetworkEtcEntries) {
    std::string target = absl::StrCat(dir, "/etc/", entry);
    CopyWorldReadable(absl::StrCat("/etc/", entry), target, 0);
    if (::access(target.c_str(), F_OK) != 0) std::ofstream(target).flush();
  }
  cgroups_ =
      DetectCgroups(options_.use_cgroups,
                    absl::StrFormat("%08x", static_cast<uint32_t>(std::hash<std::string>{}(dir))),
                    &cgroup_report_);
  return absl::OkStatus();
}

absl::Status BwrapProvider::InstallDaemon() {
  daemon_copy_ = options_.state_dir + "/bin/parley-sandboxd";
  if (::access(options_.sandboxd_path.c_str(), R_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "parley-sandboxd not found at \"", options_.sandboxd_path, "\" (set --sandboxd_path)"));
  }
  if (SameFile(options_.sandboxd_path, daemon_copy_)) return absl::OkStatus();
  // A private copy: readable by the sandbox uids whatever the build tree's permissions,
  // and immune to rebuilds while sandboxes run. Replaced by rename, never rewritten in
  // place, since running daemons map the old file.
  std::string temp = absl::StrCat(daemon_copy_, ".tmp.", ::getpid());
  {
    std::ifstream in(options_.sandboxd_path, std::ios::binary);
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    out << in.rdbuf();
    if (!in || !out) return absl::FailedPreconditionError("copy parley-sandboxd failed");
  }
  struct stat source {};
  ::stat(options_.sandboxd_path.c_str(), &source);
  ::chmod(temp.c_str(), 0755);
  struct timespec times[2] = {source.st_atim, source.st_mtim};
  ::utimensat(AT_FDCWD, temp.c_str(), times, 0);
  if (::rename(temp.c_str(), daemon_copy_.c_str()) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("install ", daemon_copy_, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

std::string BwrapProvider::Diagnostics(const ProviderState& state) {
  std::string log = StateValue(state, "log");
  return log.empty() ? "" : absl::StrCat("sandbox log: ", TailOfFile(log));
}

std::string BwrapProvider::Capabilities() const {
  return absl::StrCat(
      "local: ", options_.bwrap_path, "; sandbox host uids: ",
      as_root_ ? absl::StrCat(options_.uid_base, "+") : absl::StrCat(::geteuid(), " (ours)"), "; ",
      cgroup_report_, "; pause: ",
      cgroups_ != nullptr && cgroups_->CanFreeze() && options_.pause_mechanism != "signal"
          ? "cgroup freezer"
          : "SIGSTOP of the pid namespace");
}

std::string BwrapProvider::CgroupMode() const {
  return cgroups_ != nullptr ? cgroups_->LimitsMode() : kCgroupModeNone;
}

absl::StatusOr<uid_t> BwrapProvider::AllocateUid() {
  absl::MutexLock lock(&mu_);
  for (uint32_t i = 0; i < options_.uid_count; ++i) {
    uid_t uid = options_.uid_base + i;
    if (uids_in_use_.insert(uid).second) return uid;
  }
  return absl::ResourceExhaustedError("no free sandbox uid (raise --sandbox_uid_count)");
}

void BwrapProvider::ReleaseUid(const ProviderState& state) {
  int64_t uid = GetInt(state, "uid");
  if (uid <= 0) return;
  absl::MutexLock lock(&mu_);
  uids_in_use_.erase(static_cast<uid_t>(uid));
}

absl::StatusOr<ProviderState> BwrapProvider::Plan(const SandboxSpec& spec) {
  ProviderState state;
  state["id"] = spec.id;
  state["workspace"] = WorkspacePath(spec.id);
  state["socket"] = SocketPath(spec.id);
  state["log"] = LogPath(spec.id);
  if (as_root_) {
    absl::StatusOr<uid_t> uid = AllocateUid();
    if (!uid.ok()) return uid.status();
    state["uid"] = absl::StrCat(*uid);
  }
  if (cgroups_ != nullptr) state["cgroup"] = spec.id;
  return state;
}

std::vector<std::string> BwrapProvider::BwrapArgv(const SandboxSpec& spec,
                                                  const ProviderState& state) const {
  const auto& limits = spec.limits;
  std::vector<std::string> argv = {options_.bwrap_path, "--unshare-user", "--unshare-pid",
                                   "--unshare-ipc",     "--unshare-uts",  "--unshare-cgroup-try"};
  if (!limits.network()) argv.push_back("--unshare-net");
  for (const char* arg :
       {"--new-session", "--uid", "1000", "--gid", "1000", "--hostname", "sandbox", "--clearenv"}) {
    argv.push_back(arg);
  }
  std::map<std::string, std::string> env = {{"PATH", "/usr/local/bin:/usr/bin:/bin"},
                                            {"HOME", kSandboxHome},
                                            {"LANG", "C.UTF-8"},
                                            {"USER", "sandbox"},
                                            {"LOGNAME", "sandbox"},
                                            {"SHELL", "/bin/sh"},
                                            {"TMPDIR", "/tmp"}};
  for (const auto& [name, value] : spec.env) env[name] = value;
  for (const auto& [name, value] : env) {
    argv.insert(argv.end(), {"--setenv", name, value});
  }
  argv.insert(argv.end(), {"--ro-bind", "/usr", "/usr"});
  // Merged-/usr hosts have /bin -> usr/bin etc.; mirror whatever the host has.
  for (const char* top : {"bin", "sbin", "lib", "lib32", "lib64", "libx32"}) {
    std::string host_path = absl::StrCat("/", top);
    char target[256];
    ssize_t n = ::readlink(host_path.c_str(), target, sizeof(target) - 1);
    if (n > 0) {
      argv.insert(argv.end(),
                  {"--symlink", std::string(target, static_cast<size_t>(n)), host_path});
    } else if (::access(host_path.c_str(), F_OK) == 0) {
      argv.insert(argv.end(), {"--ro-bind", host_path, host_path});
    }
  }
  // One read-only bind for all of /etc: a snapshot of the entries a userland needs plus
  // the sandbox's passwd and group (see Init). A bind per file costs a mount each.
  argv.insert(argv.end(), {"--ro-bind", options_.state_dir + "/etc", "/etc"});
  if (limits.network()) {
    // Resolver configuration changes under a running host; bind the live files.
    for (const char* entry : kNetworkEtcEntries) {
      std::string path = absl::StrCat("/etc/", entry);
      argv.insert(argv.end(), {"--ro-bind-try", path, path});
    }
  }
  argv.insert(argv.end(), {"--proc", "/proc", "--dev", "/dev"});
  argv.insert(argv.end(), {"--size", absl::StrCat(spec.local.tmp_size_bytes), "--tmpfs", "/tmp",
                           "--dir", "/var", "--symlink", "../tmp", "/var/tmp"});
  argv.insert(argv.end(), {"--bind", StateValue(state, "workspace"), kSandboxHome});
  argv.insert(argv.end(), {"--ro-bind", daemon_copy_, kDaemonInSandbox});
  argv.insert(argv.end(),
              {"--remount-ro", "/", "--chdir", kSandboxHome, "--info-fd", "4", "--",
               kDaemonInSandbox, "--listen_fd=3", absl::StrCat("--workspace=", kSandboxHome)});
  for (std::string& flag : SandboxdLimitFlags(limits)) argv.push_back(std::move(flag));
  return argv;
}

absl::StatusOr<DaemonEndpoint> BwrapProvider::Start(const SandboxSpec& spec, ProviderState& state,
                                                    const RecordFn& record) {
  const std::string workspace = StateValue(state, "workspace");
  const std::string socket_path = StateValue(state, "socket");
  const int64_t uid = GetInt(state, "uid");
  if (::mkdir(workspace.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::UnavailableError(absl::StrCat("mkdir ", workspace, ": ", std::strerror(errno)));
  }
  if (uid > 0 &&
      ::chown(workspace.c_str(), static_cast<uid_t>(uid), static_cast<gid_t>(uid)) != 0) {
    return absl::UnavailableError(absl::StrCat("chown ", workspace, ": ", std::strerror(errno)));
  }

  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, socket_path.c_str(), sizeof(address.sun_path) - 1);
  ::unlink(socket_path.c_str());
  if (!listener.valid() ||
      ::bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      ::listen(listener.get(), 64) != 0) {
    return absl::UnavailableError(
        absl::StrCat("listen on ", socket_path, ": ", std::strerror(errno)));
  }

  std::vector<UniqueFd> cgroup_procs;
  if (std::string group = CgroupName(state); !group.empty() && cgroups_ != nullptr) {
    if (absl::Status s = cgroups_->Create(group, spec.limits, spec.local.cpu_percent); !s.ok()) {
      return s;
    }
    absl::StatusOr<std::vector<UniqueFd>> procs = cgroups_->OpenProcs(group);
    if (!procs.ok()) return procs.status();
    cgroup_procs = *std::move(procs);
  }

  const std::string log_path = StateValue(state, "log");
  UniqueFd log(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  int info_pipe[2];
  if (::pipe2(info_pipe, O_CLOEXEC) != 0) return absl::UnavailableError("pipe failed");
  UniqueFd info_read(info_pipe[0]);
  UniqueFd info_write(info_pipe[1]);

  // The arguments go through --args (a memfd), so the namespace init's command line,
  // which the sandbox can read as /proc/1/cmdline, shows no host paths. argv[0] names
  // the sandbox, which is how an unrecorded bwrap is found after a crash.
  std::vector<std::string> argv = BwrapArgv(spec, state);
  UniqueFd args(::memfd_create("bwrap-args", MFD_CLOEXEC));
  // bwrap reads options from --args but wants the command on its real command line.
  auto separator = std::find(argv.begin(), argv.end(), "--");
  std::string packed;
  for (auto it = argv.begin() + 1; it != separator; ++it) packed.append(*it).push_back('\0');
  if (!args.valid() ||
      ::write(args.get(), packed.data(), packed.size()) != static_cast<ssize_t>(packed.size()) ||
      ::lseek(args.get(), 0, SEEK_SET) != 0) {
    return absl::UnavailableError(absl::StrCat("bwrap arguments: ", std::strerror(errno)));
  }
  SpawnRequest request;
  request.path = options_.bwrap_path;
  request.argv = {ProcessMarker(spec.id), "--args", "5"};
  request.argv.insert(request.argv.end(), separator, argv.end());
  request.env = {"PATH=/usr/bin:/bin"};
  request.fds = {{listener.get(), 3}, {info_write.get(), 4}, {args.get(), 5}};
  request.output_fd = log.get();
  for (const UniqueFd& procs : cgroup_procs) request.cgroup_procs_fds.push_back(procs.get());
  if (uid > 0) {
    request.uid = static_cast<uid_t>(uid);
    request.gid = static_cast<gid_t>(uid);
  }
  absl::StatusOr<pid_t> bwrap = Spawn(request);
  if (!bwrap.ok()) return bwrap.status();
  info_write.reset();
  listener.reset();  // The daemon holds the listening socket now.
  const uint64_t bwrap_start = ProcessStartTime(*bwrap);
  state["bwrap_pid"] = absl::StrCat(*bwrap);
  state["bwrap_start"] = absl::StrCat(bwrap_start);

  absl::StatusOr<pid_t> init = ReadChildPid(info_read.get(), absl::Now() + options_.start_timeout);
  if (!init.ok()) {
    if (record) (void)record(state);
    WaitForExit(*bwrap, bwrap_start, absl::Milliseconds(500));
    return absl::UnavailableError(
        absl::StrCat("bubblewrap failed to start the sandbox: ", init.status().message(),
                     "; log: ", TailOfFile(log_path)));
  }
  state["init_pid"] = absl::StrCat(*init);
  state["init_start"] = absl::StrCat(ProcessStartTime(*init));
  if (record) {
    if (absl::Status s = record(state); !s.ok()) return s;
  }
  return DaemonEndpoint{absl::StrCat("unix:", socket_path), ""};
}

absl::StatusOr<DaemonEndpoint> BwrapProvider::Endpoint(const ProviderState& state) {
  std::string socket_path = StateValue(state, "socket");
  if (socket_path.empty()) return absl::FailedPreconditionError("sandbox has no socket");
  return DaemonEndpoint{absl::StrCat("unix:", socket_path), ""};
}

void BwrapProvider::Adopt(const ProviderState& state) {
  int64_t uid = GetInt(state, "uid");
  if (uid <= 0) return;
  absl::MutexLock lock(&mu_);
  uids_in_use_.insert(static_cast<uid_t>(uid));
}

bool BwrapProvider::Alive(const ProviderState& state) {
  pid_t bwrap = static_cast<pid_t>(GetInt(state, "bwrap_pid"));
  if (bwrap > 0) ReapIfExited(bwrap);  // Our child's zombie, when it died.
  pid_t init = static_cast<pid_t>(GetInt(state, "init_pid"));
  return init > 0 && ProcessMatches(init, static_cast<uint64_t>(GetInt(state, "init_start")));
}

absl::Status BwrapProvider::Pause(const SandboxSpec& spec, ProviderState& state) {
  if (!Alive(state)) return absl::FailedPreconditionError("the sandbox's processes are gone");
  std::string group = CgroupName(state);
  if (!group.empty() && cgroups_ != nullptr && cgroups_->CanFreeze() &&
      options_.pause_mechanism != "signal") {
    if (absl::Status s = cgroups_->Freeze(group, true); !s.ok()) {
      // A failed pause leaves the sandbox running, not half frozen under a READY state.
      (void)cgroups_->Freeze(group, false);
      return s;
    }
    state["paused_by"] = "cgroup";
    return absl::OkStatus();
  }
  if (absl::Status s = StopPidNamespace(static_cast<pid_t>(GetInt(state, "init_pid"))); !s.ok()) {
    (void)ContinuePidNamespace(static_cast<pid_t>(GetInt(state, "init_pid")));
    return s;
  }
  state["paused_by"] = "signal";
  return absl::OkStatus();
}

absl::StatusOr<DaemonEndpoint> BwrapProvider::Resume(const SandboxSpec& spec, ProviderState& state,
                                                     const RecordFn& record, bool* restarted) {
  *restarted = false;
  if (!Alive(state)) {
    // The processes are gone (the host rebooted): start afresh over the kept workspace.
    ProviderState fresh = state;
    fresh.erase("paused_by");
    for (const char* key : {"bwrap_pid", "bwrap_start", "init_pid", "init_start"}) {
      fresh.erase(key);
    }
    if (std::string group = CgroupName(state); !group.empty() && cgroups_ != nullptr) {
      cgroups_->Remove(group);
    }
    state = fresh;
    *restarted = true;
    return Start(spec, state, record);
  }
  std::string mechanism = StateValue(state, "paused_by");
  if (mechanism == "cgroup") {
    if (cgroups_ == nullptr) return absl::FailedPreconditionError("paused by a cgroup, now off");
    if (absl::Status s = cgroups_->Freeze(CgroupName(state), false); !s.ok()) return s;
  } else if (mechanism == "signal") {
    if (absl::Status s = ContinuePidNamespace(static_cast<pid_t>(GetInt(state, "init_pid")));
        !s.ok()) {
      return s;
    }
  }
  state.erase("paused_by");
  return Endpoint(state);
}

absl::Status BwrapProvider::Destroy(const ProviderState& state) {
  // Groups only matter when this run of the provider has cgroups at all.
  const std::string group = cgroups_ != nullptr ? CgroupName(state) : "";
  const std::string workspace = StateValue(state, "workspace");
  const pid_t bwrap = static_cast<pid_t>(GetInt(state, "bwrap_pid"));
  const uint64_t bwrap_start = static_cast<uint64_t>(GetInt(state, "bwrap_start"));
  const pid_t init = static_cast<pid_t>(GetInt(state, "init_pid"));
  const uint64_t init_start = static_cast<uint64_t>(GetInt(state, "init_start"));

  // The kernel kills every process of a pid namespace whose init dies, stopped or
  // frozen ones included. Killing the init first lets the outer bwrap reap it and
  // exit by itself, so no zombie is left for the host's init to collect.
  if (ProcessMatches(init, init_start)) ::kill(init, SIGKILL);
  // A task frozen by the v1 freezer dies only once thawed (v2 lets SIGKILL through).
  if (!group.empty() && StateValue(state, "paused_by") == "cgroup") {
    (void)cgroups_->Freeze(group, false);
  }
  if (bwrap > 0 && !WaitForExit(bwrap, bwrap_start, absl::Seconds(2))) {
    ::kill(bwrap, SIGKILL);
    if (!WaitForExit(bwrap, bwrap_start, absl::Seconds(5))) {
      return absl::UnavailableError(absl::StrCat("bwrap ", bwrap, " did not exit after SIGKILL"));
    }
  }
  if (bwrap <= 0 && !StateValue(state, "id").empty()) {
    // A crash between spawning bwrap and recording its pid: find it by its argv[0],
    // which names this sandbox (outer bwrap and namespace init alike).
    for (pid_t pid : ProcessesWithArgument(ProcessMarker(StateValue(state, "id"))))
      ::kill(pid, SIGKILL);
  }
  if (!group.empty()) (void)cgroups_->Kill(group);  // Anything that is somehow left.
  if (init > 0 && !WaitForExit(init, init_start, absl::Seconds(5))) {
    return absl::UnavailableError(absl::StrCat("sandbox init ", init, " did not exit"));
  }
  if (!group.empty()) cgroups_->Remove(group);
  if (std::string socket_path = StateValue(state, "socket"); !socket_path.empty()) {
    ::unlink(socket_path.c_str());
  }
  if (!workspace.empty()) {
    if (absl::Status s = RemoveTree(workspace); !s.ok()) return s;
  }
  if (std::string log = StateValue(state, "log"); !log.empty()) ::unlink(log.c_str());
  ReleaseUid(state);
  return absl::OkStatus();
}

void BwrapProvider::ReleaseCgroupParent() {
  if (cgroups_ != nullptr) cgroups_->ReleaseParent();
}

void BwrapProvider::CollectGarbage(const std::set<std::string>& known_ids) {
  auto sweep =
      [&](const std::string& dir, const std::string& suffix,
          const std::function<void(const std::string& id, const std::string& path)>& drop) {
        DIR* handle = ::opendir(dir.c_str());
        if (handle == nullptr) return;
        std::vector<std::string> names;
        while (struct dirent* entry = ::readdir(handle)) names.emplace_back(entry->d_name);
        ::closedir(handle);
        for (const std::string& name : names) {
          if (name.size() <= suffix.size() || name.compare(0, 4, "sbx_") != 0) continue;
          if (name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
          std::string id = name.substr(0, name.size() - suffix.size());
          if (!known_ids.count(id)) drop(id, dir + "/" + name);
        }
      };
  sweep(options_.state_dir + "/workspaces", "", [](const std::string& id, const std::string& path) {
    for (pid_t pid : ProcessesWithArgument(ProcessMarker(id))) ::kill(pid, SIGKILL);
    (void)RemoveTree(path);
  });
  sweep(options_.state_dir + "/run", ".sock",
        [](const std::string&, const std::string& path) { ::unlink(path.c_str()); });
  sweep(options_.state_dir + "/logs", ".log",
        [](const std::string&, const std::string& path) { ::unlink(path.c_str()); });
  if (cgroups_ == nullptr) return;
  for (const std::string& id : cgroups_->ListGroups()) {
    if (known_ids.count(id)) continue;
    (void)cgroups_->Kill(id);
    cgroups_->Remove(id);
  }
}

}  // namespace parley::sandbox
