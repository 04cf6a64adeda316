// Isolation, each property proven from inside a real bubblewrap sandbox through the
// SandboxManager API: host files, other sandboxes, host processes, network, fork bombs,
// memory and file-size limits, exec timeouts, and file-API traversal. Where a test
// could pass for the wrong reason, a control in the same test shows the probe works.
#include <arpa/inet.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
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
  sandbox_pb::Sandbox sandbox_;
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
  sandbox_pb::Sandbox other = stack_->Create(kTenant);
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
  sandbox_pb::Sandbox open = stack_->Create(kTenant, "networked");
  ExecResult allowed = stack_->Exec(kTenant, open.id(), {"bash", "-c", probe});
  EXPECT_EQ(allowed.exit.exit_code(), 0) << allowed.stderr_text;
  EXPECT_EQ(allowed.stdout_text, "connected\n");
  EXPECT_TRUE(listener.SomeoneConnected());
}

// A socket of the host, bound to `address` on a free port: a TCP listener or a UDP
// receiver. Reports whether anything arrived (a connection or a datagram).
class HostSocket {
 public:
  HostSocket(const std::string& protocol, const std::string& address) : protocol_(protocol) {
    const bool v6 = address.find(':') != std::string::npos;
    const int type = protocol == "tcp" ? SOCK_STREAM : SOCK_DGRAM;
    fd_ = ::socket(v6 ? AF_INET6 : AF_INET, type | SOCK_CLOEXEC, 0);
    sockaddr_storage storage{};
    socklen_t length = 0;
    if (v6) {
      auto* in6 = reinterpret_cast<sockaddr_in6*>(&storage);
      in6->sin6_family = AF_INET6;
      ::inet_pton(AF_INET6, address.c_str(), &in6->sin6_addr);
      length = sizeof(sockaddr_in6);
    } else {
      auto* in4 = reinterpret_cast<sockaddr_in*>(&storage);
      in4->sin_family = AF_INET;
      ::inet_pton(AF_INET, address.c_str(), &in4->sin_addr);
      length = sizeof(sockaddr_in);
    }
    bound_ = ::bind(fd_, reinterpret_cast<sockaddr*>(&storage), length) == 0 &&
             (type == SOCK_DGRAM || ::listen(fd_, 8) == 0) &&
             ::getsockname(fd_, reinterpret_cast<sockaddr*>(&storage), &length) == 0;
    port_ = ntohs(v6 ? reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port
                     : reinterpret_cast<sockaddr_in*>(&storage)->sin_port);
    spec_ = absl::StrCat(protocol, ",", address, ",", port_);
  }
  ~HostSocket() { ::close(fd_); }
  bool bound() const { return bound_; }
  // "tcp,192.0.2.2,4242": what the probe script below takes.
  const std::string& spec() const { return spec_; }
  bool SomethingArrived(int wait_ms) {
    pollfd pfd{fd_, POLLIN, 0};
    return ::poll(&pfd, 1, wait_ms) > 0;
  }
  // Accepts or reads what arrived, so the next check starts empty.
  void Drain() {
    while (SomethingArrived(0)) {
      if (protocol_ == "tcp") {
        ::close(::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC));
      } else {
        char buffer[64];
        (void)::recv(fd_, buffer, sizeof(buffer), MSG_DONTWAIT);
      }
    }
  }

 private:
  std::string protocol_;
  int fd_ = -1;
  int port_ = 0;
  bool bound_ = false;
  std::string spec_;
};

// The host's first non-loopback, non-link-local address of a family ("" when none).
std::string HostAddress(int family) {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return "";
  std::string found;
  for (ifaddrs* entry = list; entry != nullptr && found.empty(); entry = entry->ifa_next) {
    if (entry->ifa_addr == nullptr || entry->ifa_addr->sa_family != family) continue;
    if (entry->ifa_flags & IFF_LOOPBACK) continue;
    char text[INET6_ADDRSTRLEN] = {};
    if (family == AF_INET) {
      ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(entry->ifa_addr)->sin_addr, text,
                  sizeof(text));
    } else {
      const in6_addr& address = reinterpret_cast<sockaddr_in6*>(entry->ifa_addr)->sin6_addr;
      if (IN6_IS_ADDR_LINKLOCAL(&address)) continue;
      ::inet_ntop(AF_INET6, &address, text, sizeof(text));
    }
    found = text;
  }
  ::freeifaddrs(list);
  return found;
}

