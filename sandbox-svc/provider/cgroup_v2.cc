// cgroup v2 groups. Every write that can fail is checked and turned into a line of the
// report instead of an assumption.
#include "sandbox-svc/provider/cgroup_v2.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "sandbox-svc/provider/cgroup_fs.h"

namespace parley::sandbox {

std::unique_ptr<CgroupV2Tree> CgroupV2Tree::Create(const std::string& suffix,
                                                   std::string* report) {
  const CgroupMount* found = nullptr;
  std::vector<CgroupMount> mounts = CgroupMounts();
  for (const CgroupMount& mount : mounts) {
    if (mount.v2) found = &mount;
  }
  if (found == nullptr) {
    *report = "no cgroup2 file system mounted";
    return nullptr;
  }
  const std::string parent =
      absl::StrCat(GroupDirectory(*found, OwnCgroupPath("")), "/parley-sandbox.", suffix);
  if (::mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) {
    *report = absl::StrCat("cgroup2 at ", found->mount_point, " but cannot create ", parent, " (",
                           std::strerror(errno), ")");
    return nullptr;
  }
  if (::access(absl::StrCat(parent, "/cgroup.procs").c_str(), W_OK) != 0) {
    ::rmdir(parent.c_str());
    *report = absl::StrCat(parent, " is not usable");
    return nullptr;
  }
  auto tree = std::unique_ptr<CgroupV2Tree>(new CgroupV2Tree());
  tree->parent_ = parent;
  // A controller reaches our parent group only when whoever delegated our own group
  // enabled it there; we then enable it for the sandboxes.
  std::vector<std::string> enabled, missing;
  const std::string available = ReadControlFile(absl::StrCat(parent, "/cgroup.controllers"));
  for (auto [controller, on] : {std::pair<const char*, bool*>{"memory", &tree->memory_},
                                {"pids", &tree->pids_},
                                {"cpu", &tree->cpu_}}) {
    *on = HasWord(available, controller) &&
          WriteControlFile(absl::StrCat(parent, "/cgroup.subtree_control"),
                           absl::StrCat("+", controller));
    (*on ? enabled : missing).push_back(controller);
  }
  tree->freeze_ = ::access(absl::StrCat(parent, "/cgroup.freeze").c_str(), F_OK) == 0;
  tree->kill_ = ::access(absl::StrCat(parent, "/cgroup.kill").c_str(), F_OK) == 0;
  tree->report_ = absl::StrCat(
      "cgroup2 group ", parent, "; limits: ", enabled.empty() ? "none" : absl::StrJoin(enabled, ", "),
      missing.empty() ? "" : absl::StrCat(" (not delegated: ", absl::StrJoin(missing, ", "), ")"),
      "; freeze: ", tree->freeze_ ? "yes" : "no", "; kill: ", tree->kill_ ? "yes" : "no");
  *report = tree->report_;
  return tree;
}

std::string CgroupV2Tree::LimitsMode() const {
  return memory_ || pids_ || cpu_ ? kCgroupModeV2 : kCgroupModeNone;
}

absl::Status CgroupV2Tree::Create(const std::string& name,
                                  const ::parley::sandbox::v1::SandboxLimits& limits,
                                  uint32_t cpu_percent) const {
  const std::string group = Group(name);
  if (::mkdir(group.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::UnavailableError(absl::StrCat("mkdir ", group, ": ", std::strerror(errno)));
  }
  std::vector<std::pair<std::string, std::string>> writes;
  if (memory_ && limits.memory_bytes() > 0) {
    writes.emplace_back("memory.max", absl::StrCat(limits.memory_bytes()));
    writes.emplace_back("memory.swap.max", "0");
  }
  if (pids_ && limits.max_processes() > 0) {
    writes.emplace_back("pids.max", absl::StrCat(limits.max_processes()));
  }
  if (cpu_ && cpu_percent > 0) writes.emplace_back("cpu.max", absl::StrCat(cpu_percent * 1000, " 100000"));
  for (const auto& [file, value] : writes) {
    const std::string path = absl::StrCat(group, "/", file);
    // memory.swap.max is absent without swap accounting; nothing to cap then.
    if (file == "memory.swap.max" && ::access(path.c_str(), F_OK) != 0) continue;
    if (!WriteControlFile(path, value)) {
      return absl::UnavailableError(
          absl::StrCat("write ", value, " to ", path, ": ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<UniqueFd>> CgroupV2Tree::OpenProcs(const std::string& name) const {
  const std::string path = absl::StrCat(Group(name), "/cgroup.procs");
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return absl::UnavailableError(absl::StrCat("open ", path, ": ", std::strerror(errno)));
  }
  std::vector<UniqueFd> fds;
  fds.push_back(std::move(fd));
  return fds;
}

absl::Status CgroupV2Tree::Freeze(const std::string& name, bool frozen) const {
  const std::string group = Group(name);
  if (!WriteControlFile(absl::StrCat(group, "/cgroup.freeze"), frozen ? "1" : "0")) {
    return absl::UnavailableError(
        absl::StrCat("write ", group, "/cgroup.freeze: ", std::strerror(errno)));
  }
  const std::string want = frozen ? "frozen 1" : "frozen 0";
  // As v1: on a loaded host the tasks can take seconds to stop.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (!absl::StrContains(ReadControlFile(absl::StrCat(group, "/cgroup.events")), want)) {
    if (absl::Now() > give_up) {
      return absl::DeadlineExceededError(absl::StrCat(group, " did not become ", want));
    }
    absl::SleepFor(absl::Microseconds(200));
  }
  return absl::OkStatus();
}

absl::Status CgroupV2Tree::Kill(const std::string& name) const {
  const std::string group = Group(name);
  if (!kill_) return absl::UnimplementedError("no cgroup.kill on this kernel");
  if (!WriteControlFile(absl::StrCat(group, "/cgroup.kill"), "1")) {
    return absl::UnavailableError(
        absl::StrCat("write ", group, "/cgroup.kill: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

void CgroupV2Tree::Remove(const std::string& name) const {
  RemoveGroupDirectory(Group(name), 5000);
}

std::vector<std::string> CgroupV2Tree::ListGroups() const {
  std::vector<std::string> groups;
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

void CgroupV2Tree::ReleaseParent() const {
  if (ListGroups().empty()) ::rmdir(parent_.c_str());
}

}  // namespace parley::sandbox
