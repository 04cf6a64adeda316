// Prometheus metrics: counters, gauges and histograms with labels, rendered in the text
// exposition format on each service's admin port at /metrics.
//
//   Registry registry;
//   CounterFamily& calls = registry.AddCounter("parley_grpc_server_handled_total",
//                                             "RPCs completed", {"method", "code"});
//   calls.WithLabels({"/parley.v1.SessionService/GetSession", "OK"}).Increment();
//   std::string text = registry.RenderText();
//
// Label values must come from small fixed sets (method names, status codes, tool
// names): never put ids in labels. Families and their series live as long as the
// registry, so references returned by WithLabels() stay valid; hot paths keep them.
// Recording is lock-free; looking up a series takes a short lock.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace parley::telemetry {

class Counter {
 public:
  void Increment(double amount = 1.0) { value_.fetch_add(amount, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double amount) { value_.fetch_add(amount, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  // `bounds` are the upper bounds of the buckets, ascending; +Inf is implied.
  explicit Histogram(const std::vector<double>& bounds);
  void Observe(double value);

  const std::vector<double>& bounds() const { return bounds_; }
  // Cumulative count of observations <= bounds()[i]; the last entry is the total.
  std::vector<uint64_t> CumulativeCounts() const;
  double sum() const { return sum_.load(std::memory_order_relaxed); }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1 entries.
  std::atomic<double> sum_{0.0};
  std::atomic<uint64_t> count_{0};
};

// Latency buckets in seconds, 0.5 ms to 60 s.
std::vector<double> LatencyBucketsSeconds();

template <typename Metric>
class Family {
 public:
  Family(std::string name, std::string help, std::vector<std::string> label_names,
         std::function<std::unique_ptr<Metric>()> make)
      : name_(std::move(name)),
        help_(std::move(help)),
        label_names_(std::move(label_names)),
        make_(std::move(make)) {}

  // The series for these label values (one per label name, in order). Thread-safe.
  Metric& WithLabels(const std::vector<std::string>& values) {
    absl::MutexLock lock(&mu_);
    std::unique_ptr<Metric>& metric = series_[values];
    if (!metric) metric = make_();
    return *metric;
  }

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& label_names() const { return label_names_; }

  // Calls `visit(label_values, metric)` for every series, sorted by labels.
  template <typename Visit>
  void ForEach(Visit visit) const {
    absl::MutexLock lock(&mu_);
    for (const auto& [values, metric] : series_) visit(values, *metric);
  }

 private:
  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const std::function<std::unique_ptr<Metric>()> make_;
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<Metric>> series_ ABSL_GUARDED_BY(mu_);
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;

class Registry {
 public:
  Registry();
  // Names must be unique within a registry and match [a-zA-Z_:][a-zA-Z0-9_:]*.
  CounterFamily& AddCounter(std::string name, std::string help,
                            std::vector<std::string> label_names = {});
  GaugeFamily& AddGauge(std::string name, std::string help,
                        std::vector<std::string> label_names = {});
  HistogramFamily& AddHistogram(std::string name, std::string help,
                                std::vector<std::string> label_names,
                                std::vector<double> bounds = LatencyBucketsSeconds());

  // The whole registry in Prometheus text format 0.0.4, plus process metrics
  // (resident memory, CPU seconds, open fds, start time).
  std::string RenderText() const;

 private:
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<CounterFamily>> counters_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<GaugeFamily>> gauges_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<HistogramFamily>> histograms_ ABSL_GUARDED_BY(mu_);
  double start_time_s_;
};

// Escapes a label value for the text format (backslash, quote, newline).
std::string EscapeLabelValue(absl::string_view value);

}  // namespace parley::telemetry