// Tries each "protocol,address,port" once (TCP connect with a 2 s timeout, one UDP
// datagram) and prints "<spec> connected|sent|error <errno>" per line.
constexpr char kNetworkProbe[] = R"(
import socket, sys
for spec in sys.argv[1:]:
    protocol, address, port = spec.split(',')
    family = socket.AF_INET6 if ':' in address else socket.AF_INET
    try:
        if protocol == 'tcp':
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect((address, int(port)))
            print(spec, 'connected')
        else:
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.sendto(b'probe', (address, int(port)))
            print(spec, 'sent')
    except OSError as e:
        print(spec, 'error', e.errno)
)";

TEST_F(Security, OnlyLoopbackIsInsideAndNoPacketReachesTheHost) {
  // Proves: the sandbox's only interface is lo, and neither TCP nor UDP reaches a
  // non-loopback address of the host, its 127.0.0.1, or its ::1. The host's own
  // sockets are the witnesses (nothing arrives); the control, the same probe from a
  // sandbox whose template allows network, shows every one of them can be reached.
  const std::string v4 = HostAddress(AF_INET);
  const std::string v6 = HostAddress(AF_INET6);
  ASSERT_FALSE(v4.empty()) << "the host has no non-loopback IPv4 address to probe";
  std::vector<std::unique_ptr<HostSocket>> targets;
  for (const char* protocol : {"tcp", "udp"}) {
    for (const std::string& address : {v4, v6, std::string("127.0.0.1"), std::string("::1")}) {
      if (address.empty()) continue;
      targets.push_back(std::make_unique<HostSocket>(protocol, address));
      ASSERT_TRUE(targets.back()->bound()) << protocol << " " << address;
    }
  }
  std::vector<std::string> argv = {"python3", "-c", kNetworkProbe};
  for (const auto& target : targets) argv.push_back(target->spec());

  EXPECT_EQ(
      stack_->Shell(kTenant, sandbox_.id(), "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"),
      "lo\n");
  ExecResult blocked = stack_->Exec(kTenant, sandbox_.id(), argv, 30000);
  ASSERT_EQ(blocked.exit.exit_code(), 0) << blocked.stderr_text;
  EXPECT_EQ(blocked.stdout_text.find("connected"), std::string::npos) << blocked.stdout_text;
  for (const auto& target : targets) {
    EXPECT_FALSE(target->SomethingArrived(target == targets.back() ? 500 : 50))
        << target->spec() << " was reached from the sandbox\n"
        << blocked.stdout_text;
    target->Drain();
  }

  sandbox_pb::Sandbox open = stack_->Create(kTenant, "networked");
  EXPECT_NE(stack_->Shell(kTenant, open.id(), "tail -n +3 /proc/net/dev | cut -d: -f1"), " lo\n");
  ExecResult allowed = stack_->Exec(kTenant, open.id(), argv, 30000);
  ASSERT_EQ(allowed.exit.exit_code(), 0) << allowed.stderr_text;
  for (const auto& target : targets) {
    EXPECT_TRUE(target->SomethingArrived(2000)) << "control: " << target->spec() << " not reached\n"
                                                << allowed.stdout_text;
  }
}

