// Isolation, each property proven from inside a real bubblewrap sandbox through the
// SandboxManager API: host files, other sandboxes, host processes, network, fork bombs,
// memory and file-size limits, exec timeouts, and file-API traversal. Where a test
// could pass for the wrong reason, a control in the same test shows the probe works.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "tests/sandbox/sandbox_stack.h"

namespace parley::testing {
namespace {

constexpr char kTenant[] = "tenant-sec";

constexpr char kTemplates[] = R"({
  "default_template": "locked",
  "templates": [
    {"name": "locked", "limits": {"memory_bytes": 268435456, "max_processes": 64,
                                  "max_open_files": 256, "max_file_size_bytes": 1048576,
                                  "network": false}},
    {"name": "networked", "limits": {"network": true}}
  ]})";

class Security : public ::testing::Test {
 protected:
  Security() {
    StackOptions options;
    options.templates_json = kTemplates;
    options.manager = ManualManagerOptions();
    stack_ = std::make_unique<SandboxStack>(options);
    sandbox_ = stack_->Create(kTenant);
  }

  ExecResult Run(const std::string& script, uint64_t timeout_ms = 0) {
    return stack_->Exec(kTenant, sandbox_.id(), {"sh", "-c", script}, timeout_ms);
  }

  std::unique_ptr<SandboxStack> stack_;
  sv1::Sandbox sandbox_;
};

TEST_F(Security, HostFilesOutsideTheBindsAreInvisible) {
  const std::string secret_dir = TestTempDir();
  const std::string secret = secret_dir + "/host-secret.txt";
  std::ofstream(secret) << "host secret";
  ::chmod(secret_dir.c_str(), 0755);
  ::chmod(secret.c_str(), 0644);  // Readable by anyone on the host: only the mount hides it.
  ExecResult result = Run(absl::StrCat("cat ", secret));
  EXPECT_NE(result.exit.exit_code(), 0);
  EXPECT_EQ(result.stdout_text.find("host secret"), std::string::npos);
  // The root holds only what the sandbox was given; /etc has no host accounts.
  const std::set<std::string> allowed = {"bin",   "dev",    "etc",      "lib",  "lib32",
                                         "lib64", "libx32", "proc",     "sbin", "tmp",
                                         "usr",   "var",    "workspace"};
  for (absl::string_view entry :
       absl::StrSplit(stack_->Shell(kTenant, sandbox_.id(), "ls -A /"), '\n', absl::SkipEmpty())) {
    if (entry == ".parley") continue;  // The daemon binary, read-only.
    EXPECT_TRUE(allowed.count(std::string(entry))) << "unexpected /" << entry;
  }
  for (const char* path :
       {"/root", "/home", "/etc/shadow", "/etc/ssl/private", "/var/lib", "/work", "/run"}) {
    EXPECT_NE(Run(absl::StrCat("test -e ", path)).exit.exit_code(), 0) << path << " is visible";
  }
  EXPECT_EQ(stack_->Shell(kTenant, sandbox_.id(), "cut -d: -f1 /etc/passwd | tr '\\n' ' '"),
            "root sandbox nobody ");
  // System directories are read-only.
  EXPECT_NE(Run("touch /usr/evil").exit.exit_code(), 0);
  EXPECT_NE(Run("touch /evil").exit.exit_code(), 0);
  EXPECT_EQ(Run("touch /workspace/fine && touch /tmp/fine").exit.exit_code(), 0);
}

