// SandboxCgroups: per-sandbox control groups for the local provider — memory, pids and
// CPU limits across all of a sandbox's processes, freezing for pause, and killing
// whatever is left at destroy. Detected at start and never assumed.
//
// Two implementations, chosen by DetectCgroups() in this order:
//  - CgroupV2Tree (cgroup_v2.h): the cgroup2 hierarchy, where the host delegates the
//    memory/pids/cpu controllers to our group; its core features (cgroup.freeze,
//    cgroup.kill) work without any controller, so a cgroup2 mount with none is still
//    used for pause and destroy when no v1 hierarchy offers limits.
//  - CgroupV1Tree (cgroup_v1.h): the v1 memory, pids, cpu and freezer hierarchies that
//    many hosts (hybrid systemd setups, older container runtimes) still mount.
// A sandbox's group is named after its id and lives under `parley-sandbox.<suffix>/`
// beneath this process's own group in every hierarchy used, so the host's limits on
// us still cover our sandboxes.
//
//   std::unique_ptr<SandboxCgroups> cgroups = DetectCgroups(/*enabled=*/true, "a1b2c3");
//   if (cgroups != nullptr) {
//     cgroups->Create(id, limits, cpu_percent);
//     std::vector<UniqueFd> procs = *cgroups->OpenProcs(id);  // the child joins before exec
//   }
//   LOG: cgroups->Report(), cgroups->LimitsMode()  // "v1"
//
// Thread-safe after construction: implementations only read their own fields, and every
// sandbox's group is separate.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/unique_fd.h"
#include "parley/sandbox/v1/sandbox.pb.h"

namespace parley::sandbox {

// Where the per-sandbox memory/pids/CPU limits of the local provider come from.
inline constexpr char kCgroupModeV2[] = "v2";
inline constexpr char kCgroupModeV1[] = "v1";
inline constexpr char kCgroupModeNone[] = "none";

class SandboxCgroups {
 public:
  virtual ~SandboxCgroups() = default;

  // kCgroupModeV2 or kCgroupModeV1 when at least one of memory/pids/cpu limits a
  // sandbox, kCgroupModeNone when the groups serve only pause and destroy.
  virtual std::string LimitsMode() const = 0;
  // One line on what works here, for the start-up log.
  virtual std::string Report() const = 0;
  // Whether Freeze() works (a freezer exists); without it the provider pauses by SIGSTOP.
  virtual bool CanFreeze() const = 0;

  // Creates the group `name` (a sandbox id) and writes the limits its controllers
  // support: memory (no swap beyond it), processes, and `cpu_percent` of one CPU (0: no
  // cap). UNAVAILABLE when a group or a limit cannot be written.
  virtual absl::Status Create(const std::string& name,
                              const ::parley::sandbox::v1::SandboxLimits& limits,
                              uint32_t cpu_percent) const = 0;
  // The group's cgroup.procs files, opened for writing: a child writes "0" to each
  // before it execs, so nothing of the sandbox ever runs outside its group.
  virtual absl::StatusOr<std::vector<UniqueFd>> OpenProcs(const std::string& name) const = 0;
  // Freezes or thaws every process of the group, waiting (up to 10 s) until it is done.
  virtual absl::Status Freeze(const std::string& name, bool frozen) const = 0;
  // SIGKILLs every process of the group; frozen ones die too. Bounded.
  virtual absl::Status Kill(const std::string& name) const = 0;
  // Removes the group, retrying briefly while killed processes exit. Missing is fine.
  virtual void Remove(const std::string& name) const = 0;
  // Names of the groups under our parent, for garbage collection.
  virtual std::vector<std::string> ListGroups() const = 0;
  // Removes the parent directories when no group is left in them.
  virtual void ReleaseParent() const = 0;
};

// Finds what the host offers (v2 controllers, else v1 hierarchies with limits, else a
// bare cgroup2 for pause and destroy) and creates our parent groups. Null when cgroups
// are off or nothing is usable; `report` then says why.
std::unique_ptr<SandboxCgroups> DetectCgroups(bool enabled, const std::string& suffix,
                                              std::string* report);

}  // namespace parley::sandbox
