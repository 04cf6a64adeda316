// What every provider shares: how a sandbox's limits become parley-sandboxd flags.
#include "sandbox-svc/provider/provider.h"

#include "absl/strings/str_cat.h"

namespace parley::sandbox {

std::vector<std::string> SandboxdLimitFlags(const ::parley::sandbox::v1::SandboxLimits& limits) {
  std::vector<std::string> flags;
  auto flag = [&flags](const char* name, uint64_t value) {
    if (value > 0) flags.push_back(absl::StrCat("--", name, "=", value));
  };
  flag("rlimit_as_bytes", limits.memory_bytes());
  flag("rlimit_cpu_s", (limits.cpu_ms() + 999) / 1000);
  flag("rlimit_nproc", limits.max_processes());
  flag("rlimit_nofile", limits.max_open_files());
  flag("rlimit_fsize_bytes", limits.max_file_size_bytes());
  return flags;
}

}  // namespace parley::sandbox
