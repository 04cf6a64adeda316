// CgroupV1Tree: sandbox groups in the cgroup v1 memory, pids, cpu and freezer
// hierarchies (see cgroup.h), for hosts that mount v1 controllers.
//
// Create() looks up each hierarchy in /proc/self/mountinfo and this process's group in
// it (/proc/self/cgroup), and makes `parley-sandbox.<suffix>/` there. A sandbox's group
// exists in every hierarchy found, with
//   memory: memory.limit_in_bytes, and memory.memsw.limit_in_bytes (memory + swap) set
//           to the same value where swap accounting exists, so swap cannot extend it;
//           the kernel's OOM killer then acts inside the group, not on the host;
//   pids:   pids.max;
//   cpu:    cpu.cfs_quota_us / cpu.cfs_period_us (percent of one CPU);
//   freezer: freezer.state FROZEN / THAWED for pause and resume.
// v1 has no cgroup.kill: Kill() freezes the group, SIGKILLs every listed process and
// thaws it (a frozen v1 task dies only once thawed), until the group is empty.
//
//   std::unique_ptr<CgroupV1Tree> tree = CgroupV1Tree::Create("a1b2c3", &report);
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "sandbox-svc/provider/cgroup.h"

namespace parley::sandbox {

class CgroupV1Tree final : public SandboxCgroups {
 public:
  // Null when neither a v1 memory nor a v1 pids hierarchy is usable; `report` says why.
  static std::unique_ptr<CgroupV1Tree> Create(const std::string& suffix, std::string* report);

  std::string LimitsMode() const override { return kCgroupModeV1; }
  std::string Report() const override { return report_; }
  bool CanFreeze() const override { return !freezer_.empty(); }
  absl::Status Create(const std::string& name, const ::parley::sandbox::v1::SandboxLimits& limits,
                      uint32_t cpu_percent) const override;
  absl::StatusOr<std::vector<UniqueFd>> OpenProcs(const std::string& name) const override;
  absl::Status Freeze(const std::string& name, bool frozen) const override;
  absl::Status Kill(const std::string& name) const override;
  void Remove(const std::string& name) const override;
  std::vector<std::string> ListGroups() const override;
  void ReleaseParent() const override;

 private:
  // Parent directories (ours, under our own group) per hierarchy; empty when absent.
  std::string memory_;
  std::string pids_;
  std::string cpu_;
  std::string freezer_;
  bool memsw_ = false;  // memory.memsw.* exists (swap accounting is on).
  std::string report_;

  std::vector<std::string> Parents() const;
  // Pids listed in the group's cgroup.procs of every hierarchy.
  std::vector<pid_t> Members(const std::string& name) const;
};

}  // namespace parley::sandbox
