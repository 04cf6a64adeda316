// CgroupTree: optional cgroup v2 support for the local provider, detected at start and
// never assumed.
//
// Detect() finds the cgroup2 mount (/proc/self/mountinfo) and this process's cgroup
// (/proc/self/cgroup "0::/path"), creates a parent group `parley-sandbox.<suffix>`
// beneath it, and enables whichever of the memory, pids and cpu controllers the host
// delegates. Each sandbox then gets a child group with memory.max / pids.max / cpu.max
// when those controllers are on; the core v2 features (cgroup.freeze, cgroup.kill) work
// without any controller and are used for pause and destroy.
//
//   CgroupTree cgroups = CgroupTree::Detect(/*enabled=*/true, "a1b2c3");
//   if (cgroups.available()) {
//     std::string group = *cgroups.Create(id, limits);
//     UniqueFd procs = cgroups.OpenProcs(group);   // the child writes itself in
//   }
//   LOG: cgroups.Report()  // "cgroup2 at /sys/fs/cgroup/unified: freeze, kill; no memory, pids,
//   cpu"
//
// Thread-safe after Detect() (it only reads its own fields; every group is separate).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parley/sandbox/v1/sandbox.pb.h"
#include "sandbox-svc/util/unique_fd.h"

namespace parley::sandbox {

class CgroupTree {
 public:
  static CgroupTree Detect(bool enabled, const std::string& suffix);

  bool available() const { return !parent_.empty(); }
  bool has_memory() const { return memory_; }
  bool has_pids() const { return pids_; }
  bool has_cpu() const { return cpu_; }
  const std::string& parent() const { return parent_; }
  // What works here, for the start-up log and the README's "detected and reported".
  std::string Report() const { return report_; }

  // Creates the sandbox's group and writes the limits its controllers support
  // (memory.max, pids.max, and cpu.max from `cpu_percent` of one CPU; 0: no cap).
  absl::StatusOr<std::string> Create(const std::string& id,
                                     const ::parley::sandbox::v1::SandboxLimits& limits,
                                     uint32_t cpu_percent) const;
  // cgroup.procs of a group, opened for writing (a child writes "0" to join).
  absl::StatusOr<UniqueFd> OpenProcs(const std::string& group) const;
  // cgroup.freeze = 1 / 0, waiting (bounded) until cgroup.events says so.
  absl::Status Freeze(const std::string& group, bool frozen) const;
  // SIGKILL to every process of the group (cgroup.kill), without waiting.
  absl::Status Kill(const std::string& group) const;
  // Removes the group, retrying briefly while its killed processes exit.
  void Remove(const std::string& group) const;
  // Groups under the parent (sandbox ids), for garbage collection.
  std::vector<std::string> ListGroups() const;

 private:
  std::string parent_;
  std::string report_;
  bool memory_ = false;
  bool pids_ = false;
  bool cpu_ = false;
};

}  // namespace parley::sandbox
