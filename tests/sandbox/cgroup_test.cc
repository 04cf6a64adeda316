// cgroup limits of local sandboxes, proven on this host with real bubblewrap: the mode
// the host offers is the one in force and reported; memory is capped across all of a
// sandbox's processes; a fork bomb is held by the pids limit; pause freezes.
//
// Every test first requires the expected mode (ExpectedCgroupMode(): "v1" here, from the
// host's mounts, or PARLEY_EXPECT_CGROUP_MODE) to be the provider's: with no cgroup
// limits the tests fail instead of passing on rlimits. Each limit test also reads the
// kernel's own counters for the sandbox's group (OOM kills, refused forks) to show that
// the group, not an rlimit, did the stopping.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <set>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "tests/sandbox/cgroup_probe.h"
#include "tests/sandbox/sandbox_stack.h"

extern char** environ;

namespace parley::testing {
namespace {

constexpr char kTenant[] = "tenant-cgroup";
constexpr uint64_t kMemoryBytes = 256ull << 20;
constexpr int kMaxProcesses = 64;

constexpr char kTemplates[] = R"({
  "default_template": "capped",
  "templates": [
    {"name": "capped", "limits": {"memory_bytes": 268435456, "max_processes": 64,
                                  "max_open_files": 256, "network": false},
     "local": {"cpu_percent": 50}}
  ]})";

// utime + stime of a host process, in clock ticks; -1 when it is gone.
int64_t CpuTicks(pid_t pid) {
  std::string stat = ReadText(absl::StrCat("/proc/", pid, "/stat"));
  size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return -1;
  std::vector<std::string> fields = absl::StrSplit(stat.substr(paren + 2), ' ');
  int64_t user = 0, system = 0;
  if (fields.size() < 13 || !absl::SimpleAtoi(fields[11], &user) ||
      !absl::SimpleAtoi(fields[12], &system)) {
    return -1;
  }
  return user + system;
}

// Starts /bin/true from this (host) process `count` times; true when every one ran.
bool HostCanFork(int count) {
  for (int i = 0; i < count; ++i) {
    pid_t pid = 0;
    char* argv[] = {const_cast<char*>("/bin/true"), nullptr};
    if (::posix_spawn(&pid, "/bin/true", nullptr, nullptr, argv, environ) != 0) return false;
    int status = 0;
    if (::waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return false;
    }
  }
  return true;
}

class Cgroups : public ::testing::Test {
 protected:
  Cgroups() {
    StackOptions options;
    options.templates_json = kTemplates;
    options.manager = ManualManagerOptions();
    stack_ = std::make_unique<SandboxStack>(options);
  }

  void SetUp() override {
    const std::string expected = ExpectedCgroupMode();
    ASSERT_NE(expected, "none") << "this host offers no cgroup controllers for sandboxes; the "
                                   "limits under test would be rlimits only";
    ASSERT_EQ(stack_->provider().CgroupMode(), expected) << stack_->provider().Capabilities();
  }

  // The host pid of a sandbox's namespace init.
  pid_t InitPid(const std::string& id) {
    int64_t pid = 0;
    EXPECT_TRUE(absl::SimpleAtoi(stack_->StateOf(id)["init_pid"], &pid)) << id;
    return static_cast<pid_t>(pid);
  }

  // The sandbox's group for `controller` (v1), or its cgroup2 group.
  std::string Group(const std::string& id, const std::string& v1_controller) {
    const bool v1 = stack_->provider().CgroupMode() == "v1";
    std::string dir = CgroupDirOf(InitPid(id), v1 ? v1_controller : "");
    EXPECT_TRUE(absl::StrContains(dir, id)) << "init of " << id << " is in " << dir;
    return dir;
  }

  // The processes (not threads) in a group: its cgroup.procs, which in v1 may repeat a pid.
  static std::set<int64_t> ProcessesIn(const std::string& group) {
    std::set<int64_t> pids;
    for (absl::string_view line : absl::StrSplit(ReadText(group + "/cgroup.procs"), '\n')) {
      int64_t pid = 0;
      if (absl::SimpleAtoi(line, &pid)) pids.insert(pid);
    }
    return pids;
  }

  int64_t OomKills(const std::string& id) {
    const std::string memory = Group(id, "memory");
    return KeyedCounter(
        ReadText(memory + (stack_->provider().CgroupMode() == "v1" ? "/memory.oom_control"
                                                                   : "/memory.events")),
        "oom_kill");
  }

  std::unique_ptr<SandboxStack> stack_;
};

