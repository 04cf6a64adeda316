// The export thread's loop: wait until a batch is due (full, delay passed, flush or
// shutdown), take it from the queue, send it with retries, count the result, repeat.
// The queue is a deque under one mutex: OnEnd is a push_back and, once per full batch,
// a CondVar signal, so callers pay no syscall per span.
#include "telemetry/otlp_exporter.h"

#include <curl/curl.h>
#include <pthread.h>

#include <algorithm>
#include <mutex>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/retry.h"
#include "telemetry/otlp_json.h"

namespace parley::telemetry {

class OtlpHttpExporter::HttpClient {
 public:
  enum class Outcome { kExported, kRetryable, kFailed };
  struct Response {
    Outcome outcome = Outcome::kFailed;
    std::optional<absl::Duration> retry_after;
    std::string error;  // Why it was not exported, for the log.
  };

  HttpClient(const OtlpExporterOptions& options, const std::atomic<int64_t>& abort_after_unix_ns)
      : options_(options), abort_after_unix_ns_(abort_after_unix_ns) {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
    curl_ = curl_easy_init();
    headers_ = curl_slist_append(headers_, "Content-Type: application/json");
    for (const auto& [name, value] : options.headers) {
      headers_ = curl_slist_append(headers_, absl::StrCat(name, ": ", value).c_str());
    }
  }
  ~HttpClient() {
    curl_slist_free_all(headers_);
    if (curl_ != nullptr) curl_easy_cleanup(curl_);
  }
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // One POST of `body`. The handle keeps its connection alive between batches.
  Response Post(const std::string& body) {
    if (curl_ == nullptr) return {.error = "curl_easy_init failed"};
    retry_after_.reset();
    response_body_.clear();
    curl_easy_setopt(curl_, CURLOPT_URL, options_.traces_url.c_str());
    curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, headers_);
    curl_easy_setopt(curl_, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(curl_, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl_, CURLOPT_TIMEOUT_MS,
                     static_cast<long>(absl::ToInt64Milliseconds(options_.export_timeout)));
    curl_easy_setopt(curl_, CURLOPT_HEADERFUNCTION, &HttpClient::OnHeader);
    curl_easy_setopt(curl_, CURLOPT_HEADERDATA, this);
    curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, &HttpClient::OnBody);
    curl_easy_setopt(curl_, CURLOPT_WRITEDATA, this);
    curl_easy_setopt(curl_, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl_, CURLOPT_XFERINFOFUNCTION, &HttpClient::OnProgress);
    curl_easy_setopt(curl_, CURLOPT_XFERINFODATA, this);
    CURLcode code = curl_easy_perform(curl_);
    if (code != CURLE_OK) {
      // Not answered (refused, reset, timed out): transient by the spec's reading.
      return {.outcome = Outcome::kRetryable, .error = curl_easy_strerror(code)};
    }
    long status = 0;
    curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200 && status < 300) return {.outcome = Outcome::kExported};
    std::string error = absl::StrCat("HTTP ", status, ": ", response_body_.substr(0, 200));
    if (status == 429 || status == 502 || status == 503 || status == 504) {
      return {.outcome = Outcome::kRetryable, .retry_after = retry_after_, .error = error};
    }
    return {.outcome = Outcome::kFailed, .error = error};
  }

 private:
  static size_t OnHeader(char* data, size_t size, size_t count, void* self) {
    absl::string_view line(data, size * count);
    auto* client = static_cast<HttpClient*>(self);
    constexpr absl::string_view kRetryAfter = "retry-after:";
    if (line.size() > kRetryAfter.size() &&
        absl::EqualsIgnoreCase(line.substr(0, kRetryAfter.size()), kRetryAfter)) {
      client->retry_after_ = ParseRetryAfter(absl::StripAsciiWhitespace(line.substr(12)));
    }
    return size * count;
  }
  static size_t OnBody(char* data, size_t size, size_t count, void* self) {
    auto* client = static_cast<HttpClient*>(self);
    if (client->response_body_.size() < 4096) client->response_body_.append(data, size * count);
    return size * count;
  }
  // Called about once a second while a transfer runs, and on every network event: a
  // non-zero return aborts it (shutdown past its deadline must not wait for a collector
  // that never answers).
  static int OnProgress(void* self, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    auto* client = static_cast<HttpClient*>(self);
    return absl::ToUnixNanos(absl::Now()) >=
                   client->abort_after_unix_ns_.load(std::memory_order_relaxed)
               ? 1
               : 0;
  }
  // Retry-After is either delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
  static std::optional<absl::Duration> ParseRetryAfter(absl::string_view value) {
    int64_t seconds = 0;
    if (absl::SimpleAtoi(value, &seconds)) {
      return seconds >= 0 ? std::optional(absl::Seconds(seconds)) : std::nullopt;
    }
    time_t at = curl_getdate(std::string(value).c_str(), nullptr);
    if (at < 0) return std::nullopt;
    return std::max(absl::ZeroDuration(), absl::FromTimeT(at) - absl::Now());
  }

  const OtlpExporterOptions& options_;
  const std::atomic<int64_t>& abort_after_unix_ns_;
  CURL* curl_ = nullptr;
  curl_slist* headers_ = nullptr;
  std::optional<absl::Duration> retry_after_;
  std::string response_body_;
};

