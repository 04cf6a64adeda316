// Which cgroup implementation the local provider uses on this host (see cgroup.h).
#include "sandbox-svc/provider/cgroup.h"

#include "absl/strings/str_cat.h"
#include "sandbox-svc/provider/cgroup_v1.h"
#include "sandbox-svc/provider/cgroup_v2.h"

namespace parley::sandbox {

std::unique_ptr<SandboxCgroups> DetectCgroups(bool enabled, const std::string& suffix,
                                              std::string* report) {
  if (!enabled) {
    *report = "cgroups: off (--cgroup=off); rlimits only, pause by SIGSTOP";
    return nullptr;
  }
  std::string v2_report, v1_report;
  std::unique_ptr<CgroupV2Tree> v2 = CgroupV2Tree::Create(suffix, &v2_report);
  if (v2 != nullptr && v2->LimitsMode() == kCgroupModeV2) {
    *report = absl::StrCat("cgroups: mode v2; ", v2_report);
    return v2;
  }
  // A hybrid host: cgroup2 without controllers beside v1 hierarchies that have them.
  if (std::unique_ptr<CgroupV1Tree> v1 = CgroupV1Tree::Create(suffix, &v1_report)) {
    if (v2 != nullptr) v2->ReleaseParent();
    *report = absl::StrCat("cgroups: mode v1; ", v1_report,
                           v2 != nullptr ? "; cgroup2 has no limit controllers for us" : "");
    return v1;
  }
  if (v2 != nullptr) {
    *report = absl::StrCat("cgroups: mode none (no limit controllers: ", v1_report,
                           "); rlimits only; ", v2_report);
    return v2;
  }
  *report = absl::StrCat("cgroups: mode none; ", v2_report, "; ", v1_report,
                         "; rlimits only, pause by SIGSTOP");
  return nullptr;
}

}  // namespace parley::sandbox