TEST_F(Security, AnotherSandboxsWorkspaceIsUnreachable) {
  sv1::Sandbox other = stack_->Create(kTenant);
  stack_->Shell(kTenant, other.id(), "echo other-secret > secret.txt");
  const std::string other_workspace = stack_->StateOf(other.id())["workspace"];
  ASSERT_FALSE(other_workspace.empty());
  // Not by its host path, not by walking the sandbox's own tree.
  ExecResult by_path = Run(absl::StrCat("cat ", other_workspace, "/secret.txt"));
  EXPECT_NE(by_path.exit.exit_code(), 0);
  ExecResult search = Run("grep -rsl other-secret /workspace /tmp /var /etc /dev; true");
  ASSERT_TRUE(search.has_exit);
  EXPECT_FALSE(search.exit.timed_out());
  EXPECT_EQ(search.stdout_text, "");
  // Not through the file API either.
  std::string content;
  grpc::Status traversal = stack_->ReadFile(
      kTenant, sandbox_.id(), absl::StrCat("../", other.id(), "/secret.txt"), &content);
  EXPECT_EQ(traversal.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Control: the secret is really there for its owner.
  EXPECT_EQ(stack_->Shell(kTenant, other.id(), "cat secret.txt"), "other-secret\n");
}

TEST_F(Security, HostProcessesAreInvisible) {
  std::string listing = stack_->Shell(kTenant, sandbox_.id(), "ls /proc | grep -E '^[0-9]+$'");
  std::vector<std::string> pids = absl::StrSplit(listing, '\n', absl::SkipEmpty());
  EXPECT_LE(pids.size(), 8u) << listing;  // init, the daemon, the exec tree: nothing else.
  for (const std::string& pid : pids) {
    int value = 0;
    ASSERT_TRUE(absl::SimpleAtoi(pid, &value));
    EXPECT_LT(value, 100) << "a host-sized pid is visible";
  }
  const std::string own = absl::StrCat(::getpid());
  EXPECT_NE(Run(absl::StrCat("kill -0 ", own)).exit.exit_code(), 0);
  std::string cmdlines =
      stack_->Shell(kTenant, sandbox_.id(), "cat /proc/[0-9]*/cmdline | tr '\\0' ' '");
  EXPECT_EQ(cmdlines.find("sandbox_security_test"), std::string::npos) << cmdlines;
  // Not even the sandbox's own init reveals host paths on its command line.
  EXPECT_EQ(cmdlines.find(stack_->state_dir()), std::string::npos) << cmdlines;
}

// Listens on 127.0.0.1 of the host; reports whether anything connected.
class HostListener {
 public:
  HostListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address));
    ::listen(fd_, 8);
    socklen_t length = sizeof(address);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
  }
  ~HostListener() { ::close(fd_); }
  int port() const { return port_; }
  bool SomeoneConnected() {
    pollfd pfd{fd_, POLLIN, 0};
    return ::poll(&pfd, 1, 0) > 0;
  }

 private:
  int fd_;
  int port_;
};

TEST_F(Security, NoNetworkUnlessTheTemplateAllowsIt) {
  HostListener listener;
  const std::string probe =
      absl::StrCat("exec 3<>/dev/tcp/127.0.0.1/", listener.port(), " && echo connected");
  ExecResult blocked = stack_->Exec(kTenant, sandbox_.id(), {"bash", "-c", probe});
  ASSERT_TRUE(blocked.has_exit) << GrpcStatusText(blocked.status);
  EXPECT_NE(blocked.exit.exit_code(), 0);
  EXPECT_EQ(blocked.stdout_text, "");
  EXPECT_FALSE(listener.SomeoneConnected());
  std::string interfaces = stack_->Shell(kTenant, sandbox_.id(), "cat /proc/net/dev | tail -n +3");
  EXPECT_EQ(interfaces.find("eth"), std::string::npos) << interfaces;

  // Control: the same probe from a sandbox whose template allows network connects.
  sv1::Sandbox open = stack_->Create(kTenant, "networked");
  ExecResult allowed = stack_->Exec(kTenant, open.id(), {"bash", "-c", probe});
  EXPECT_EQ(allowed.exit.exit_code(), 0) << allowed.stderr_text;
  EXPECT_EQ(allowed.stdout_text, "connected\n");
  EXPECT_TRUE(listener.SomeoneConnected());
}

TEST_F(Security, AForkBombIsContainedAndTheSandboxSurvives) {
  ExecResult limit = stack_->Exec(kTenant, sandbox_.id(), {"bash", "-c", "ulimit -u"});
  EXPECT_EQ(limit.stdout_text, "64\n");  // The template's max_processes.
  ExecResult bomb =
      stack_->Exec(kTenant, sandbox_.id(), {"bash", "-c", "b() { b | b & }; b; wait"}, 3000);
  ASSERT_TRUE(bomb.status.ok()) << GrpcStatusText(bomb.status);
  ASSERT_TRUE(bomb.has_exit);
  // The sandbox answers afterwards, and nothing of the bomb is left.
  EXPECT_EQ(stack_->Shell(kTenant, sandbox_.id(), "echo alive"), "alive\n");
  std::string left = stack_->Shell(kTenant, sandbox_.id(), "ls /proc | grep -cE '^[0-9]+$'");
  int count = 0;
  ASSERT_TRUE(absl::SimpleAtoi(absl::StripAsciiWhitespace(left), &count));
  EXPECT_LE(count, 8) << "bomb processes survived";
  // The host is fine too (this test process can still start processes).
  EXPECT_EQ(Run("true").exit.exit_code(), 0);
}

