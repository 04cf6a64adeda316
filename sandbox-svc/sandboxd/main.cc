// parley-sandboxd: the daemon inside every sandbox (see sandbox-svc/README.md).
//
//   parley-sandboxd --listen_fd=3 --workspace=/workspace --rlimit_nproc=256   (local)
//   parley-sandboxd --listen=0.0.0.0:7080 --workspace=/workspace              (kubernetes)
//
// With --listen_fd the daemon accepts connections on an inherited listening socket and
// hands each to gRPC; with --listen gRPC binds the address itself. The token, when
// used, comes from PARLEY_SANDBOXD_TOKEN (never the command line) and is removed from
// the environment before anything starts. Exits 0 on SIGTERM/SIGINT, 2 on bad flags.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/server_posix.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/config.h"
#include "sandbox-svc/sandboxd/service.h"

#ifndef PARLEY_VERSION
#define PARLEY_VERSION "0.0.0"
#endif

extern char** environ;

namespace {

struct DaemonConfig {
  int64_t listen_fd = -1;
  std::string listen;
  std::string workspace = "/workspace";
  int64_t rlimit_as_bytes = 0;
  int64_t rlimit_cpu_s = 0;
  int64_t rlimit_nproc = 0;
  int64_t rlimit_nofile = 0;
  int64_t rlimit_fsize_bytes = 0;
  int64_t max_concurrent_execs = 64;
  std::string path_resolution = "auto";
};

// One JSON line on stderr; the daemon's log goes to a file the provider keeps.
void LogLine(absl::string_view level, absl::string_view message, absl::string_view extra = "") {
  std::string line = absl::StrCat("{\"level\":\"", level, "\",\"service\":\"parley-sandboxd\",",
                                  "\"msg\":\"", message, "\"", extra, "}\n");
  (void)!::write(2, line.data(), line.size());
}

std::vector<std::string> BaseEnvironment(const std::string& workspace) {
  std::vector<std::string> env;
  bool has_path = false, has_home = false, has_lang = false;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    absl::string_view kv(*entry);
    if (absl::StartsWith(kv, "PARLEY_")) continue;
    has_path |= absl::StartsWith(kv, "PATH=");
    has_home |= absl::StartsWith(kv, "HOME=");
    has_lang |= absl::StartsWith(kv, "LANG=");
    env.emplace_back(kv);
  }
  if (!has_path) env.push_back("PATH=/usr/local/bin:/usr/bin:/bin");
  if (!has_home) env.push_back(absl::StrCat("HOME=", workspace));
  if (!has_lang) env.push_back("LANG=C.UTF-8");
  return env;
}

