// Parsing of /proc/self/mountinfo and /proc/self/cgroup, and control-file I/O. Control
// files are small and written with one write(2): the kernel parses each write whole.
#include "sandbox-svc/provider/cgroup_fs.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/unique_fd.h"

namespace parley::sandbox {

std::string ReadControlFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

bool WriteControlFile(const std::string& path, absl::string_view value) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) return false;
  return ::write(fd.get(), value.data(), value.size()) == static_cast<ssize_t>(value.size());
}

bool HasWord(absl::string_view text, absl::string_view word) {
  for (absl::string_view part : absl::StrSplit(text, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
    if (part == word) return true;
  }
  return false;
}

std::vector<CgroupMount> CgroupMounts() {
  std::vector<CgroupMount> mounts;
  std::istringstream lines(ReadControlFile("/proc/self/mountinfo"));
  std::string line;
  while (std::getline(lines, line)) {
    // "<id> <parent> <dev> <root> <mount point> <options> ... - <type> <source> <super options>"
    size_t dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::vector<std::string> after = absl::StrSplit(line.substr(dash + 3), ' ');
    std::vector<std::string> before = absl::StrSplit(line.substr(0, dash), ' ');
    if (after.empty() || before.size() < 5) continue;
    CgroupMount mount;
    mount.root = before[3];
    mount.mount_point = before[4];
    if (after[0] == "cgroup2") {
      mount.v2 = true;
    } else if (after[0] == "cgroup" && after.size() >= 3) {
      for (absl::string_view option : absl::StrSplit(after[2], ',')) {
        if (option != "rw" && option != "ro" && !absl::StartsWith(option, "name=")) {
          mount.controllers.emplace_back(option);
        }
      }
    } else {
      continue;
    }
    mounts.push_back(std::move(mount));
  }
  return mounts;
}

std::string OwnCgroupPath(absl::string_view controller) {
  std::istringstream lines(ReadControlFile("/proc/self/cgroup"));
  std::string line;
  while (std::getline(lines, line)) {
    // "<id>:<controllers>:<path>"; cgroup2 is "0::<path>".
    std::vector<std::string> fields = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) continue;
    if (controller.empty() ? fields[0] == "0" && fields[1].empty()
                           : HasWord(absl::StrReplaceAll(fields[1], {{",", " "}}), controller)) {
      return fields[2];
    }
  }
  return "";
}

std::string GroupDirectory(const CgroupMount& mount, const std::string& own) {
  std::string relative = own;
  if (mount.root != "/" && absl::StartsWith(relative, mount.root)) {
    relative = relative.substr(mount.root.size());
  }
  if (relative == "/") relative.clear();
  return absl::StrCat(mount.mount_point, relative);
}

void RemoveGroupDirectory(const std::string& path, int timeout_ms) {
  const absl::Time give_up = absl::Now() + absl::Milliseconds(timeout_ms);
  while (::rmdir(path.c_str()) != 0 && errno == EBUSY && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(2));
  }
}

}  // namespace parley::sandbox