TEST_F(Cgroups, TheModeIsReportedAndEverySandboxProcessIsInItsGroupWithItsLimits) {
  // Reported where an operator looks: ListTemplates (and the provider's start-up line).
  sandbox_pb::ListTemplatesResponse templates;
  ASSERT_TRUE(stack_
                  ->Call(&sandbox_pb::SandboxManager::Stub::ListTemplates,
                         sandbox_pb::ListTemplatesRequest(), &templates)
                  .ok());
  ASSERT_EQ(templates.templates_size(), 1);
  EXPECT_EQ(templates.templates(0).cgroup_mode(), ExpectedCgroupMode());
  EXPECT_TRUE(absl::StrContains(stack_->provider().Capabilities(),
                                absl::StrCat("mode ", ExpectedCgroupMode())))
      << stack_->provider().Capabilities();

  sandbox_pb::Sandbox sandbox = stack_->Create(kTenant);
  const std::string id = sandbox.id();
  const pid_t init = InitPid(id);
  int64_t bwrap = 0;
  ASSERT_TRUE(absl::SimpleAtoi(stack_->StateOf(id)["bwrap_pid"], &bwrap));
  const std::vector<std::string> controllers =
      stack_->provider().CgroupMode() == "v1"
          ? std::vector<std::string>{"memory", "pids", "cpu", "freezer"}
          : std::vector<std::string>{""};
  // The outer bwrap joined before it exec'd, so everything it started is in the group
  // too: the namespace init, the daemon, and a program the daemon runs.
  const std::string marker = absl::StrCat("4242.", ::getpid());
  stack_->Shell(kTenant, id, absl::StrCat("sleep ", marker, " >/dev/null 2>&1 &"));
  std::vector<int> sleepers = ProcessesWithMarker(marker);
  ASSERT_EQ(sleepers.size(), 1u);
  std::vector<std::string> group_dirs;
  for (const std::string& controller : controllers) {
    const std::string group = CgroupDirOf(init, controller);
    ASSERT_TRUE(absl::EndsWith(group, "/" + id)) << controller << ": " << group;
    EXPECT_EQ(CgroupDirOf(static_cast<pid_t>(bwrap), controller), group) << controller;
    EXPECT_EQ(CgroupDirOf(sleepers[0], controller), group) << controller;
    group_dirs.push_back(group);
  }
  if (stack_->provider().CgroupMode() == "v1") {
    const std::string memory = Group(id, "memory");
    EXPECT_EQ(Trim(ReadText(memory + "/memory.limit_in_bytes")), absl::StrCat(kMemoryBytes));
    if (::access((memory + "/memory.memsw.limit_in_bytes").c_str(), F_OK) == 0) {
      EXPECT_EQ(Trim(ReadText(memory + "/memory.memsw.limit_in_bytes")),
                absl::StrCat(kMemoryBytes));
    }
    EXPECT_EQ(Trim(ReadText(Group(id, "pids") + "/pids.max")), absl::StrCat(kMaxProcesses));
    EXPECT_EQ(Trim(ReadText(Group(id, "cpu") + "/cpu.cfs_quota_us")), "50000");
    EXPECT_EQ(Trim(ReadText(Group(id, "cpu") + "/cpu.cfs_period_us")), "100000");
    EXPECT_EQ(Trim(ReadText(Group(id, "freezer") + "/freezer.state")), "THAWED");
  } else {
    const std::string group = Group(id, "");
    EXPECT_EQ(Trim(ReadText(group + "/memory.max")), absl::StrCat(kMemoryBytes));
    EXPECT_EQ(Trim(ReadText(group + "/pids.max")), absl::StrCat(kMaxProcesses));
    EXPECT_EQ(Trim(ReadText(group + "/cpu.max")), "50000 100000");
  }

  // Destroy removes the group from every hierarchy.
  ASSERT_TRUE(stack_->manager().Destroy(kTenant, id).ok());
  for (const std::string& dir : group_dirs) {
    EXPECT_NE(::access(dir.c_str(), F_OK), 0) << dir << " survived the destroy";
  }
}