TEST_F(Security, HostAndSiblingSecretsAreNotReadableInProcOrSys) {
  // Proves: nothing in the sandbox's /proc (nor a /sys, which it does not have) shows
  // the host's environment, /proc/1/environ of the host included, or a sibling
  // sandbox's processes. The secrets are planted where a leak would show them: in this
  // test process's environment (the manager runs here) before the sandbox is created,
  // and in the environment and command line of a process of a sibling sandbox, which
  // the sibling itself can read (the control).
  const std::string host_secret =
      absl::StrCat("host-secret-", ::getpid(), "-", absl::ToUnixNanos(absl::Now()));
  ::setenv("PARLEY_PROBE_SECRET", host_secret.c_str(), 1);
  sandbox_pb::Sandbox probe = stack_->Create(kTenant);
  ::unsetenv("PARLEY_PROBE_SECRET");
  const std::string sibling_secret = absl::StrCat("sibling-secret-", ::getpid());
  sandbox_pb::Sandbox sibling = stack_->Create(kTenant);
  {
    sandbox_pb::ExecRequest request;
    request.set_tenant_id(kTenant);
    request.set_sandbox_id(sibling.id());
    // The inner shell carries the secret on its command line and in its environment. It
    // forks once (sleep), so after that brief copy it is the only process showing it.
    for (const char* arg : {"sh", "-c", "sh -c 'sleep 600; :' \"$0\" >/dev/null 2>&1 &"}) {
      request.mutable_command()->add_argv(arg);
    }
    request.mutable_command()->add_argv(sibling_secret);
    (*request.mutable_command()->mutable_env())["SIBLING_SECRET"] = sibling_secret;
    ExecResult started = RunExec(stack_->stub(), request);
    ASSERT_EQ(started.exit.exit_code(), 0) << started.stderr_text;
  }
  // The launching shell and the fork before sleep's exec show the secret for a moment.
  std::vector<int> sibling_pids = ProcessesWithMarker(sibling_secret);
  for (absl::Time give_up = absl::Now() + absl::Seconds(30);
       sibling_pids.size() != 1 && absl::Now() < give_up; absl::SleepFor(absl::Milliseconds(20))) {
    sibling_pids = ProcessesWithMarker(sibling_secret);
  }
  ASSERT_EQ(sibling_pids.size(), 1u);
  // The pattern comes on stdin, and grep runs after the scan: on a command line of the
  // sandbox it would find itself.
  const std::string search =
      "cat > /tmp/pattern; for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do "
      "tr '\\0' '\\n' < $f 2>/dev/null; done > /tmp/seen; grep -cEf /tmp/pattern /tmp/seen; true";
  const std::string pattern = absl::StrCat(host_secret, "|", sibling_secret, "\n");
  ExecResult leaked = stack_->Exec(kTenant, probe.id(), {"sh", "-c", search}, 0, pattern);
  EXPECT_EQ(leaked.stdout_text, "0\n") << leaked.stderr_text;
  // Control: the sibling sees its own secret in the same places.
  ExecResult own = stack_->Exec(kTenant, sibling.id(), {"sh", "-c", search}, 0, pattern);
  EXPECT_NE(own.stdout_text, "0\n") << own.stderr_text;
  // The sibling's process under its host pid is not there for the probe.
  EXPECT_NE(Run(absl::StrCat("test -e /proc/", sibling_pids[0], "/environ")).exit.exit_code(), 0);

  // /proc/1 is the sandbox's own init, not the host's: its environment is not the host
  // init's and says nothing of the host.
  std::ifstream host_init("/proc/1/environ");
  std::string host_environ((std::istreambuf_iterator<char>(host_init)),
                           std::istreambuf_iterator<char>());
  ExecResult init_environ = stack_->Exec(kTenant, probe.id(), {"cat", "/proc/1/environ"});
  EXPECT_NE(init_environ.stdout_text, host_environ);
  EXPECT_EQ(init_environ.stdout_text.find("PARLEY_PROBE_SECRET"), std::string::npos);
  EXPECT_EQ(stack_->Shell(kTenant, probe.id(), "tr '\\0' '\\n' </proc/1/cmdline | head -1"),
            absl::StrCat("parley-sbx:", probe.id(), "\n"));
  // No /sys at all, and the kernel's memory is not readable through /proc.
  EXPECT_NE(Run("ls /sys").exit.exit_code(), 0);
  EXPECT_NE(Run("head -c 1 /proc/kcore > /dev/null").exit.exit_code(), 0);
}

