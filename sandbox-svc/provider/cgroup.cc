// cgroup v2 detection and per-sandbox groups. Every write that can fail is checked and
// turned into a line of the report instead of an assumption.
#include "sandbox-svc/provider/cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace parley::sandbox {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

bool WriteFile(const std::string& path, absl::string_view value) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) return false;
  return ::write(fd.get(), value.data(), value.size()) == static_cast<ssize_t>(value.size());
}

// The mount point of the cgroup2 file system, from /proc/self/mountinfo.
std::string FindCgroup2Mount() {
  std::istringstream lines(ReadFile("/proc/self/mountinfo"));
  std::string line;
  while (std::getline(lines, line)) {
    // "... <mount point> <options> - cgroup2 <source> <super options>"
    size_t dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::vector<std::string> after = absl::StrSplit(line.substr(dash + 3), ' ');
    if (after.empty() || after[0] != "cgroup2") continue;
    std::vector<std::string> before = absl::StrSplit(line.substr(0, dash), ' ');
    if (before.size() > 4) return before[4];
  }
  return "";
}

// This process's cgroup v2 path ("0::/path").
std::string OwnCgroupPath() {
  std::istringstream lines(ReadFile("/proc/self/cgroup"));
  std::string line;
  while (std::getline(lines, line)) {
    if (absl::StartsWith(line, "0::")) return line.substr(3);
  }
  return "";
}

bool HasWord(absl::string_view text, absl::string_view word) {
  for (absl::string_view part : absl::StrSplit(text, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
    if (part == word) return true;
  }
  return false;
}

}  // namespace

CgroupTree CgroupTree::Detect(bool enabled, const std::string& suffix) {
  CgroupTree tree;
  if (!enabled) {
    tree.report_ = "cgroups: off (--cgroup=off); rlimits only";
    return tree;
  }
  std::string mount = FindCgroup2Mount();
  if (mount.empty()) {
    tree.report_ = "cgroups: no cgroup2 file system mounted; rlimits only, pause by SIGSTOP";
    return tree;
  }
  std::string own = OwnCgroupPath();
  std::string base = absl::StrCat(mount, own == "/" ? "" : own);
  std::string parent = absl::StrCat(base, "/parley-sandbox.", suffix);
  if (::mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) {
    tree.report_ = absl::StrCat("cgroups: cgroup2 at ", mount, " but cannot create ", parent, " (",
                                std::strerror(errno), "); rlimits only, pause by SIGSTOP");
    return tree;
  }
  if (::access(absl::StrCat(parent, "/cgroup.freeze").c_str(), F_OK) != 0 &&
      ::access(absl::StrCat(parent, "/cgroup.procs").c_str(), W_OK) != 0) {
    ::rmdir(parent.c_str());
    tree.report_ = absl::StrCat("cgroups: ", parent, " is not usable; rlimits only");
    return tree;
  }
  tree.parent_ = parent;
  // A controller reaches our parent group only when whoever delegated our own group
  // enabled it there (we never change our own group's subtree_control: that is the
  // host's or the service manager's decision); we then enable it for the sandboxes.
  std::vector<std::string> enabled_controllers, missing;
  for (const char* controller : {"memory", "pids", "cpu"}) {
    std::string plus = absl::StrCat("+", controller);
    bool on = HasWord(ReadFile(absl::StrCat(parent, "/cgroup.controllers")), controller) &&
              WriteFile(absl::StrCat(parent, "/cgroup.subtree_control"), plus);
    (on ? enabled_controllers : missing).push_back(controller);
    if (std::string(controller) == "memory") tree.memory_ = on;
    if (std::string(controller) == "pids") tree.pids_ = on;
    if (std::string(controller) == "cpu") tree.cpu_ = on;
  }
  bool freeze = ::access(absl::StrCat(parent, "/cgroup.freeze").c_str(), F_OK) == 0;
  bool kill = ::access(absl::StrCat(parent, "/cgroup.kill").c_str(), F_OK) == 0;
  tree.report_ = absl::StrCat(
      "cgroups: cgroup2 group ", parent,
      "; limits: ", enabled_controllers.empty() ? "none" : absl::StrJoin(enabled_controllers, ", "),
      missing.empty() ? "" : absl::StrCat(" (not delegated: ", absl::StrJoin(missing, ", "), ")"),
      "; freeze: ", freeze ? "yes" : "no", "; kill: ", kill ? "yes" : "no");
  return tree;
}

absl::StatusOr<std::string> CgroupTree::Create(const std::string& id,
                                               const ::parley::sandbox::v1::SandboxLimits& limits,
                                               uint32_t cpu_percent) const {
  if (!available()) return absl::FailedPreconditionError("no cgroup support");
  std::string group = absl::StrCat(parent_, "/", id);
  if (::mkdir(group.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::UnavailableError(absl::StrCat("mkdir ", group, ": ", std::strerror(errno)));
  }
  if (memory_ && limits.memory_bytes() > 0) {
    WriteFile(absl::StrCat(group, "/memory.max"), absl::StrCat(limits.memory_bytes()));
    WriteFile(absl::StrCat(group, "/memory.swap.max"), "0");
  }
  if (pids_ && limits.max_processes() > 0) {
    WriteFile(absl::StrCat(group, "/pids.max"), absl::StrCat(limits.max_processes()));
  }
  if (cpu_ && cpu_percent > 0) {
    WriteFile(absl::StrCat(group, "/cpu.max"), absl::StrCat(cpu_percent * 1000, " 100000"));
  }
  return group;
}

absl::StatusOr<UniqueFd> CgroupTree::OpenProcs(const std::string& group) const {
  UniqueFd fd(::open(absl::StrCat(group, "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return absl::UnavailableError(
        absl::StrCat("open ", group, "/cgroup.procs: ", std::strerror(errno)));
  }
  return fd;
}

absl::Status CgroupTree::Freeze(const std::string& group, bool frozen) const {
  if (!WriteFile(absl::StrCat(group, "/cgroup.freeze"), frozen ? "1" : "0")) {
    return absl::UnavailableError(
        absl::StrCat("write ", group, "/cgroup.freeze: ", std::strerror(errno)));
  }
  const std::string want = frozen ? "frozen 1" : "frozen 0";
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  while (!absl::StrContains(ReadFile(absl::StrCat(group, "/cgroup.events")), want)) {
    if (absl::Now() > give_up) {
      return absl::DeadlineExceededError(absl::StrCat(group, " did not become ", want));
    }
    absl::SleepFor(absl::Microseconds(200));
  }
  return absl::OkStatus();
}

absl::Status CgroupTree::Kill(const std::string& group) const {
  if (!WriteFile(absl::StrCat(group, "/cgroup.kill"), "1")) {
    return absl::UnavailableError(
        absl::StrCat("write ", group, "/cgroup.kill: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

void CgroupTree::Remove(const std::string& group) const {
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  while (::rmdir(group.c_str()) != 0 && errno == EBUSY && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(2));
  }
}

std::vector<std::string> CgroupTree::ListGroups() const {
  std::vector<std::string> groups;
  if (!available()) return groups;
  DIR* dir = ::opendir(parent_.c_str());
  if (dir == nullptr) return groups;
  while (struct dirent* entry = ::readdir(dir)) {
    if (entry->d_type == DT_DIR && absl::StartsWith(entry->d_name, "sbx_")) {
      groups.emplace_back(entry->d_name);
    }
  }
  ::closedir(dir);
  return groups;
}

}  // namespace parley::sandbox