TEST_F(Cgroups, MemoryIsCappedAcrossAllProcessesOfASandbox) {
  // Four processes of 100 MiB each: every one is under the per-process limit (RLIMIT_AS
  // 256 MiB, which would fail with MemoryError, not a kill), together 400 MiB are over
  // the sandbox's 256 MiB. The kernel's OOM counter of the sandbox's own group shows
  // the kills came from the group.
  sandbox_pb::Sandbox sandbox = stack_->Create(kTenant);
  sandbox_pb::Sandbox sibling = stack_->Create(kTenant);
  const std::string hog =
      "python3 -c \"import time; b = b'x' * (100 << 20); print('held', flush=True); "
      "time.sleep(4)\"";
  // Control: one such process alone is fine.
  EXPECT_EQ(stack_->Shell(kTenant, sandbox.id(), hog), "held\n");
  const int64_t kills_before = OomKills(sandbox.id());
  ASSERT_GE(kills_before, 0);

  ExecResult together = stack_->Exec(
      kTenant, sandbox.id(),
      {"sh", "-c",
       absl::StrCat("for i in 1 2 3 4; do (", hog, " >/dev/null; echo \"exit $?\") & done; wait")},
      60000);
  ASSERT_TRUE(together.has_exit) << GrpcStatusText(together.status);
  std::vector<std::string> exits = absl::StrSplit(together.stdout_text, '\n', absl::SkipEmpty());
  ASSERT_EQ(exits.size(), 4u) << together.stdout_text << together.stderr_text;
  int survived = 0, killed = 0;
  for (const std::string& line : exits) {
    survived += line == "exit 0";
    killed += line == "exit 137";  // 128 + SIGKILL: the OOM killer.
  }
  EXPECT_LE(survived, 2) << together.stdout_text;  // 3 x 100 MiB never fit in 256 MiB.
  EXPECT_GE(killed, 2) << together.stdout_text;
  EXPECT_EQ(together.stderr_text.find("MemoryError"), std::string::npos) << together.stderr_text;
  EXPECT_GE(OomKills(sandbox.id()) - kills_before, 2);
  if (stack_->provider().CgroupMode() == "v1") {
    const std::string memory = Group(sandbox.id(), "memory");
    int64_t peak = 0;
    ASSERT_TRUE(absl::SimpleAtoi(Trim(ReadText(memory + "/memory.max_usage_in_bytes")), &peak));
    EXPECT_LE(static_cast<uint64_t>(peak), kMemoryBytes);
  }

  // The sandbox itself, a sibling sandbox and the host are fine.
  EXPECT_EQ(stack_->Shell(kTenant, sandbox.id(), "echo alive"), "alive\n");
  EXPECT_EQ(stack_->Shell(kTenant, sibling.id(),
                          "python3 -c \"b = b'x' * (200 << 20); print(len(b) >> 20)\""),
            "200\n");
  EXPECT_EQ(OomKills(sibling.id()), 0);
  std::string host(300u << 20, 'x');  // More than the sandbox's limit, touched.
  EXPECT_EQ(host[host.size() - 1], 'x');
}