void AcceptLoop(int listen_fd, grpc::Server* server) {
  while (true) {
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
      grpc::AddInsecureChannelFromFd(server, fd);  // Takes ownership.
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EBADF || errno == EINVAL || errno == ENOTSOCK) return;
    ::usleep(10'000);  // EMFILE and friends: back off instead of spinning.
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Not dumpable: processes of the sandbox user cannot ptrace the daemon or read its
  // memory, environment or fds through /proc.
  ::prctl(PR_SET_DUMPABLE, 0);
  ::signal(SIGPIPE, SIG_IGN);
  ::signal(SIGXFSZ, SIG_IGN);  // Oversized writes fail with EFBIG instead of killing us.
  ::signal(SIGCHLD, SIG_IGN);  // Exec supervisors are reaped by the kernel.

  std::string token;
  if (const char* value = std::getenv("PARLEY_SANDBOXD_TOKEN")) token = value;
  ::unsetenv("PARLEY_SANDBOXD_TOKEN");

  DaemonConfig config;
  parley::Flags flags("parley-sandboxd", "The daemon inside a sandbox: exec and files over gRPC.");
  flags.Int("listen_fd", &config.listen_fd, "inherited listening socket to accept on (-1: none)",
            -1, 1 << 20);
  flags.String("listen", &config.listen, "address to bind instead: host:port or unix:/path");
  flags.String("workspace", &config.workspace, "workspace root; every path is beneath it",
               parley::ValidateNonEmpty);
  flags.Int("rlimit_as_bytes", &config.rlimit_as_bytes, "RLIMIT_AS of exec'd programs (0: none)", 0,
            INT64_MAX);
  flags.Int("rlimit_cpu_s", &config.rlimit_cpu_s, "RLIMIT_CPU of exec'd programs (0: none)", 0,
            INT64_MAX);
  flags.Int("rlimit_nproc", &config.rlimit_nproc, "RLIMIT_NPROC of exec'd programs (0: none)", 0,
            INT64_MAX);
  flags.Int("rlimit_nofile", &config.rlimit_nofile, "RLIMIT_NOFILE of exec'd programs (0: keep)", 0,
            1 << 20);
  flags.Int("rlimit_fsize_bytes", &config.rlimit_fsize_bytes,
            "RLIMIT_FSIZE of exec'd programs and of the daemon's own writes (0: none)", 0,
            INT64_MAX);
  flags.Int("max_concurrent_execs", &config.max_concurrent_execs, "concurrent execs", 1, 4096);
  flags.Choice("path_resolution", &config.path_resolution,
               "how paths are resolved beneath the workspace", {"auto", "openat2", "walk"});
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());
  if ((config.listen_fd < 0) == config.listen.empty()) {
    std::fprintf(stderr, "parley-sandboxd: exactly one of --listen_fd and --listen is required\n");
    return 2;
  }

  if (config.rlimit_fsize_bytes > 0) {
    struct rlimit limit {
      static_cast<rlim_t>(config.rlimit_fsize_bytes), static_cast<rlim_t>(config.rlimit_fsize_bytes)
    };
    ::setrlimit(RLIMIT_FSIZE, &limit);
  }

  parley::sandbox::PathResolution resolution = parley::sandbox::PathResolution::kAuto;
  if (config.path_resolution == "openat2") resolution = parley::sandbox::PathResolution::kOpenat2;
  if (config.path_resolution == "walk") resolution = parley::sandbox::PathResolution::kWalk;
  auto workspace = parley::sandbox::Workspace::Open(config.workspace, resolution);
  if (!workspace.ok()) {
    LogLine("error", "cannot open the workspace",
            absl::StrCat(",\"error\":\"", workspace.status().message(), "\""));
    return 1;
  }

  parley::sandbox::SandboxdOptions options;
  options.limits.address_space_bytes = static_cast<uint64_t>(config.rlimit_as_bytes);
  options.limits.cpu_seconds = static_cast<uint64_t>(config.rlimit_cpu_s);
  options.limits.max_processes = static_cast<uint64_t>(config.rlimit_nproc);
  options.limits.max_open_files = static_cast<uint64_t>(config.rlimit_nofile);
  options.limits.max_file_size_bytes = static_cast<uint64_t>(config.rlimit_fsize_bytes);
  options.max_concurrent_execs = static_cast<int>(config.max_concurrent_execs);
  options.token = std::move(token);
  options.base_env = BaseEnvironment(config.workspace);
  options.version = PARLEY_VERSION;
  const bool uses_openat2 = (*workspace)->uses_openat2();
  parley::sandbox::SandboxdService service(std::move(options), *std::move(workspace));

  // Only the main thread takes SIGTERM/SIGINT; block them before gRPC starts threads.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  grpc::ServerBuilder builder;
  builder.RegisterService(&service);
  int port = 0;
  if (!config.listen.empty()) {
    builder.AddListeningPort(config.listen, grpc::InsecureServerCredentials(), &port);
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server ||
      (!config.listen.empty() && port == 0 && !absl::StartsWith(config.listen, "unix:"))) {
    LogLine("error", "cannot start the gRPC server",
            absl::StrCat(",\"listen\":\"", config.listen, "\""));
    return 1;
  }
  if (config.listen_fd >= 0) {
    int fd = static_cast<int>(config.listen_fd);
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);  // Never inherited by exec'd programs.
    std::thread(AcceptLoop, fd, server.get()).detach();
  }
  LogLine("info", "serving",
          absl::StrCat(",\"grpc_port\":", port, ",\"listen_fd\":", config.listen_fd,
                       ",\"openat2\":", uses_openat2 ? "true" : "false"));

  int received = 0;
  sigwait(&stop_signals, &received);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}
