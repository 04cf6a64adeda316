// The provider errors every wire format shares (what a status code means for retries),
// and the redacted capture of a request and its response for the chat span.
#include "session-svc/model/model.h"

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "telemetry/log.h"

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

namespace {

using telemetry::kRedacted;

// A header or JSON field name that says its value is a credential: authorization,
// x-api-key, api-key, x-goog-api-key, proxy-authorization, cookie, ...
bool IsCredentialName(absl::string_view name) {
  std::string lower = absl::AsciiStrToLower(name);
  absl::StrReplaceAll({{"-", "_"}}, &lower);
  return telemetry::IsSensitiveKey(lower) || lower == "auth" || absl::StartsWith(lower, "auth_") ||
         absl::StrContains(lower, "cookie") || lower == "key" || absl::EndsWith(lower, "_key");
}

void RedactJsonFields(nlohmann::ordered_json& value) {
  if (value.is_object()) {
    for (auto& [key, item] : value.items()) {
      if (IsCredentialName(key) && !item.is_object() && !item.is_array()) {
        item = std::string(kRedacted);
      } else {
        RedactJsonFields(item);
      }
    }
  } else if (value.is_array()) {
    for (auto& item : value) RedactJsonFields(item);
  }
}

// `text` with JSON credential fields redacted, whether it is one JSON document or an
// SSE stream of them ("data: {...}" lines); anything else is left as it is.
std::string RedactJson(absl::string_view text) {
  auto redact_document = [](absl::string_view document, std::string& out) {
    nlohmann::ordered_json json =
        nlohmann::ordered_json::parse(document, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded() || !json.is_structured()) return false;
    RedactJsonFields(json);
    out = json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return true;
  };
  std::string whole;
  if (redact_document(text, whole)) return whole;
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  for (std::string& line : lines) {
    absl::string_view data = line;
    if (!absl::ConsumePrefix(&data, "data:")) continue;
    std::string redacted;
    if (redact_document(absl::StripLeadingAsciiWhitespace(data), redacted)) {
      line = absl::StrCat("data: ", redacted, absl::EndsWith(line, "\r") ? "\r" : "");
    }
  }
  return absl::StrJoin(lines, "\n");
}

// Everything a captured text goes through: the key verbatim, credential fields and
// credential-shaped tokens redacted, then cut to `max_bytes` on a UTF-8 boundary.
std::string CaptureText(absl::string_view text, const std::string& secret, size_t max_bytes,
                        bool& truncated) {
  std::string out = telemetry::RedactSecret(RedactJson(text), secret);
  truncated = out.size() > max_bytes;
  if (truncated) {
    size_t cut = max_bytes;
    while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;
    out.resize(cut);
  }
  return out;
}

}  // namespace

void BodyCapture::CaptureRequest(const std::vector<std::string>& headers, absl::string_view body,
                                 const std::string& secret) {
  std::vector<std::string> lines;
  for (const std::string& header : headers) {
    const size_t colon = header.find(':');
    const absl::string_view name = absl::string_view(header).substr(0, colon);
    if (colon != std::string::npos && IsCredentialName(name)) {
      lines.push_back(absl::StrCat(name, ": ", kRedacted));
    } else {
      bool cut = false;
      lines.push_back(CaptureText(header, secret, max_bytes, cut));
    }
  }
  request_headers = absl::StrJoin(lines, "\n");
  request_body = CaptureText(body, secret, max_bytes, request_truncated);
}

void BodyCapture::CaptureResponse(absl::string_view body, const std::string& secret) {
  response_body = CaptureText(body, secret, max_bytes, response_truncated);
}

}  // namespace parley::session::model
