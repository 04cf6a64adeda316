// libcurl transport for KubeClient. TLS material from the KubeConfig is handed to curl
// as in-memory blobs; nothing is written to disk.
#include "sandbox-svc/provider/kube_client.h"

#include <curl/curl.h>

#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace parley::sandbox {
namespace {

using nlohmann::json;

absl::Status StatusForHttp(long code, const std::string& body, const std::string& what) {
  std::string message = body;
  json parsed = json::parse(body, nullptr, false);
  if (!parsed.is_discarded() && parsed.is_object() && parsed.contains("message") &&
      parsed["message"].is_string()) {
    message = parsed["message"].get<std::string>();
  }
  std::string text = absl::StrCat("kubernetes ", what, ": HTTP ", code, ": ", message);
  switch (code) {
    case 404:
      return absl::NotFoundError(text);
    case 409:
      return absl::AlreadyExistsError(text);
    case 401:
    case 403:
      return absl::PermissionDeniedError(text);
    case 400:
    case 422:
      return absl::InvalidArgumentError(text);
    default:
      return absl::UnavailableError(text);
  }
}

// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
std::string QueryEscape(const std::string& value) {
  std::string out;
  for (unsigned char c : value) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&out, "%%%02X", c);
    }
  }
  return out;
}

size_t CollectBody(char* data, size_t size, size_t count, void* user) {
  static_cast<std::string*>(user)->append(data, size * count);
  return size * count;
}

struct WatchState {
  std::string pending;
  const std::function<bool(const json&)>* on_event;
  bool stopped = false;
  std::string error;
};

size_t StreamEvents(char* data, size_t size, size_t count, void* user) {
  auto* state = static_cast<WatchState*>(user);
  state->pending.append(data, size * count);
  size_t newline;
  while ((newline = state->pending.find('\n')) != std::string::npos) {
    std::string line = state->pending.substr(0, newline);
    state->pending.erase(0, newline + 1);
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    json event = json::parse(line, nullptr, false);
    if (event.is_discarded()) {
      state->error = absl::StrCat("unreadable watch event: ", line.substr(0, 200));
      return 0;
    }
    if (!(*state->on_event)(event)) {
      state->stopped = true;
      return 0;  // Aborts the transfer: we have what we waited for.
    }
  }
  return size * count;
}

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// Applies server, auth and TLS settings to a handle; `headers` must outlive it.
void Configure(CURL* curl, const KubeConfig& config, curl_slist** headers) {
  *headers = curl_slist_append(*headers, "Accept: application/json");
  *headers = curl_slist_append(*headers, "Content-Type: application/json");
  if (!config.token.empty()) {
    *headers =
        curl_slist_append(*headers, absl::StrCat("Authorization: Bearer ", config.token).c_str());
  }
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, *headers);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  if (!config.ca_pem.empty()) {
    curl_blob blob{const_cast<char*>(config.ca_pem.data()), config.ca_pem.size(), CURL_BLOB_COPY};
    curl_easy_setopt(curl, CURLOPT_CAINFO_BLOB, &blob);
  }
  if (!config.client_cert_pem.empty()) {
    curl_blob cert{const_cast<char*>(config.client_cert_pem.data()), config.client_cert_pem.size(),
                   CURL_BLOB_COPY};
    curl_blob key{const_cast<char*>(config.client_key_pem.data()), config.client_key_pem.size(),
                  CURL_BLOB_COPY};
    curl_easy_setopt(curl, CURLOPT_SSLCERT_BLOB, &cert);
    curl_easy_setopt(curl, CURLOPT_SSLCERTTYPE, "PEM");
    curl_easy_setopt(curl, CURLOPT_SSLKEY_BLOB, &key);
    curl_easy_setopt(curl, CURLOPT_SSLKEYTYPE, "PEM");
  }
  if (config.insecure_skip_tls_verify) {
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 0L);
  }
}

}  // namespace

KubeClient::KubeClient(KubeConfig config) : config_(std::move(config)) {
  GlobalInit();
  while (absl::EndsWith(config_.server, "/")) config_.server.pop_back();
}