TEST_F(Cgroups, AForkBombIsHeldByThePidsLimitWhileASiblingAndTheHostStillFork) {
  // The bomb runs under an exec timeout, so it ends by itself; the joiner below waits
  // for it on every path out of this test, and teardown destroys both sandboxes. The
  // group's pids.events "max" counter (forks refused by pids.max) shows the group held
  // it: pids.max counts the outer bwrap too, so it binds before RLIMIT_NPROC does.
  sandbox_pb::Sandbox sandbox = stack_->Create(kTenant);
  sandbox_pb::Sandbox sibling = stack_->Create(kTenant);
  const std::string pids = Group(sandbox.id(), "pids");
  const int64_t refused_before = KeyedCounter(ReadText(pids + "/pids.events"), "max");
  ASSERT_GE(refused_before, 0) << ReadText(pids + "/pids.events");
  // The idle group's processes; pids.current counts tasks, and the daemon's thread pool
  // grows with load, so the bomb's absence afterwards is judged by processes.
  EXPECT_EQ(stack_->Shell(kTenant, sandbox.id(), "echo idle"), "idle\n");
  const std::set<int64_t> idle = ProcessesIn(pids);
  ASSERT_FALSE(idle.empty()) << pids;

  std::atomic<bool> bomb_done{false};
  ExecResult bomb;
  std::thread bomber([&] {
    bomb = stack_->Exec(kTenant, sandbox.id(), {"bash", "-c", "b() { b | b & }; b; wait"}, 10000);
    bomb_done = true;
  });
  absl::Cleanup join_bomber = [&] { bomber.join(); };

  const absl::Time give_up = absl::Now() + absl::Seconds(8);
  int64_t peak = 0;
  while (KeyedCounter(ReadText(pids + "/pids.events"), "max") <= refused_before &&
         absl::Now() < give_up) {
    int64_t current = 0;
    if (absl::SimpleAtoi(Trim(ReadText(pids + "/pids.current")), &current)) {
      peak = std::max(peak, current);
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_GT(KeyedCounter(ReadText(pids + "/pids.events"), "max"), refused_before)
      << "the bomb never reached pids.max";
  int64_t current = 0;
  ASSERT_TRUE(absl::SimpleAtoi(Trim(ReadText(pids + "/pids.current")), &current));
  EXPECT_LE(std::max(peak, current), kMaxProcesses);

  // While the bomb is still running: a sibling sandbox and the host can fork.
  EXPECT_EQ(stack_->Shell(kTenant, sibling.id(),
                          "for i in $(seq 1 20); do /bin/true || exit 1; done; echo forked"),
            "forked\n");
  EXPECT_TRUE(HostCanFork(20));
  EXPECT_FALSE(bomb_done) << "the bomb ended before the sibling and the host were tried";

  std::move(join_bomber).Invoke();
  ASSERT_TRUE(bomb.has_exit) << GrpcStatusText(bomb.status);
  EXPECT_TRUE(bomb.exit.timed_out());
  // Afterwards the sandbox answers and, once the kernel has reaped the killed bomb
  // (waited for with a bound), only the idle processes are left in its group.
  EXPECT_EQ(stack_->Shell(kTenant, sandbox.id(), "echo alive"), "alive\n");
  std::set<int64_t> left = ProcessesIn(pids);
  const absl::Time reaped_by = absl::Now() + absl::Seconds(20);
  while (!std::includes(idle.begin(), idle.end(), left.begin(), left.end()) &&
         absl::Now() < reaped_by) {
    absl::SleepFor(absl::Milliseconds(20));
    left = ProcessesIn(pids);
  }
  EXPECT_TRUE(std::includes(idle.begin(), idle.end(), left.begin(), left.end()))
      << "bomb processes survived: " << left.size() << " processes in the group, " << idle.size()
      << " when idle";
}

TEST_F(Cgroups, PauseFreezesTheProcessesSoTheirCpuTimeStops) {
  // A busy loop's CPU time (utime + stime of its host process) advances while the
  // sandbox runs (the control), stands still while it is paused, and advances again
  // after resume. The group's own freezer state shows who froze it.
  sandbox_pb::Sandbox sandbox = stack_->Create(kTenant);
  const std::string marker = absl::StrCat("spin-", ::getpid());
  stack_->Shell(kTenant, sandbox.id(),
                absl::StrCat("sh -c 'while :; do :; done' ", marker, " >/dev/null 2>&1 &"));
  std::vector<int> spinners = ProcessesWithMarker(marker);
  ASSERT_EQ(spinners.size(), 1u);
  const pid_t spinner = spinners[0];
  auto advances_within = [&](absl::Duration limit) {
    const int64_t start = CpuTicks(spinner);
    const absl::Time give_up = absl::Now() + limit;
    while (absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(50));
      if (CpuTicks(spinner) > start) return true;
    }
    return false;
  };
  ASSERT_TRUE(advances_within(absl::Seconds(5))) << "the control: a busy loop uses CPU";

  sandbox_pb::PauseSandboxRequest pause;
  pause.set_tenant_id(kTenant);
  pause.set_sandbox_id(sandbox.id());
  sandbox_pb::PauseSandboxResponse paused;
  ASSERT_TRUE(stack_->Call(&sandbox_pb::SandboxManager::Stub::PauseSandbox, pause, &paused).ok());
  EXPECT_EQ(stack_->StateOf(sandbox.id())["paused_by"], "cgroup");
  EXPECT_TRUE(CgroupFrozen(spinner));
  const int64_t frozen_at = CpuTicks(spinner);
  absl::SleepFor(absl::Seconds(1));
  EXPECT_EQ(CpuTicks(spinner), frozen_at) << "a paused process kept running";

  sandbox_pb::ResumeSandboxRequest resume;
  resume.set_tenant_id(kTenant);
  resume.set_sandbox_id(sandbox.id());
  sandbox_pb::ResumeSandboxResponse resumed;
  ASSERT_TRUE(
      stack_->Call(&sandbox_pb::SandboxManager::Stub::ResumeSandbox, resume, &resumed).ok());
  EXPECT_FALSE(CgroupFrozen(spinner));
  EXPECT_TRUE(advances_within(absl::Seconds(5)));
}

TEST_F(Cgroups, DestroyingAPausedSandboxKillsItsFrozenProcesses) {
  // A v1-frozen task dies only once thawed: destroy must not leave it behind, frozen.
  sandbox_pb::Sandbox sandbox = stack_->Create(kTenant);
  const std::string marker = absl::StrCat("4343.", ::getpid());
  stack_->Shell(kTenant, sandbox.id(), absl::StrCat("sleep ", marker, " >/dev/null 2>&1 &"));
  ASSERT_EQ(ProcessesWithMarker(marker).size(), 1u);
  const std::string group = Group(sandbox.id(), "freezer");
  sandbox_pb::PauseSandboxRequest pause;
  pause.set_tenant_id(kTenant);
  pause.set_sandbox_id(sandbox.id());
  sandbox_pb::PauseSandboxResponse paused;
  ASSERT_TRUE(stack_->Call(&sandbox_pb::SandboxManager::Stub::PauseSandbox, pause, &paused).ok());
  ASSERT_TRUE(CgroupFrozen(ProcessesWithMarker(marker)[0]));

  ASSERT_TRUE(stack_->manager().Destroy(kTenant, sandbox.id()).ok());
  EXPECT_TRUE(ProcessesWithMarker(marker).empty());
  EXPECT_NE(::access(group.c_str(), F_OK), 0) << group << " survived the destroy";
}

}  // namespace
}  // namespace parley::testing