TEST_F(Security, AMemoryHogIsStoppedByItsLimit) {
  ExecResult hog = Run("python3 -c 'b = bytearray(512 << 20); print(len(b))'");
  ASSERT_TRUE(hog.has_exit) << GrpcStatusText(hog.status);
  EXPECT_NE(hog.exit.exit_code(), 0);
  EXPECT_NE(hog.stderr_text.find("MemoryError"), std::string::npos) << hog.stderr_text;
  // Control: an allocation under the limit works, and the sandbox is still there.
  EXPECT_EQ(
      stack_->Shell(kTenant, sandbox_.id(), "python3 -c 'b = bytearray(32 << 20); print(len(b))'"),
      "33554432\n");
}

TEST_F(Security, TheFileSizeLimitHoldsForProgramsAndTheFileApi) {
  ExecResult big = Run("head -c 2097152 /dev/zero > big");
  ASSERT_TRUE(big.has_exit);
  EXPECT_TRUE(big.exit.signal() == SIGXFSZ || big.exit.exit_code() != 0);
  EXPECT_EQ(stack_->Shell(kTenant, sandbox_.id(), "stat -c %s big"), "1048576\n");
  grpc::Status api =
      stack_->WriteFile(kTenant, sandbox_.id(), "api-big", std::string(2 << 20, 'x'));
  EXPECT_EQ(api.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(ErrorReasonOf(api), "FILE_TOO_LARGE");
  // Control: under the limit is fine.
  EXPECT_TRUE(stack_->WriteFile(kTenant, sandbox_.id(), "small", std::string(1000, 'x')).ok());
}

TEST_F(Security, AnExecTimeoutKillsTheWholeTree) {
  const std::string marker = absl::StrCat("999.", ::getpid());
  ExecResult result =
      Run(absl::StrCat("sleep ", marker, " & setsid sleep ", marker, " & sleep ", marker), 500);
  ASSERT_TRUE(result.has_exit) << GrpcStatusText(result.status);
  EXPECT_TRUE(result.exit.timed_out());
  EXPECT_EQ(result.exit.signal(), SIGKILL);
  EXPECT_EQ(
      stack_->Shell(kTenant, sandbox_.id(), "cat /proc/[0-9]*/comm | grep -c '^sleep$'; true"),
      "0\n");
  EXPECT_TRUE(ProcessesWithMarker(marker).empty());
}

TEST_F(Security, CancellingAnExecKillsItsTree) {
  const std::string marker = absl::StrCat("998.", ::getpid());
  grpc::ClientContext context;
  sv1::ExecRequest request;
  request.set_tenant_id(kTenant);
  request.set_sandbox_id(sandbox_.id());
  for (const std::string& arg : {std::string("sh"), std::string("-c"),
                                 absl::StrCat("setsid sleep ", marker, " & sleep ", marker)}) {
    request.add_argv(arg);
  }
  std::thread canceller([&] {
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (ProcessesWithMarker(marker).size() < 2 && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    context.TryCancel();
  });
  ExecResult result = RunExec(stack_->stub(), request, &context);
  canceller.join();
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::CANCELLED);
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  while (!ProcessesWithMarker(marker).empty() && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(ProcessesWithMarker(marker).empty());
}

TEST_F(Security, FileApiTraversalIsRefused) {
  std::string content;
  for (const char* path : {"../etc/passwd", "a/../../etc/passwd", "/etc/passwd"}) {
    grpc::Status status = stack_->ReadFile(kTenant, sandbox_.id(), path, &content);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << path;
    EXPECT_EQ(stack_->WriteFile(kTenant, sandbox_.id(), path, "x").error_code(),
              grpc::StatusCode::INVALID_ARGUMENT)
        << path;
  }
  stack_->Shell(kTenant, sandbox_.id(),
                "ln -s / root && ln -s ../../.. up && ln -s /workspace abs");
  for (const char* path : {"root/etc/passwd", "up/etc/passwd", "abs/anything"}) {
    grpc::Status status = stack_->ReadFile(kTenant, sandbox_.id(), path, &content);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << path;
    EXPECT_EQ(ErrorReasonOf(status), "PATH_ESCAPE") << path;
  }
  EXPECT_EQ(ErrorReasonOf(stack_->WriteFile(kTenant, sandbox_.id(), "root/tmp/x", "x")),
            "PATH_ESCAPE");
  sv1::ListFilesRequest list;
  list.set_tenant_id(kTenant);
  list.set_sandbox_id(sandbox_.id());
  list.set_path("root");
  sv1::ListFilesResponse listed;
  EXPECT_EQ(ErrorReasonOf(stack_->Call(&sv1::SandboxManager::Stub::ListFiles, list, &listed)),
            "PATH_ESCAPE");
}

}  // namespace
}  // namespace parley::testing