absl::StatusOr<KubeClient::Response> KubeClient::Request(const std::string& method,
                                                         const std::string& path,
                                                         const std::string& body,
                                                         absl::Duration timeout) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
  curl_slist* headers = nullptr;
  Configure(curl, config_, &headers);
  Response response;
  const std::string url = config_.server + path;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (!body.empty()) {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  }
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, CollectBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &response.body);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(absl::ToInt64Milliseconds(timeout)));
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  CURLcode result = curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.code);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  if (result != CURLE_OK) {
    return absl::UnavailableError(
        absl::StrCat("kubernetes ", method, " ", path, ": ", curl_easy_strerror(result)));
  }
  return response;
}

absl::StatusOr<json> KubeClient::Create(const std::string& collection_path, const json& object) {
  absl::StatusOr<Response> response =
      Request("POST", collection_path, object.dump(), absl::Seconds(30));
  if (!response.ok()) return response.status();
  if (response->code != 200 && response->code != 201 && response->code != 202) {
    return StatusForHttp(response->code, response->body, absl::StrCat("create ", collection_path));
  }
  json parsed = json::parse(response->body, nullptr, false);
  if (parsed.is_discarded()) return absl::UnavailableError("kubernetes: unreadable response");
  return parsed;
}

absl::StatusOr<json> KubeClient::Get(const std::string& path) {
  absl::StatusOr<Response> response = Request("GET", path, "", absl::Seconds(30));
  if (!response.ok()) return response.status();
  if (response->code != 200) {
    return StatusForHttp(response->code, response->body, absl::StrCat("get ", path));
  }
  json parsed = json::parse(response->body, nullptr, false);
  if (parsed.is_discarded()) return absl::UnavailableError("kubernetes: unreadable response");
  return parsed;
}

absl::StatusOr<std::vector<json>> KubeClient::List(const std::string& collection_path,
                                                   const std::string& label_selector) {
  absl::StatusOr<json> list =
      Get(absl::StrCat(collection_path, "?labelSelector=", QueryEscape(label_selector)));
  if (!list.ok()) return list.status();
  if (list->contains("items") && (*list)["items"].is_null()) return std::vector<json>();
  if (!list->contains("items") || !(*list)["items"].is_array()) {
    return absl::UnavailableError(
        absl::StrCat("kubernetes list ", collection_path, ": the answer has no items"));
  }
  return (*list)["items"].get<std::vector<json>>();
}

absl::Status KubeClient::Delete(const std::string& path) {
  absl::StatusOr<Response> response = Request(
      "DELETE", path, R"({"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":0})",
      absl::Seconds(30));
  if (!response.ok()) return response.status();
  if (response->code == 200 || response->code == 202 || response->code == 404) {
    return absl::OkStatus();
  }
  return StatusForHttp(response->code, response->body, absl::StrCat("delete ", path));
}

absl::Status KubeClient::Watch(const std::string& path, absl::Duration timeout,
                               const std::function<bool(const json& event)>& on_event) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
  curl_slist* headers = nullptr;
  Configure(curl, config_, &headers);
  const std::string url = config_.server + path;
  WatchState state;
  state.on_event = &on_event;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, StreamEvents);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &state);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(absl::ToInt64Milliseconds(timeout)));
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  CURLcode result = curl_easy_perform(curl);
  long code = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  if (state.stopped) return absl::OkStatus();
  if (!state.error.empty()) return absl::UnavailableError(state.error);
  if (code != 0 && code != 200) return StatusForHttp(code, state.pending, "watch");
  if (result == CURLE_OPERATION_TIMEDOUT) {
    return absl::DeadlineExceededError(absl::StrCat("kubernetes watch ", path, " timed out"));
  }
  if (result != CURLE_OK) {
    return absl::UnavailableError(absl::StrCat("kubernetes watch: ", curl_easy_strerror(result)));
  }
  return absl::UnavailableError("kubernetes watch ended before the condition was met");
}

}  // namespace parley::sandbox
