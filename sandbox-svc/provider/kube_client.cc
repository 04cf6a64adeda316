// libcurl transport for KubeClient. TLS material from kubeconfig "-data" fields is
// handed to curl as in-memory blobs; nothing is written to disk.
#include "sandbox-svc/provider/kube_client.h"

#include <curl/curl.h>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace parley::sandbox {
namespace {

using nlohmann::json;

constexpr char kServiceAccountDir[] = "/var/run/secrets/kubernetes.io/serviceaccount";

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

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

// Decodes a kubeconfig "-data" field (base64) or reads the file the plain field names.
absl::StatusOr<std::string> DataOrFile(const json& object, const std::string& data_key,
                                       const std::string& file_key) {
  if (object.contains(data_key) && object[data_key].is_string()) {
    std::string decoded;
    if (!absl::Base64Unescape(object[data_key].get<std::string>(), &decoded)) {
      return absl::InvalidArgumentError(absl::StrCat(data_key, " is not valid base64"));
    }
    return decoded;
  }
  if (object.contains(file_key) && object[file_key].is_string()) {
    return ReadFile(object[file_key].get<std::string>());
  }
  return std::string();
}

const json* FindNamed(const json& root, const std::string& list, const std::string& name) {
  if (!root.contains(list) || !root[list].is_array()) return nullptr;
  for (const json& entry : root[list]) {
    if (entry.value("name", "") == name) return &entry;
  }
  return nullptr;
}

absl::StatusOr<KubeConfig> LoadInCluster() {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (host == nullptr || port == nullptr) {
    return absl::FailedPreconditionError(
        "not running in a cluster (KUBERNETES_SERVICE_HOST is unset) and no --kubeconfig given");
  }
  KubeConfig config;
  std::string h(host);
  config.server =
      absl::StrCat("https://", absl::StrContains(h, ":") ? "[" + h + "]" : h, ":", port);
  absl::StatusOr<std::string> token = ReadFile(absl::StrCat(kServiceAccountDir, "/token"));
  if (!token.ok()) return token.status();
  config.token = std::string(absl::StripAsciiWhitespace(*token));
  absl::StatusOr<std::string> ca = ReadFile(absl::StrCat(kServiceAccountDir, "/ca.crt"));
  if (ca.ok()) config.ca_pem = *ca;
  absl::StatusOr<std::string> ns = ReadFile(absl::StrCat(kServiceAccountDir, "/namespace"));
  if (ns.ok()) config.namespace_name = std::string(absl::StripAsciiWhitespace(*ns));
  return config;
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

absl::StatusOr<KubeConfig> LoadKubeConfig(const std::string& kubeconfig_path) {
  if (kubeconfig_path.empty()) return LoadInCluster();
  absl::StatusOr<std::string> text = ReadFile(kubeconfig_path);
  if (!text.ok()) return text.status();
  json root = json::parse(*text, nullptr, false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kubeconfig_path,
                     ": not JSON; convert a YAML kubeconfig with `kubectl config view --raw "
                     "--flatten -o json`"));
  }
  std::string context_name = root.value("current-context", "");
  const json* context = FindNamed(root, "contexts", context_name);
  if (context == nullptr || !context->contains("context")) {
    return absl::InvalidArgumentError(
        absl::StrCat(kubeconfig_path, ": current-context \"", context_name, "\" not found"));
  }
  const json& ctx = (*context)["context"];
  const json* cluster = FindNamed(root, "clusters", ctx.value("cluster", ""));
  const json* user = FindNamed(root, "users", ctx.value("user", ""));
  if (cluster == nullptr || !cluster->contains("cluster")) {
    return absl::InvalidArgumentError(absl::StrCat(kubeconfig_path, ": cluster not found"));
  }
  KubeConfig config;
  const json& c = (*cluster)["cluster"];
  config.server = c.value("server", "");
  if (config.server.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(kubeconfig_path, ": cluster has no server"));
  }
  config.insecure_skip_tls_verify = c.value("insecure-skip-tls-verify", false);
  absl::StatusOr<std::string> ca =
      DataOrFile(c, "certificate-authority-data", "certificate-authority");
  if (!ca.ok()) return ca.status();
  config.ca_pem = *ca;
  if (user != nullptr && user->contains("user")) {
    const json& u = (*user)["user"];
    config.token = u.value("token", "");
    if (config.token.empty() && u.contains("tokenFile")) {
      absl::StatusOr<std::string> token = ReadFile(u.value("tokenFile", ""));
      if (!token.ok()) return token.status();
      config.token = std::string(absl::StripAsciiWhitespace(*token));
    }
    absl::StatusOr<std::string> cert =
        DataOrFile(u, "client-certificate-data", "client-certificate");
    absl::StatusOr<std::string> key = DataOrFile(u, "client-key-data", "client-key");
    if (!cert.ok()) return cert.status();
    if (!key.ok()) return key.status();
    config.client_cert_pem = *cert;
    config.client_key_pem = *key;
  }
  config.namespace_name = ctx.value("namespace", "default");
  return config;
}

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