OtlpHttpExporter::OtlpHttpExporter(OtlpExporterOptions options, Registry& registry,
                                   const Logger& logger)
    : options_(std::move(options)),
      logger_(logger),
      exported_(
          registry
              .AddCounter("parley_otel_spans_exported_total", "Spans the OTLP collector accepted.")
              .WithLabels({})),
      dropped_(registry.AddCounter("parley_otel_spans_dropped_total",
                                   "Spans not exported, by reason (queue_full: the export "
                                   "queue was full; export_failed: the collector refused "
                                   "them or stayed unreachable).",
                                   {"reason"})),
      dropped_queue_full_(dropped_.WithLabels({"queue_full"})),
      dropped_export_failed_(dropped_.WithLabels({"export_failed"})),
      retries_(registry
                   .AddCounter("parley_otel_export_retries_total",
                               "OTLP export requests repeated after 429/502/503/504 or no answer.")
                   .WithLabels({})),
      queue_size_(registry.AddGauge("parley_otel_queue_spans", "Spans waiting to be exported.")
                      .WithLabels({})) {
  thread_ = std::thread([this] { ExportLoop(); });
}

OtlpHttpExporter::~OtlpHttpExporter() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    stop_deadline_ = absl::Now() + options_.shutdown_timeout;
    abort_after_unix_ns_.store(absl::ToUnixNanos(stop_deadline_));
  }
  thread_.join();
}

void OtlpHttpExporter::OnEnd(SpanData span) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || queue_.size() >= options_.max_queue_size) {
    dropped_queue_full_.Increment();
    return;
  }
  queue_.push_back(std::move(span));
  ++enqueued_;
  queue_size_.Set(static_cast<double>(queue_.size()));
  // The export thread wakes itself on a full batch (its wait condition reads the size).
}

bool OtlpHttpExporter::ForceFlush(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  const uint64_t target = enqueued_;
  flush_requested_ = true;
  auto flushed = [this, target]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return done_ >= target; };
  return mu_.AwaitWithTimeout(absl::Condition(&flushed), timeout);
}

void OtlpHttpExporter::ExportLoop() {
  // Named, so `top -H` and profiles show what the export costs apart from the service.
  pthread_setname_np(pthread_self(), "otlp-export");
  HttpClient http(options_, abort_after_unix_ns_);
  for (;;) {
    std::vector<SpanData> batch;
    {
      absl::MutexLock lock(&mu_);
      auto due = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return queue_.size() >= options_.max_export_batch_size || flush_requested_ || stopping_;
      };
      mu_.AwaitWithTimeout(absl::Condition(&due), options_.schedule_delay);
      if (queue_.empty()) {
        flush_requested_ = false;
        if (stopping_) return;
        continue;
      }
      if (stopping_ && absl::Now() >= stop_deadline_) {
        dropped_export_failed_.Increment(static_cast<double>(queue_.size()));
        done_ += queue_.size();
        queue_.clear();
        queue_size_.Set(0);
        return;
      }
      const size_t take = std::min(queue_.size(), options_.max_export_batch_size);
      batch.reserve(take);
      std::move(queue_.begin(), queue_.begin() + static_cast<ptrdiff_t>(take),
                std::back_inserter(batch));
      queue_.erase(queue_.begin(), queue_.begin() + static_cast<ptrdiff_t>(take));
      queue_size_.Set(static_cast<double>(queue_.size()));
    }
    ExportWithRetries(http, batch);
    absl::MutexLock lock(&mu_);
    done_ += batch.size();
  }
}

void OtlpHttpExporter::ExportWithRetries(HttpClient& http, const std::vector<SpanData>& batch) {
  const std::string body = EncodeExportTraceRequest(options_.resource, "parley", batch);
  // Jitter of up to half the step keeps many replicas from retrying in step.
  const BackoffPolicy policy{.initial = options_.initial_backoff,
                             .max = options_.max_backoff,
                             .multiplier = 1.5,
                             .jitter = 0.5};
  absl::BitGen jitter;
  for (int attempt = 1;; ++attempt) {
    HttpClient::Response response = http.Post(body);
    if (response.outcome == HttpClient::Outcome::kExported) {
      exported_.Increment(static_cast<double>(batch.size()));
      return;
    }
    const bool retry =
        response.outcome == HttpClient::Outcome::kRetryable && attempt < options_.max_attempts;
    if (!retry) {
      dropped_export_failed_.Increment(static_cast<double>(batch.size()));
      logger_.Warn("otlp export failed; spans dropped",
                   {{"spans", static_cast<int64_t>(batch.size())},
                    {"attempts", attempt},
                    {"error", response.error}});
      return;
    }
    const absl::Duration wait = response.retry_after.value_or(
        BackoffDelay(policy, attempt - 1, absl::Uniform(jitter, 0.0, 1.0)));
    retries_.Increment();
    if (!SleepUnlessStopping(wait)) {
      dropped_export_failed_.Increment(static_cast<double>(batch.size()));
      return;
    }
  }
}

bool OtlpHttpExporter::SleepUnlessStopping(absl::Duration delay) {
  absl::MutexLock lock(&mu_);
  auto stopping = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
  return !mu_.AwaitWithTimeout(absl::Condition(&stopping), delay);
}

}  // namespace parley::telemetry
