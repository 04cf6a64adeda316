// The provider errors every wire format shares: what a status code means for retries.
#include "session-svc/model/model.h"

#include "absl/strings/str_cat.h"

namespace parley::session::model {

ProviderError HttpStatusError(int status_code, absl::string_view detail,
                              std::optional<absl::Duration> retry_after) {
  ProviderError error;
  error.status_code = status_code;
  error.retry_after = retry_after;
  error.retryable = status_code == 408 || status_code == 409 || status_code == 429 ||
                    (status_code >= 500 && status_code <= 599);
  if (status_code == 429) {
    error.reason = "rate limited (429)";
  } else if (status_code >= 500) {
    error.reason = absl::StrCat("server error (", status_code, ")");
  } else {
    error.reason = absl::StrCat("request refused (", status_code, ")");
  }
  error.message =
      detail.empty() ? absl::StrCat("the model provider answered HTTP ", status_code)
                     : absl::StrCat("the model provider answered HTTP ", status_code, ": ", detail);
  return error;
}

ProviderError TransportError(absl::string_view what, bool retryable) {
  ProviderError error;
  error.retryable = retryable;
  error.reason = std::string(what);
  error.message = absl::StrCat("the model provider's stream failed: ", what);
  return error;
}

}  // namespace parley::session::model
