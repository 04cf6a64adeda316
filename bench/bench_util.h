// Small measuring helpers the benchmarks share.
//
//   const absl::Duration before = ProcessCpu(pid);  ...  ProcessCpu(pid) - before
//   ProcessTreeCpu(postmaster_pid)   // the same, summed over the live descendants too
//   double p99 = Percentile(latencies_ms, 0.99);
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace parley::bench {

// User + system CPU time of a process so far; zero when it cannot be read.
inline absl::Duration ProcessCpu(int64_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close = stat.rfind(')');  // The command name may hold spaces.
  if (close == std::string::npos) return absl::ZeroDuration();
  std::istringstream fields(stat.substr(close + 2));
  std::string field;
  int64_t utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14) utime = std::stoll(field);
    if (i == 15) stime = std::stoll(field);
  }
  return absl::Seconds(static_cast<double>(utime + stime) / sysconf(_SC_CLK_TCK));
}

// ProcessCpu of `pid` plus that of every live descendant (Postgres's backends are the
// postmaster's children). A descendant that exited meanwhile is not counted, so measure
// across a window in which the process tree stays the same (a connection pool's).
inline absl::Duration ProcessTreeCpu(int64_t pid) {
  absl::Duration total = ProcessCpu(pid);
  std::ifstream children(absl::StrCat("/proc/", pid, "/task/", pid, "/children"));
  for (int64_t child = 0; children >> child;) total += ProcessTreeCpu(child);
  return total;
}

// The q-quantile (0..1) of `values` (nearest rank); 0 when empty.
inline double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1, static_cast<size_t>(q * values.size()))];
}

}  // namespace parley::bench
