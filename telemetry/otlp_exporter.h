// OtlpHttpExporter: a SpanSink that sends finished spans to an OpenTelemetry collector
// over OTLP/HTTP (JSON encoding, POST to .../v1/traces), in batches.
//
//   OtlpExporterOptions options{.traces_url = "http://collector:4318/v1/traces",
//                               .resource = {{"service.name", "parley-session"}}};
//   OtlpHttpExporter exporter(options, registry, logger);
//   Tracer tracer(exporter, Sampler::ParentBased(Sampler::AlwaysOn()));
//
// OnEnd() only appends the span to a bounded queue under a short lock; it never waits
// for the network. When the queue is full the span is dropped and counted
// (parley_otel_spans_dropped_total{reason="queue_full"}): a slow or dead collector costs
// traces, never turn latency. One export thread takes up to `max_export_batch_size`
// spans whenever that many are queued or `schedule_delay` has passed, and POSTs them.
// As the OTLP specification says, 429, 502, 503 and 504 are retried with exponential
// backoff and jitter, honouring a Retry-After header; other failures drop the batch
// (counted with reason="export_failed").
//
// Threads: callers of OnEnd (any thread) and the export thread share only the queue,
// guarded by `mu_`; the export thread holds no lock while it encodes or sends.
// Destruction flushes what is queued (bounded by `export_timeout` per request and by
// `shutdown_timeout` overall) and joins the thread.
#pragma once

#include <atomic>
#include <deque>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "telemetry/log.h"
#include "telemetry/metrics.h"
#include "telemetry/span.h"

namespace parley::telemetry {

struct OtlpExporterOptions {
  // Where spans are POSTed, e.g. "http://127.0.0.1:4318/v1/traces".
  std::string traces_url;
  // Extra request headers (OTEL_EXPORTER_OTLP_HEADERS), e.g. an API key for a vendor.
  std::vector<std::pair<std::string, std::string>> headers;
  // Resource attributes of every span: service.name and OTEL_RESOURCE_ATTRIBUTES.
  Attributes resource;
  size_t max_queue_size = 2048;
  size_t max_export_batch_size = 512;
  // Longest a span waits in the queue before its batch is sent (when the batch is not
  // full earlier).
  absl::Duration schedule_delay = absl::Seconds(5);
  // One POST, connect included.
  absl::Duration export_timeout = absl::Seconds(10);
  // Retries of a batch answered 429/502/503/504 or not answered at all: the first waits
  // `initial_backoff`, each next one 1.5 times longer up to `max_backoff` (with jitter);
  // a Retry-After from the collector replaces the computed wait. `max_attempts`
  // counts the first try.
  absl::Duration initial_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Seconds(5);
  int max_attempts = 5;
  // How long destruction may spend sending what is still queued.
  absl::Duration shutdown_timeout = absl::Seconds(5);
};

class OtlpHttpExporter final : public SpanSink {
 public:
  // Registers its metrics in `registry`; `registry` and `logger` must outlive it.
  OtlpHttpExporter(OtlpExporterOptions options, Registry& registry, const Logger& logger);
  ~OtlpHttpExporter() override;
  OtlpHttpExporter(const OtlpHttpExporter&) = delete;
  OtlpHttpExporter& operator=(const OtlpHttpExporter&) = delete;

  // Queues the span, or drops and counts it when the queue is full. Never blocks on I/O.
  void OnEnd(SpanData span) override;

  // Sends everything queued before the call; true when it all left (exported or given
  // up on) within `timeout`. For tests and orderly shutdown.
  bool ForceFlush(absl::Duration timeout);

  const OtlpExporterOptions& options() const { return options_; }

 private:
  class HttpClient;  // One libcurl handle, used by the export thread only.

  void ExportLoop();
  // Sends one batch with the retries the spec allows; counts the result.
  void ExportWithRetries(HttpClient& http, const std::vector<SpanData>& batch);
  // Sleeps `delay` unless shutdown begins first; false when it did.
  bool SleepUnlessStopping(absl::Duration delay);

  const OtlpExporterOptions options_;
  const Logger& logger_;
  Counter& exported_;
  CounterFamily& dropped_;
  Counter& dropped_queue_full_;
  Counter& dropped_export_failed_;
  Counter& retries_;
  Gauge& queue_size_;

  absl::Mutex mu_;
  std::deque<SpanData> queue_ ABSL_GUARDED_BY(mu_);
  // Spans handed to OnEnd so far, and spans the export thread has finished with
  // (exported, failed or dropped): ForceFlush waits for the second to reach the first.
  uint64_t enqueued_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t done_ ABSL_GUARDED_BY(mu_) = 0;
  bool flush_requested_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time stop_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  // stop_deadline_ for the export thread's transfer callback, which must not lock:
  // a request still in flight then is aborted. Unix nanoseconds; max: no deadline.
  std::atomic<int64_t> abort_after_unix_ns_{std::numeric_limits<int64_t>::max()};
  std::thread thread_;
};

}  // namespace parley::telemetry
