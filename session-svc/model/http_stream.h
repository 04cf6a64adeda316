// PostStream: one HTTP POST whose response body is streamed to the caller as it
// arrives — how model providers are called (libcurl; HTTP/1.1, or HTTP/2 over TLS).
//
// The transfer runs on the calling thread. A stop request of the turn ends it at once:
// the StopSignal hook wakes libcurl's poll, which then aborts the transfer, so a cancel
// never waits for the model's next byte (stopping() is also polled every 200 ms, for
// stops that fire no hook, like a time limit). A server that sends nothing for idle_timeout
// is a transport failure, as are resets, refused connections and truncated transfers.
//
//   HttpResult result = PostStream({.url = u, .headers = h, .body = b},
//                                  [&](absl::string_view bytes) { return parser.Feed(bytes).ok();
//                                  }, stop);
//   if (result.transport_error) ...; else if (result.status / 100 != 2) ...;
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "session-svc/turn/turn_control.h"

namespace parley::session::model {

struct HttpPost {
  std::string url;
  // "Name: value" lines. Never logged: they carry credentials.
  std::vector<std::string> headers;
  std::string body;
  absl::Duration connect_timeout = absl::Seconds(10);
  // No byte for this long ends the transfer (a stalled model).
  absl::Duration idle_timeout = absl::Minutes(5);
};

struct HttpResult {
  // The response status; 0 when none was received.
  int status = 0;
  // The body of a non-2xx response (at most 64 KiB), for its error message.
  std::string error_body;
  // From Retry-After (seconds or an HTTP date) or retry-after-ms.
  std::optional<absl::Duration> retry_after;
  // Set when the transfer failed below HTTP (reset, timeout, refused, truncated).
  std::optional<std::string> transport_error;
  // Whether trying the same request again may succeed (see IsRetryableCurlError).
  bool transport_retryable = true;
  // True when the turn's stop or the body callback ended the transfer.
  bool aborted = false;
};

// Whether a transfer that failed with libcurl's CURLcode `code` may succeed when sent
// again: connection failures, resets, timeouts, truncated bodies and HTTP/2 stream or
// session resets (a proxy restarting, a server shedding load) are; a malformed URL, an
// unsupported protocol, a certificate that does not verify or a refused login are not,
// and retrying them only delays the error the user must fix.
bool IsRetryableCurlError(int code);

// `on_body` gets the chunks of a 2xx body in order and returns false to abort.
HttpResult PostStream(const HttpPost& post, const std::function<bool(absl::string_view)>& on_body,
                      StopSignal& stop);

}  // namespace parley::session::model
