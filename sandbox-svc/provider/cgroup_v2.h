// CgroupV2Tree: sandbox groups in the cgroup2 hierarchy (see cgroup.h).
//
// Create() finds the cgroup2 mount and this process's group, makes
// `parley-sandbox.<suffix>/` beneath it, and enables whichever of the memory, pids and
// cpu controllers reach it (we never change our own group's subtree_control: delegation
// is the host's or the service manager's decision). Each sandbox's group then gets
// memory.max (+ memory.swap.max 0), pids.max and cpu.max for the controllers that are
// on; cgroup.freeze and cgroup.kill work with none.
//
//   std::unique_ptr<CgroupV2Tree> tree = CgroupV2Tree::Create("a1b2c3", &report);
//   if (tree != nullptr && tree->LimitsMode() == kCgroupModeV2) ...
#pragma once

#include <memory>
#include <string>

#include "sandbox-svc/provider/cgroup.h"

namespace parley::sandbox {

class CgroupV2Tree final : public SandboxCgroups {
 public:
  // Null when there is no usable cgroup2 group for us; `report` says why.
  static std::unique_ptr<CgroupV2Tree> Create(const std::string& suffix, std::string* report);

  std::string LimitsMode() const override;
  std::string Report() const override { return report_; }
  bool CanFreeze() const override { return freeze_; }
  absl::Status Create(const std::string& name, const ::parley::sandbox::v1::SandboxLimits& limits,
                      uint32_t cpu_percent) const override;
  absl::StatusOr<std::vector<UniqueFd>> OpenProcs(const std::string& name) const override;
  absl::Status Freeze(const std::string& name, bool frozen) const override;
  absl::Status Kill(const std::string& name) const override;
  void Remove(const std::string& name) const override;
  std::vector<std::string> ListGroups() const override;
  void ReleaseParent() const override;

 private:
  std::string Group(const std::string& name) const { return parent_ + "/" + name; }

  std::string parent_;
  std::string report_;
  bool memory_ = false;
  bool pids_ = false;
  bool cpu_ = false;
  bool freeze_ = false;
  bool kill_ = false;
};

}  // namespace parley::sandbox
