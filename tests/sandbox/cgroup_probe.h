// What the host says about a process's cgroups, read from outside the provider: the
// group a pid is in (/proc/<pid>/cgroup), that group's control files, and which cgroup
// mode this host should give sandboxes. Tests compare the provider's claims with these.
//
//   std::string mode = ExpectedCgroupMode();               // "v1" on a v1 host
//   std::string memory = CgroupDirOf(init_pid, "memory");  // v1 hierarchy dir, or cgroup2 dir
//   int64_t kills = KeyedCounter(ReadText(memory + "/memory.oom_control"), "oom_kill");
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "sandbox-svc/provider/cgroup_fs.h"

namespace parley::testing {

inline std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

inline std::string Trim(const std::string& text) {
  return std::string(absl::StripAsciiWhitespace(text));
}

// The value after `key` in a "key value" per line file (memory.events, pids.events,
// memory.oom_control); -1 when absent.
inline int64_t KeyedCounter(const std::string& text, const std::string& key) {
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<std::string> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
    int64_t value = 0;
    if (fields.size() == 2 && fields[0] == key && absl::SimpleAtoi(fields[1], &value)) {
      return value;
    }
  }
  return -1;
}

// The cgroup mode this host should give sandboxes: PARLEY_EXPECT_CGROUP_MODE when set,
// else "v2" when our cgroup2 group offers the memory and pids controllers, "v1" when v1
// memory and pids hierarchies are mounted, otherwise "none".
inline std::string ExpectedCgroupMode() {
  if (const char* forced = std::getenv("PARLEY_EXPECT_CGROUP_MODE"); forced && *forced) {
    return forced;
  }
  bool v1_memory = false, v1_pids = false;
  for (const sandbox::CgroupMount& mount : sandbox::CgroupMounts()) {
    if (mount.v2) {
      const std::string controllers = ReadText(
          sandbox::GroupDirectory(mount, sandbox::OwnCgroupPath("")) + "/cgroup.controllers");
      if (sandbox::HasWord(controllers, "memory") && sandbox::HasWord(controllers, "pids")) {
        return "v2";
      }
      continue;
    }
    for (const std::string& controller : mount.controllers) {
      v1_memory |= controller == "memory";
      v1_pids |= controller == "pids";
    }
  }
  return v1_memory && v1_pids ? "v1" : "none";
}

// The directory of the group `pid` is in: in the v1 hierarchy of `controller`, or in
// cgroup2 when `controller` is "" (or has no v1 hierarchy). "" when not found.
inline std::string CgroupDirOf(pid_t pid, const std::string& controller) {
  std::istringstream lines(ReadText(absl::StrCat("/proc/", pid, "/cgroup")));
  std::string line, v2_path, v1_path;
  while (std::getline(lines, line)) {
    std::vector<std::string> fields = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) continue;
    if (fields[0] == "0" && fields[1].empty()) v2_path = fields[2];
    for (absl::string_view name : absl::StrSplit(fields[1], ',')) {
      if (!controller.empty() && name == controller) v1_path = fields[2];
    }
  }
  for (const sandbox::CgroupMount& mount : sandbox::CgroupMounts()) {
    if (!v1_path.empty() && !mount.v2) {
      for (const std::string& name : mount.controllers) {
        if (name == controller) return sandbox::GroupDirectory(mount, v1_path);
      }
    }
    if (v1_path.empty() && mount.v2 && !v2_path.empty()) {
      return sandbox::GroupDirectory(mount, v2_path);
    }
  }
  return "";
}

// Whether the group of `pid` is frozen: v1 freezer.state FROZEN, or cgroup2 "frozen 1".
inline bool CgroupFrozen(pid_t pid) {
  if (std::string freezer = CgroupDirOf(pid, "freezer");
      !freezer.empty() && ::access((freezer + "/freezer.state").c_str(), F_OK) == 0) {
    return Trim(ReadText(freezer + "/freezer.state")) == "FROZEN";
  }
  return KeyedCounter(ReadText(CgroupDirOf(pid, "") + "/cgroup.events"), "frozen") == 1;
}

}  // namespace parley::testing