TEST_F(Security, SetuidBinariesDoNotRaisePrivilege) {
  // Proves: a setuid-root program run in the sandbox runs as the sandbox user. The
  // witness is a setuid-root copy of `id` planted in the workspace from the host; the
  // control runs the same kind of file on the host as an unprivileged uid and gets
  // euid 0, so the file really is a working setuid binary. The system's own setuid
  // programs (mount, passwd, …) cannot act as root either.
  const std::string workspace = stack_->StateOf(sandbox_.id())["workspace"];
  ASSERT_FALSE(workspace.empty());
  const std::string control_dir = TestTempDir();
  ::chmod(control_dir.c_str(), 0755);
  for (const std::string& path : {workspace + "/suid-id", control_dir + "/suid-id"}) {
    std::ifstream in("/usr/bin/id", std::ios::binary);
    std::ofstream out(path, std::ios::binary);
    out << in.rdbuf();
    out.close();
    ASSERT_EQ(::chown(path.c_str(), 0, 0), 0) << path;
    ASSERT_EQ(::chmod(path.c_str(), 04755), 0) << path;
  }
  if (::geteuid() == 0) {
    int pipe_fds[2];
    ASSERT_EQ(::pipe(pipe_fds), 0);
    pid_t child = ::fork();
    if (child == 0) {
      ::dup2(pipe_fds[1], 1);
      if (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
          ::setresuid(65534, 65534, 65534) != 0) {
        ::_exit(3);
      }
      const std::string binary = control_dir + "/suid-id";
      ::execl(binary.c_str(), "id", "-u", nullptr);
      ::_exit(4);
    }
    ::close(pipe_fds[1]);
    char buffer[32] = {};
    ssize_t n = ::read(pipe_fds[0], buffer, sizeof(buffer) - 1);
    ::close(pipe_fds[0]);
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_GT(n, 0);
    EXPECT_EQ(std::string(buffer, static_cast<size_t>(n)), "0\n") << "control: setuid works";
  }

  EXPECT_EQ(stack_->Shell(kTenant, sandbox_.id(), "./suid-id -u; ./suid-id -g"), "1000\n1000\n");
  std::string status =
      stack_->Shell(kTenant, sandbox_.id(),
                    "./suid-id >/dev/null; grep -E '^(NoNewPrivs|CapEff):' /proc/self/status");
  EXPECT_TRUE(absl::StrContains(status, "NoNewPrivs:\t1")) << status;
  EXPECT_TRUE(absl::StrContains(status, "CapEff:\t0000000000000000")) << status;
  // The system's setuid programs are as powerless: mounting needs root.
  ExecResult mount = Run("/usr/bin/mount -t tmpfs none /tmp");
  EXPECT_NE(mount.exit.exit_code(), 0) << mount.stdout_text;
  EXPECT_EQ(
      stack_->Shell(kTenant, sandbox_.id(), "stat -c %u /tmp; touch /tmp/still-ours; echo ok"),
      "1000\nok\n");
}

