// cgroup v1 groups: one directory per sandbox in each of the memory, pids, cpu and
// freezer hierarchies the host mounts. Writes are checked; a hierarchy that cannot be
// used is left out and named in the report rather than assumed.
#include "sandbox-svc/provider/cgroup_v1.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "sandbox-svc/provider/cgroup_fs.h"

namespace parley::sandbox {
namespace {

// Our parent directory in the v1 hierarchy of `controller`, created; "" when there is
// no such hierarchy or it cannot be used (`why` then says so).
std::string MakeParent(const std::vector<CgroupMount>& mounts, const std::string& controller,
                       const std::string& suffix, std::string* why) {
  for (const CgroupMount& mount : mounts) {
    if (mount.v2) continue;
    bool has = false;
    for (const std::string& c : mount.controllers) has |= c == controller;
    if (!has) continue;
    const std::string own = OwnCgroupPath(controller);
    if (own.empty()) {
      *why = absl::StrCat(controller, ": not in /proc/self/cgroup");
      return "";
    }
    const std::string parent =
        absl::StrCat(GroupDirectory(mount, own), "/parley-sandbox.", suffix);
    if (::mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) {
      *why = absl::StrCat(controller, ": cannot create ", parent, " (", std::strerror(errno), ")");
      return "";
    }
    if (::access(absl::StrCat(parent, "/cgroup.procs").c_str(), W_OK) != 0) {
      *why = absl::StrCat(controller, ": ", parent, " is not writable");
      ::rmdir(parent.c_str());
      return "";
    }
    return parent;
  }
  *why = absl::StrCat(controller, ": no v1 hierarchy");
  return "";
}

std::string Trimmed(const std::string& text) {
  return std::string(absl::StripAsciiWhitespace(text));
}

}  // namespace

std::unique_ptr<CgroupV1Tree> CgroupV1Tree::Create(const std::string& suffix,
                                                   std::string* report) {
  const std::vector<CgroupMount> mounts = CgroupMounts();
  auto tree = std::unique_ptr<CgroupV1Tree>(new CgroupV1Tree());
  std::vector<std::string> used, missing;
  for (auto [controller, parent] : {std::pair<const char*, std::string*>{"memory", &tree->memory_},
                                    {"pids", &tree->pids_},
                                    {"cpu", &tree->cpu_},
                                    {"freezer", &tree->freezer_}}) {
    std::string why;
    *parent = MakeParent(mounts, controller, suffix, &why);
    if (parent->empty()) {
      missing.push_back(why);
    } else {
      used.push_back(controller);
    }
  }
  if (tree->memory_.empty() && tree->pids_.empty()) {
    for (const std::string& parent : tree->Parents()) ::rmdir(parent.c_str());
    *report = absl::StrCat("no cgroup v1 memory or pids hierarchy (", absl::StrJoin(missing, "; "),
                           ")");
    return nullptr;
  }
  tree->memsw_ = !tree->memory_.empty() &&
                 ::access(absl::StrCat(tree->memory_, "/memory.memsw.limit_in_bytes").c_str(),
                          W_OK) == 0;
  tree->report_ = absl::StrCat(
      "cgroup v1 groups parley-sandbox.", suffix, " in: ", absl::StrJoin(used, ", "),
      missing.empty() ? "" : absl::StrCat(" (missing: ", absl::StrJoin(missing, "; "), ")"),
      "; swap capped with memory: ", tree->memsw_ ? "yes" : "no (no memsw accounting)");
  *report = tree->report_;
  return tree;
}

std::vector<std::string> CgroupV1Tree::Parents() const {
  std::vector<std::string> parents;
  for (const std::string* parent : {&memory_, &pids_, &cpu_, &freezer_}) {
    if (!parent->empty()) parents.push_back(*parent);
  }
  return parents;
}

absl::Status CgroupV1Tree::Create(const std::string& name,
                                  const ::parley::sandbox::v1::SandboxLimits& limits,
                                  uint32_t cpu_percent) const {
  for (const std::string& parent : Parents()) {
    const std::string group = absl::StrCat(parent, "/", name);
    if (::mkdir(group.c_str(), 0755) != 0 && errno != EEXIST) {
      return absl::UnavailableError(absl::StrCat("mkdir ", group, ": ", std::strerror(errno)));
    }
  }
  // Order matters for memory: memsw (memory + swap) may never be below the memory limit.
  std::vector<std::pair<std::string, std::string>> writes;
  if (!memory_.empty() && limits.memory_bytes() > 0) {
    const std::string group = absl::StrCat(memory_, "/", name);
    writes.emplace_back(group + "/memory.limit_in_bytes", absl::StrCat(limits.memory_bytes()));
    if (memsw_) {
      writes.emplace_back(group + "/memory.memsw.limit_in_bytes",
                          absl::StrCat(limits.memory_bytes()));
    }
  }
  if (!pids_.empty() && limits.max_processes() > 0) {
    writes.emplace_back(absl::StrCat(pids_, "/", name, "/pids.max"),
                        absl::StrCat(limits.max_processes()));
  }
  if (!cpu_.empty() && cpu_percent > 0) {
    const std::string group = absl::StrCat(cpu_, "/", name);
    writes.emplace_back(group + "/cpu.cfs_period_us", "100000");
    writes.emplace_back(group + "/cpu.cfs_quota_us", absl::StrCat(cpu_percent * 1000));
  }
  for (const auto& [path, value] : writes) {
    if (!WriteControlFile(path, value)) {
      return absl::UnavailableError(
          absl::StrCat("write ", value, " to ", path, ": ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<UniqueFd>> CgroupV1Tree::OpenProcs(const std::string& name) const {
  std::vector<UniqueFd> fds;
  for (const std::string& parent : Parents()) {
    const std::string path = absl::StrCat(parent, "/", name, "/cgroup.procs");
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd.valid()) {
      return absl::UnavailableError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
    }
    fds.push_back(std::move(fd));
  }
  return fds;
}

absl::Status CgroupV1Tree::Freeze(const std::string& name, bool frozen) const {
  if (freezer_.empty()) return absl::UnimplementedError("no cgroup v1 freezer hierarchy");
  const std::string path = absl::StrCat(freezer_, "/", name, "/freezer.state");
  const char* want = frozen ? "FROZEN" : "THAWED";
  if (!WriteControlFile(path, want)) {
    return absl::UnavailableError(absl::StrCat("write ", want, " to ", path, ": ",
                                               std::strerror(errno)));
  }
  // FREEZING until every task has stopped; reading the file advances the state. A task
  // the kernel could not freeze yet (busy in the kernel, or forked meanwhile) keeps the
  // group FREEZING until FROZEN is written again, so the wait re-writes it now and then.
  // On a loaded host a task may take seconds to get there: bounded by time.
  constexpr absl::Duration kSettleTimeout = absl::Seconds(10);
  const absl::Time give_up = absl::Now() + kSettleTimeout;
  absl::Time rewrite = absl::Now() + absl::Milliseconds(100);
  while (Trimmed(ReadControlFile(path)) != want) {
    const absl::Time now = absl::Now();
    if (now > give_up) {
      return absl::DeadlineExceededError(absl::StrCat(path, " did not become ", want, " within ",
                                                      absl::FormatDuration(kSettleTimeout)));
    }
    if (now > rewrite) {
      (void)WriteControlFile(path, want);
      rewrite = now + absl::Milliseconds(100);
    }
    absl::SleepFor(absl::Microseconds(200));
  }
  return absl::OkStatus();
}

std::vector<pid_t> CgroupV1Tree::Members(const std::string& name) const {
  std::set<pid_t> pids;
  for (const std::string& parent : Parents()) {
    std::istringstream lines(ReadControlFile(absl::StrCat(parent, "/", name, "/cgroup.procs")));
    std::string line;
    while (std::getline(lines, line)) {
      int pid = 0;
      if (absl::SimpleAtoi(line, &pid) && pid > 0) pids.insert(pid);
    }
  }
  return {pids.begin(), pids.end()};
}

absl::Status CgroupV1Tree::Kill(const std::string& name) const {
  // Freezing first keeps a forking tree from growing between the listing and the
  // signals; thawing lets the killed tasks die. Bounded by rounds and by time.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  for (int round = 0; round < 50 && absl::Now() < give_up; ++round) {
    std::vector<pid_t> members = Members(name);
    if (members.empty()) return absl::OkStatus();
    if (!freezer_.empty()) (void)Freeze(name, true);
    for (pid_t pid : members) ::kill(pid, SIGKILL);
    if (!freezer_.empty()) (void)Freeze(name, false);
    absl::SleepFor(absl::Milliseconds(round < 5 ? 1 : 20));
  }
  return Members(name).empty()
             ? absl::OkStatus()
             : absl::UnavailableError(absl::StrCat("processes of cgroup ", name, " survive SIGKILL"));
}

void CgroupV1Tree::Remove(const std::string& name) const {
  for (const std::string& parent : Parents()) {
    RemoveGroupDirectory(absl::StrCat(parent, "/", name), 5000);
  }
}

std::vector<std::string> CgroupV1Tree::ListGroups() const {
  std::set<std::string> groups;
  for (const std::string& parent : Parents()) {
    DIR* dir = ::opendir(parent.c_str());
    if (dir == nullptr) continue;
    while (struct dirent* entry = ::readdir(dir)) {
      if (entry->d_type == DT_DIR && absl::StartsWith(entry->d_name, "sbx_")) {
        groups.insert(entry->d_name);
      }
    }
    ::closedir(dir);
  }
  return {groups.begin(), groups.end()};
}

void CgroupV1Tree::ReleaseParent() const {
  if (!ListGroups().empty()) return;
  for (const std::string& parent : Parents()) ::rmdir(parent.c_str());
}

}  // namespace parley::sandbox
