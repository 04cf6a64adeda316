// File-system helpers shared by the cgroup implementations: reading and writing control
// files, and finding where this process sits in each mounted hierarchy.
//
//   for (const CgroupMount& mount : CgroupMounts()) ...      // from /proc/self/mountinfo
//   std::string own = OwnCgroupPath("memory");               // from /proc/self/cgroup
//   std::string base = GroupDirectory(mount, own);           // "/sys/fs/cgroup/memory/a/b"
#pragma once

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace parley::sandbox {

// One mounted cgroup hierarchy.
struct CgroupMount {
  std::string mount_point;  // e.g. "/sys/fs/cgroup/memory".
  std::string root;         // The hierarchy's path mounted there (not "/" in containers).
  bool v2 = false;          // cgroup2, else a v1 hierarchy.
  std::vector<std::string> controllers;  // v1: from the super options ("memory", "cpu", …).
};

std::vector<CgroupMount> CgroupMounts();

// This process's path in the hierarchy of `controller` (v1), or in cgroup2 for "";
// empty when there is none.
std::string OwnCgroupPath(absl::string_view controller);

// The directory of cgroup path `own` under `mount` (paths in /proc/self/cgroup are
// relative to the hierarchy's root, which a container may mount somewhere below).
std::string GroupDirectory(const CgroupMount& mount, const std::string& own);

// Whole small control file, or "" when unreadable.
std::string ReadControlFile(const std::string& path);
// One write of `value`; false (errno set) when refused.
bool WriteControlFile(const std::string& path, absl::string_view value);
// Whether `word` is one of the space- or newline-separated words of `text`.
bool HasWord(absl::string_view text, absl::string_view word);
// rmdir, retried for up to `timeout_ms` while the group still has tasks (EBUSY).
void RemoveGroupDirectory(const std::string& path, int timeout_ms);

}  // namespace parley::sandbox