TEST_F(Security, PtraceOfAProcessOutsideTheSandboxFails) {
  // Proves: no process outside the sandbox can be traced from inside — not this test
  // process, nor a sibling sandbox's process, by their host pids (they do not exist in
  // the sandbox's pid namespace: ESRCH), nor the sandbox's own daemon, which is not
  // dumpable (EPERM). The control traces a child of the probe itself, which works, so
  // the failures are the isolation's, not a ptrace that is off altogether.
  sandbox_pb::Sandbox sibling = stack_->Create(kTenant);
  const std::string marker = absl::StrCat("4545.", ::getpid());
  stack_->Shell(kTenant, sibling.id(), absl::StrCat("sleep ", marker, " >/dev/null 2>&1 &"));
  std::vector<int> sibling_pids = ProcessesWithMarker(marker);
  ASSERT_EQ(sibling_pids.size(), 1u);
  const std::string probe = R"(
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
def attach(pid):
    if libc.ptrace(16, pid, None, None) == 0:
        os.waitpid(pid, 0)
        libc.ptrace(17, pid, None, None)
        return 'attached'
    return 'errno %d' % ctypes.get_errno()
daemon = [int(p) for p in os.listdir('/proc') if p.isdigit() and
          open('/proc/%s/cmdline' % p, 'rb').read().startswith(b'/.parley/sandboxd')][0]
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
for name, pid in [('host', int(sys.argv[1])), ('sibling', int(sys.argv[2])),
                  ('daemon', daemon), ('child', child)]:
    print(name, attach(pid))
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
)";
  ExecResult result = stack_->Exec(
      kTenant, sandbox_.id(),
      {"python3", "-c", probe, absl::StrCat(::getpid()), absl::StrCat(sibling_pids[0])}, 30000);
  ASSERT_EQ(result.exit.exit_code(), 0) << result.stderr_text;
  EXPECT_EQ(result.stdout_text, absl::StrCat("host errno ", ESRCH, "\nsibling errno ", ESRCH,
                                             "\ndaemon errno ", EPERM, "\nchild attached\n"));
}

TEST_F(Security, OnlyTheUsualDeviceNodesExist) {
  // Proves: /dev holds exactly what bwrap's --dev makes — the character devices null,
  // zero, full, random, urandom, tty and pts/ptmx (with the ptmx link), the stdio and
  // fd links, the core link to /proc/kcore (unreadable, see the secrets test) and the
  // pts and shm directories — and no block device, console, or anything of the
  // host's /dev. The listing is compared whole, so anything new fails the test.
  // stat, not find's %y: readdir reports the mount point bwrap made under each bound
  // device (a regular file), stat the device mounted over it.
  std::string listing =
      stack_->Shell(kTenant, sandbox_.id(), "find /dev -exec stat -c '%n %F %t,%T' {} + | sort");
  EXPECT_EQ(listing,
            "/dev directory 0,0\n"
            "/dev/core symbolic link 0,0\n"
            "/dev/fd symbolic link 0,0\n"
            "/dev/full character special file 1,7\n"
            "/dev/null character special file 1,3\n"
            "/dev/ptmx symbolic link 0,0\n"
            "/dev/pts directory 0,0\n"
            "/dev/pts/ptmx character special file 5,2\n"
            "/dev/random character special file 1,8\n"
            "/dev/shm directory 0,0\n"
            "/dev/stderr symbolic link 0,0\n"
            "/dev/stdin symbolic link 0,0\n"
            "/dev/stdout symbolic link 0,0\n"
            "/dev/tty character special file 5,0\n"
            "/dev/urandom character special file 1,9\n"
            "/dev/zero character special file 1,5\n");
  EXPECT_EQ(stack_->Shell(kTenant, sandbox_.id(), "readlink /dev/core"), "/proc/kcore\n");
  // The control: the host has more (a /dev the sandbox does not see).
  EXPECT_EQ(::access("/dev/vda", F_OK) == 0 || ::access("/dev/console", F_OK) == 0, true);
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
  sandbox_pb::ExecRequest request;
  request.set_tenant_id(kTenant);
  request.set_sandbox_id(sandbox_.id());
  for (const std::string& arg : {std::string("sh"), std::string("-c"),
                                 absl::StrCat("setsid sleep ", marker, " & sleep ", marker)}) {
    request.mutable_command()->add_argv(arg);
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
  sandbox_pb::ListFilesRequest list;
  list.set_tenant_id(kTenant);
  list.set_sandbox_id(sandbox_.id());
  list.mutable_list()->set_path("root");
  sandboxd::v1::ListDirResponse listed;
  EXPECT_EQ(
      ErrorReasonOf(stack_->Call(&sandbox_pb::SandboxManager::Stub::ListFiles, list, &listed)),
      "PATH_ESCAPE");
}

}  // namespace
}  // namespace parley::testing
