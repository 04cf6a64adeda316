// A streamed POST over libcurl's multi interface: the only way to wait for bytes and
// still be woken at once from another thread (curl_multi_wakeup) when the turn stops.
#include "session-svc/model/http_stream.h"

#include <curl/curl.h>

#include <atomic>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace parley::session::model {
namespace {

constexpr size_t kMaxErrorBody = 64 << 10;

struct Transfer {
  CURL* easy = nullptr;
  const std::function<bool(absl::string_view)>* on_body = nullptr;
  HttpResult* result = nullptr;
  bool body_aborted = false;
};

long StatusOf(CURL* easy) {
  long status = 0;
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
  return status;
}

size_t OnWrite(char* data, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  const size_t bytes = size * count;
  const long status = StatusOf(transfer->easy);
  if (status / 100 != 2) {
    std::string& body = transfer->result->error_body;
    body.append(data, std::min(bytes, kMaxErrorBody - std::min(kMaxErrorBody, body.size())));
    return bytes;
  }
  if (!(*transfer->on_body)(absl::string_view(data, bytes))) {
    transfer->body_aborted = true;
    return CURL_WRITEFUNC_ERROR;
  }
  return bytes;
}

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  const size_t bytes = size * count;
  absl::string_view line = absl::StripAsciiWhitespace(absl::string_view(data, bytes));
  const size_t colon = line.find(':');
  if (colon == absl::string_view::npos) return bytes;
  const std::string name = absl::AsciiStrToLower(line.substr(0, colon));
  absl::string_view value = absl::StripAsciiWhitespace(line.substr(colon + 1));
  double number = 0;
  if (name == "retry-after-ms" && absl::SimpleAtod(value, &number) && number >= 0) {
    transfer->result->retry_after = absl::Milliseconds(number);
  } else if (name == "retry-after" && !transfer->result->retry_after) {
    if (absl::SimpleAtod(value, &number) && number >= 0) {
      transfer->result->retry_after = absl::Seconds(number);
    } else {
      const time_t when = curl_getdate(std::string(value).c_str(), nullptr);
      if (when > 0) {
        transfer->result->retry_after =
            std::max(absl::ZeroDuration(), absl::FromTimeT(when) - absl::Now());
      }
    }
  }
  return bytes;
}

void GlobalInit() {
  static const bool initialized = [] {
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
  }();
  (void)initialized;
}

}  // namespace

bool IsRetryableCurlError(int code) {
  switch (static_cast<CURLcode>(code)) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_HTTP2:         // The HTTP/2 session failed (GOAWAY, framing, reset).
    case CURLE_PARTIAL_FILE:  // The body ended before its announced length.
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_HTTP2_STREAM:  // RST_STREAM on this request's stream.
    case CURLE_HTTP3:
    case CURLE_QUIC_CONNECT_ERROR:
      return true;
    default:
      return false;
  }
}

HttpResult PostStream(const HttpPost& post, const std::function<bool(absl::string_view)>& on_body,
                      StopSignal& stop) {
  GlobalInit();
  HttpResult result;
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> easy(curl_easy_init(), curl_easy_cleanup);
  std::unique_ptr<CURLM, decltype(&curl_multi_cleanup)> multi(curl_multi_init(),
                                                              curl_multi_cleanup);
  if (easy == nullptr || multi == nullptr) {
    result.transport_error = "could not start an HTTP transfer";
    return result;
  }
  Transfer transfer{.easy = easy.get(), .on_body = &on_body, .result = &result};
  curl_slist* headers = nullptr;
  for (const std::string& header : post.headers)
    headers = curl_slist_append(headers, header.c_str());
  std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> header_list(headers,
                                                                          curl_slist_free_all);
  CURL* e = easy.get();
  curl_easy_setopt(e, CURLOPT_URL, post.url.c_str());
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, post.body.data());
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(post.body.size()));
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, OnWrite);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(post.connect_timeout)));
  // Fewer than 1 byte/s over the idle window ends the transfer.
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME,
                   std::max<long>(1, static_cast<long>(absl::ToInt64Seconds(post.idle_timeout))));
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_multi_add_handle(multi.get(), e);

  std::atomic<bool> stopped{false};
  CURLM* m = multi.get();
  std::unique_ptr<StopHook> hook = stop.OnStop([&stopped, m] {
    stopped.store(true);
    curl_multi_wakeup(m);
  });
  int running = 1;
  // A stop request wakes the poll at once; stopping() also covers the turn's time limit,
  // which fires no hook, so the poll wakes every 200 ms to look.
  while (running > 0 && !stopped.load()) {
    if (curl_multi_perform(m, &running) != CURLM_OK) break;
    if (running > 0) curl_multi_poll(m, nullptr, 0, 200, nullptr);
    if (stop.stopping()) stopped.store(true);
  }
  hook.reset();
  result.status = static_cast<int>(StatusOf(e));
  if (stopped.load()) {
    result.aborted = true;
  } else {
    int queued = 0;
    while (CURLMsg* message = curl_multi_info_read(m, &queued)) {
      if (message->msg != CURLMSG_DONE || message->data.result == CURLE_OK) continue;
      if (transfer.body_aborted) {
        result.aborted = true;
      } else {
        result.transport_error = curl_easy_strerror(message->data.result);
        result.transport_retryable = IsRetryableCurlError(message->data.result);
      }
    }
  }
  curl_multi_remove_handle(m, e);
  return result;
}

}  // namespace parley::session::model
