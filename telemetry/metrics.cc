// Rendering follows the Prometheus text exposition format: a HELP and TYPE line per
// family, then one line per series; histograms as cumulative _bucket{le=...} series
// plus _sum and _count.
#include "telemetry/metrics.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace parley::telemetry {
namespace {

std::string FormatValue(double value) {
  if (value == static_cast<double>(static_cast<int64_t>(value)) && value < 1e15 && value > -1e15) {
    return absl::StrCat(static_cast<int64_t>(value));
  }
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.9g", value);
  return buffer;
}

std::string Labels(const std::vector<std::string>& names, const std::vector<std::string>& values,
                   absl::string_view extra_name = {}, absl::string_view extra_value = {}) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < values.size(); ++i) {
    absl::StrAppend(&out, out.empty() ? "" : ",", names[i], "=\"", EscapeLabelValue(values[i]),
                    "\"");
  }
  if (!extra_name.empty()) {
    absl::StrAppend(&out, out.empty() ? "" : ",", extra_name, "=\"", extra_value, "\"");
  }
  return out.empty() ? out : absl::StrCat("{", out, "}");
}

void Header(std::string* out, const std::string& name, const std::string& help,
            absl::string_view type) {
  absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

// Resident set size and CPU time of this process, from /proc/self/stat.
void AppendProcessMetrics(std::string* out, double start_time_s) {
  std::ifstream stat("/proc/self/stat");
  std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  // Fields after the parenthesised command name; utime is field 14, stime 15, rss 24.
  size_t close = content.rfind(')');
  if (close != std::string::npos) {
    std::vector<std::string> fields = absl::StrSplit(content.substr(close + 2), ' ');
    if (fields.size() > 21) {
      double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
      double cpu_s = (std::stod(fields[11]) + std::stod(fields[12])) / ticks;
      double rss_bytes = std::stod(fields[21]) * static_cast<double>(sysconf(_SC_PAGESIZE));
      Header(out, "process_cpu_seconds_total", "User and system CPU time spent.", "counter");
      absl::StrAppend(out, "process_cpu_seconds_total ", FormatValue(cpu_s), "\n");
      Header(out, "process_resident_memory_bytes", "Resident memory size.", "gauge");
      absl::StrAppend(out, "process_resident_memory_bytes ", FormatValue(rss_bytes), "\n");
    }
  }
  int fds = 0;
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (readdir(dir) != nullptr) ++fds;
    closedir(dir);
    fds -= 3;  // ".", ".." and the directory's own fd.
  }
  Header(out, "process_open_fds", "Open file descriptors.", "gauge");
  absl::StrAppend(out, "process_open_fds ", fds, "\n");
  Header(out, "process_start_time_seconds", "Start time since the Unix epoch.", "gauge");
  absl::StrAppend(out, "process_start_time_seconds ", FormatValue(start_time_s), "\n");
}

}  // namespace

Histogram::Histogram(const std::vector<double>& bounds)
    : bounds_(bounds), buckets_(new std::atomic<uint64_t>[bounds.size() + 1]) {
  std::sort(bounds_.begin(), bounds_.end());
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0);
}

void Histogram::Observe(double value) {
  size_t index = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  buckets_[index].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::CumulativeCounts() const {
  std::vector<uint64_t> counts(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    counts[i] = running;
  }
  return counts;
}

std::vector<double> LatencyBucketsSeconds() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

std::string EscapeLabelValue(absl::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

Registry::Registry() : start_time_s_(absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch())) {}

CounterFamily& Registry::AddCounter(std::string name, std::string help,
                                    std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  counters_.push_back(std::make_unique<CounterFamily>(std::move(name), std::move(help),
                                                      std::move(label_names),
                                                      [] { return std::make_unique<Counter>(); }));
  return *counters_.back();
}

GaugeFamily& Registry::AddGauge(std::string name, std::string help,
                                std::vector<std::string> label_names) {
  absl::MutexLock lock(&mu_);
  gauges_.push_back(std::make_unique<GaugeFamily>(std::move(name), std::move(help),
                                                  std::move(label_names),
                                                  [] { return std::make_unique<Gauge>(); }));
  return *gauges_.back();
}

HistogramFamily& Registry::AddHistogram(std::string name, std::string help,
                                        std::vector<std::string> label_names,
                                        std::vector<double> bounds) {
  absl::MutexLock lock(&mu_);
  histograms_.push_back(std::make_unique<HistogramFamily>(
      std::move(name), std::move(help), std::move(label_names),
      [bounds = std::move(bounds)] { return std::make_unique<Histogram>(bounds); }));
  return *histograms_.back();
}

std::string Registry::RenderText() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  for (const auto& family : counters_) {
    Header(&out, family->name(), family->help(), "counter");
    family->ForEach([&](const std::vector<std::string>& values, const Counter& counter) {
      absl::StrAppend(&out, family->name(), Labels(family->label_names(), values), " ",
                      FormatValue(counter.value()), "\n");
    });
  }
  for (const auto& family : gauges_) {
    Header(&out, family->name(), family->help(), "gauge");
    family->ForEach([&](const std::vector<std::string>& values, const Gauge& gauge) {
      absl::StrAppend(&out, family->name(), Labels(family->label_names(), values), " ",
                      FormatValue(gauge.value()), "\n");
    });
  }
  for (const auto& family : histograms_) {
    Header(&out, family->name(), family->help(), "histogram");
    family->ForEach([&](const std::vector<std::string>& values, const Histogram& histogram) {
      std::vector<uint64_t> counts = histogram.CumulativeCounts();
      for (size_t i = 0; i < histogram.bounds().size(); ++i) {
        absl::StrAppend(
            &out, family->name(), "_bucket",
            Labels(family->label_names(), values, "le", FormatValue(histogram.bounds()[i])), " ",
            counts[i], "\n");
      }
      absl::StrAppend(&out, family->name(), "_bucket",
                      Labels(family->label_names(), values, "le", "+Inf"), " ", counts.back(),
                      "\n");
      absl::StrAppend(&out, family->name(), "_sum", Labels(family->label_names(), values), " ",
                      FormatValue(histogram.sum()), "\n");
      absl::StrAppend(&out, family->name(), "_count", Labels(family->label_names(), values), " ",
                      histogram.count(), "\n");
    });
  }
  AppendProcessMetrics(&out, start_time_s_);
  return out;
}

}  // namespace parley::telemetry
