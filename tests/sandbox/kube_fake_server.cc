// A small HTTP/1.1 server (one thread per connection, Connection: close) with an
// in-memory object store shaped like the Kubernetes API's.
#include "tests/sandbox/kube_fake_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace parley::testing {
namespace {

using nlohmann::json;

void SendAll(int fd, const std::string& data) {
  size_t offset = 0;
  while (offset < data.size()) {
    ssize_t n = ::send(fd, data.data() + offset, data.size() - offset, MSG_NOSIGNAL);
    if (n <= 0) return;
    offset += static_cast<size_t>(n);
  }
}

void Respond(int fd, int code, const json& body) {
  const std::string text = body.dump();
  const char* reason = code == 200   ? "OK"
                       : code == 201 ? "Created"
                       : code == 401 ? "Unauthorized"
                       : code == 404 ? "Not Found"
                       : code == 409 ? "Conflict"
                                     : "Error";
  SendAll(fd, absl::StrCat("HTTP/1.1 ", code, " ", reason,
                           "\r\nContent-Type: application/json\r\nContent-Length: ", text.size(),
                           "\r\nConnection: close\r\n\r\n", text));
}

json StatusObject(int code, const std::string& reason, const std::string& message) {
  return {{"kind", "Status"},    {"apiVersion", "v1"}, {"metadata", json::object()},
          {"status", "Failure"}, {"message", message}, {"reason", reason},
          {"code", code}};
}

std::string UrlDecode(absl::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size()) {
      int value = 0;
      if (absl::SimpleHexAtoi(text.substr(i + 1, 2), &value)) {
        out.push_back(static_cast<char>(value));
        i += 2;
        continue;
      }
    }
    out.push_back(text[i]);
  }
  return out;
}

// The resources the fake serves, with the API group path each lives under.
struct Resource {
  const char* plural;
  const char* kind;
  const char* api_version;
  const char* prefix;  // Path up to "namespaces/".
};
constexpr Resource kResources[] = {
    {"pods", "Pod", "v1", "/api/v1/"},
    {"persistentvolumeclaims", "PersistentVolumeClaim", "v1", "/api/v1/"},
    {"secrets", "Secret", "v1", "/api/v1/"},
    {"networkpolicies", "NetworkPolicy", "networking.k8s.io/v1", "/apis/networking.k8s.io/v1/"},
};

const Resource* FindResource(const std::string& plural) {
  for (const Resource& resource : kResources) {
    if (plural == resource.plural) return &resource;
  }
  return nullptr;
}

// One requirement of an equality-based label selector: "k=v", "k==v", "k!=v", "k", "!k".
struct LabelRequirement {
  std::string key;
  std::string op;  // "=", "!=", "exists", "!exists"
  std::string value;
};

absl::StatusOr<std::vector<LabelRequirement>> ParseSelector(const std::string& selector) {
  std::vector<LabelRequirement> requirements;
  for (absl::string_view part : absl::StrSplit(selector, ',', absl::SkipWhitespace())) {
    std::string term(absl::StripAsciiWhitespace(part));
    if (absl::StrContains(term, " in ") || absl::StrContains(term, " notin ") ||
        absl::StrContains(term, "(")) {
      return absl::InvalidArgumentError("set-based selectors are not supported by the fake");
    }
    LabelRequirement requirement;
    size_t at;
    if ((at = term.find("!=")) != std::string::npos) {
      requirement = {term.substr(0, at), "!=", term.substr(at + 2)};
    } else if ((at = term.find("==")) != std::string::npos) {
      requirement = {term.substr(0, at), "=", term.substr(at + 2)};
    } else if ((at = term.find('=')) != std::string::npos) {
      requirement = {term.substr(0, at), "=", term.substr(at + 1)};
    } else if (absl::StartsWith(term, "!")) {
      requirement = {term.substr(1), "!exists", ""};
    } else {
      requirement = {term, "exists", ""};
    }
    if (requirement.key.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("unable to parse requirement: ", term));
    }
    requirements.push_back(std::move(requirement));
  }
  return requirements;
}

bool Matches(const json& object, const std::vector<LabelRequirement>& requirements) {
  const json labels = object["metadata"].value("labels", json::object());
  for (const LabelRequirement& r : requirements) {
    const bool has = labels.contains(r.key);
    const std::string value = has ? labels[r.key].get<std::string>() : "";
    if (r.op == "exists" && !has) return false;
    if (r.op == "!exists" && has) return false;
    if (r.op == "=" && (!has || value != r.value)) return false;
    if (r.op == "!=" && has && value == r.value) return false;
  }
  return true;
}

// The value of the query parameter `name` (URL-decoded), or "".
std::string QueryParam(const std::string& query, const std::string& name) {
  for (absl::string_view param : absl::StrSplit(query, '&')) {
    std::string decoded = UrlDecode(param);
    if (absl::StartsWith(decoded, name + "=")) return decoded.substr(name.size() + 1);
  }
  return "";
}

bool CanConnect(const std::string& ip, int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, ip.c_str(), &address.sin_addr);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  ::close(fd);
  return ok;
}

}  // namespace

FakeKubeApiServer::FakeKubeApiServer(std::string token, int daemon_port)
    : token_(std::move(token)), daemon_port_(daemon_port), volumes_dir_(TestTempDir()) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  ::listen(listen_fd_, 64);
  socklen_t length = sizeof(address);
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&address), &length);
  port_ = ntohs(address.sin_port);
  acceptor_ = std::thread([this] { AcceptLoop(); });
}

FakeKubeApiServer::~FakeKubeApiServer() {
  stopping_ = true;
  ::shutdown(listen_fd_, SHUT_RDWR);
  acceptor_.join();
  ::close(listen_fd_);
  // Connection threads may still start Pod workers; join until none is left.
  while (true) {
    std::vector<std::thread> workers;
    {
      absl::MutexLock lock(&mu_);
      workers.swap(workers_);
    }
    if (workers.empty()) break;
    for (std::thread& worker : workers) worker.join();
  }
  absl::MutexLock lock(&mu_);
  daemons_.clear();  // SIGKILLs what still runs.
}

std::string FakeKubeApiServer::url() const { return absl::StrCat("http://127.0.0.1:", port_); }

json FakeKubeApiServer::Object(const std::string& kind, const std::string& ns,
                               const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto it = objects_.find({kind, ns, name});
  return it == objects_.end() ? json() : it->second;
}

std::vector<std::string> FakeKubeApiServer::Names(const std::string& kind, const std::string& ns) {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> names;
  for (const auto& [key, object] : objects_) {
    if (std::get<0>(key) == kind && std::get<1>(key) == ns) names.push_back(std::get<2>(key));
  }
  return names;
}

std::string FakeKubeApiServer::VolumePath(const std::string& ns, const std::string& claim) const {
  return absl::StrCat(volumes_dir_, "/pvc-", ns, "-", claim);
}

std::vector<std::string> FakeKubeApiServer::Requests() {
  absl::MutexLock lock(&mu_);
  return requests_;
}

std::vector<std::string> FakeKubeApiServer::Watches() {
  absl::MutexLock lock(&mu_);
  return watches_;
}

bool FakeKubeApiServer::DaemonRunning(const std::string& ns, const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto it = daemons_.find({ns, name});
  return it != daemons_.end() && it->second->running();
}

void FakeKubeApiServer::AcceptLoop() {
  while (!stopping_) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (stopping_) return;
      continue;
    }
    absl::MutexLock lock(&mu_);
    workers_.emplace_back([this, fd] {
      Serve(fd);
      ::close(fd);
    });
  }
}

void FakeKubeApiServer::Serve(int fd) {
  std::string data;
  char buffer[8192];
  size_t header_end;
  while ((header_end = data.find("\r\n\r\n")) == std::string::npos) {
    ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) return;
    data.append(buffer, static_cast<size_t>(n));
  }
  Request request;
  std::vector<std::string> lines = absl::StrSplit(data.substr(0, header_end), "\r\n");
  std::vector<std::string> first = absl::StrSplit(lines[0], ' ');
  if (first.size() < 2) return;
  request.method = first[0];
  std::string target = first[1];
  size_t question = target.find('?');
  request.path = target.substr(0, question);
  if (question != std::string::npos) request.query = target.substr(question + 1);
  for (size_t i = 1; i < lines.size(); ++i) {
    size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    request.headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
  }
  size_t length = 0;
  if (auto it = request.headers.find("content-length"); it != request.headers.end()) {
    (void)absl::SimpleAtoi(it->second, &length);
  }
  request.body = data.substr(header_end + 4);
  while (request.body.size() < length) {
    ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) return;
    request.body.append(buffer, static_cast<size_t>(n));
  }
  {
    absl::MutexLock lock(&mu_);
    requests_.push_back(absl::StrCat(request.method, " ", request.path));
  }
  if (request.headers["authorization"] != absl::StrCat("Bearer ", token_)) {
    Respond(fd, 401, StatusObject(401, "Unauthorized", "Unauthorized"));
    return;
  }
  Route(fd, request);
}

void FakeKubeApiServer::Route(int fd, const Request& request) {
  // /api/v1/namespaces/{ns}/{pods,persistentvolumeclaims,secrets}[/{name}] or
  // /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies[/{name}]
  std::vector<std::string> parts = absl::StrSplit(request.path, '/', absl::SkipEmpty());
  size_t ns_index = 0;
  while (ns_index < parts.size() && parts[ns_index] != "namespaces") ++ns_index;
  const Resource* resource =
      ns_index + 2 < parts.size() ? FindResource(parts[ns_index + 2]) : nullptr;
  if (resource == nullptr ||
      !absl::StartsWith(request.path, absl::StrCat(resource->prefix, "namespaces/")) ||
      ns_index + 4 < parts.size()) {
    Respond(fd, 404,
            StatusObject(404, "NotFound", "the server could not find the requested resource"));
    return;
  }
  const std::string ns = parts[ns_index + 1];
  const std::string kind = resource->plural;
  const std::string name = ns_index + 3 < parts.size() ? parts[ns_index + 3] : "";
  if (request.method == "POST" && name.empty()) {
    Create(fd, kind, ns, request.body);
    return;
  }
  if (request.method == "GET" && name.empty() && kind == "pods" &&
      QueryParam(request.query, "watch") == "1") {
    std::string selected = QueryParam(request.query, "fieldSelector");
    if (absl::StartsWith(selected, "metadata.name=")) {
      selected = selected.substr(std::strlen("metadata.name="));
    }
    int timeout_s = 60;
    (void)absl::SimpleAtoi(QueryParam(request.query, "timeoutSeconds"), &timeout_s);
    {
      absl::MutexLock lock(&mu_);
      watches_.push_back(absl::StrCat(ns, "/", selected));
    }
    Watch(fd, ns, selected, timeout_s);
    return;
  }
  if (request.method == "GET" && name.empty()) {
    List(fd, kind, ns, request.query);
    return;
  }
  if (name.empty()) {
    Respond(fd, 405, StatusObject(405, "MethodNotAllowed", "not supported by the fake"));
    return;
  }
  absl::MutexLock lock(&mu_);
  auto key = std::make_tuple(kind, ns, name);
  auto it = objects_.find(key);
  if (it == objects_.end()) {
    Respond(fd, 404,
            StatusObject(404, "NotFound", absl::StrCat(kind, " \"", name, "\" not found")));
    return;
  }
  if (request.method == "GET") {
    Respond(fd, 200, it->second);
    return;
  }
  if (request.method != "DELETE") {
    Respond(fd, 405, StatusObject(405, "MethodNotAllowed", "not supported by the fake"));
    return;
  }
  json object = it->second;
  if (kind == "persistentvolumeclaims" && ClaimInUse(ns, name)) {
    // kubernetes.io/pvc-protection: the claim waits, Terminating, for its Pods to go.
    it->second["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z";
    it->second["metadata"]["finalizers"] = {"kubernetes.io/pvc-protection"};
    Respond(fd, 200, it->second);
    return;
  }
  if (kind == "pods") daemons_.erase({ns, name});  // SIGKILL, like a deleted container.
  Changed(kind, ns, name, "DELETED");
  objects_.erase(key);
  if (kind == "persistentvolumeclaims") std::filesystem::remove_all(VolumePath(ns, name));
  if (kind == "pods") ReleaseClaims(ns);
  Respond(fd, 200, object);
}

void FakeKubeApiServer::Create(int fd, const std::string& kind, const std::string& ns,
                               const std::string& body) {
  const Resource& resource = *FindResource(kind);
  json object = json::parse(body, nullptr, false);
  if (object.is_discarded() || !object.is_object() || !object.contains("metadata") ||
      !object["metadata"].is_object() || !object["metadata"].value("name", json()).is_string() ||
      object["metadata"]["name"].get<std::string>().empty()) {
    Respond(fd, 400, StatusObject(400, "BadRequest", "invalid object: metadata.name is required"));
    return;
  }
  if (object.value("kind", resource.kind) != resource.kind ||
      object.value("apiVersion", resource.api_version) != resource.api_version) {
    Respond(fd, 400,
            StatusObject(
                400, "BadRequest",
                absl::StrCat("the object is not a ", resource.api_version, " ", resource.kind)));
    return;
  }
  if (object["metadata"].value("namespace", ns) != ns) {
    Respond(fd, 400,
            StatusObject(400, "BadRequest",
                         "the namespace of the provided object does not match the namespace "
                         "sent on the request"));
    return;
  }
  if (kind == "secrets") {
    // Like the API server: stringData is folded into data (base64), which must decode.
    const json string_data = object.value("stringData", json::object());
    for (const auto& [key, value] : string_data.items()) {
      object["data"][key] = absl::Base64Escape(value.get<std::string>());
    }
    object.erase("stringData");
    const json data = object.value("data", json::object());
    for (const auto& [key, value] : data.items()) {
      std::string decoded;
      if (!value.is_string() || !absl::Base64Unescape(value.get<std::string>(), &decoded)) {
        Respond(fd, 400, StatusObject(400, "BadRequest", "illegal base64 data in data." + key));
        return;
      }
    }
  }
  const std::string name = object["metadata"]["name"];
  absl::MutexLock lock(&mu_);
  auto key = std::make_tuple(kind, ns, name);
  if (objects_.count(key)) {
    Respond(
        fd, 409,
        StatusObject(409, "AlreadyExists", absl::StrCat(kind, " \"", name, "\" already exists")));
    return;
  }
  object["kind"] = resource.kind;
  object["apiVersion"] = resource.api_version;
  object["metadata"]["namespace"] = ns;
  object["metadata"]["uid"] = absl::StrCat("uid-", next_version_);
  object["metadata"]["resourceVersion"] = absl::StrCat(next_version_++);
  if (kind == "pods" || kind == "persistentvolumeclaims") object["status"] = {{"phase", "Pending"}};
  objects_[key] = object;
  Changed(kind, ns, name, "ADDED");
  if (kind == "pods") workers_.emplace_back([this, ns, name] { StartPod(ns, name); });
  Respond(fd, 201, object);
}

void FakeKubeApiServer::List(int fd, const std::string& kind, const std::string& ns,
                             const std::string& query) {
  absl::StatusOr<std::vector<LabelRequirement>> selector =
      ParseSelector(QueryParam(query, "labelSelector"));
  if (!selector.ok()) {
    Respond(fd, 400, StatusObject(400, "BadRequest", std::string(selector.status().message())));
    return;
  }
  const Resource& resource = *FindResource(kind);
  json items = json::array();
  absl::MutexLock lock(&mu_);
  for (const auto& [key, object] : objects_) {
    if (std::get<0>(key) == kind && std::get<1>(key) == ns && Matches(object, *selector)) {
      items.push_back(object);
    }
  }
  Respond(fd, 200,
          {{"kind", absl::StrCat(resource.kind, "List")},
           {"apiVersion", resource.api_version},
           {"metadata", {{"resourceVersion", absl::StrCat(next_version_ - 1)}}},
           {"items", items}});
}

bool FakeKubeApiServer::ClaimInUse(const std::string& ns, const std::string& claim) {
  for (const auto& [key, object] : objects_) {
    if (std::get<0>(key) != "pods" || std::get<1>(key) != ns) continue;
    for (const json& volume : object["spec"].value("volumes", json::array())) {
      if (volume.contains("persistentVolumeClaim") &&
          volume["persistentVolumeClaim"].value("claimName", "") == claim) {
        return true;
      }
    }
  }
  return false;
}

void FakeKubeApiServer::ReleaseClaims(const std::string& ns) {
  std::vector<std::string> released;
  for (const auto& [key, object] : objects_) {
    if (std::get<0>(key) == "persistentvolumeclaims" && std::get<1>(key) == ns &&
        object["metadata"].contains("deletionTimestamp") && !ClaimInUse(ns, std::get<2>(key))) {
      released.push_back(std::get<2>(key));
    }
  }
  for (const std::string& claim : released) {
    objects_.erase({"persistentvolumeclaims", ns, claim});
    std::filesystem::remove_all(VolumePath(ns, claim));
  }
}

void FakeKubeApiServer::Changed(const std::string& kind, const std::string& ns,
                                const std::string& name, const std::string& type) {
  if (kind != "pods") return;
  events_[{ns, name}].push_back({{"type", type}, {"object", objects_[{kind, ns, name}]}});
}

void FakeKubeApiServer::Watch(int fd, const std::string& ns, const std::string& name,
                              int timeout_s) {
  SendAll(fd,
          "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
          "Connection: close\r\n\r\n");
  auto send_event = [fd](const json& event) {
    std::string line = event.dump() + "\n";
    SendAll(fd, absl::StrCat(absl::Hex(line.size()), "\r\n", line, "\r\n"));
  };
  size_t next = 0;
  {
    // Like the real API: a watch without a resourceVersion starts with what exists.
    absl::MutexLock lock(&mu_);
    next = events_[{ns, name}].size();
    auto it = objects_.find({"pods", ns, name});
    if (it != objects_.end()) send_event({{"type", "ADDED"}, {"object", it->second}});
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(timeout_s);
  while (!stopping_ && absl::Now() < deadline) {
    std::vector<json> batch;
    {
      absl::MutexLock lock(&mu_);
      auto key = std::make_pair(ns, name);
      auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return events_[key].size() > next || stopping_.load();
      };
      mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(100));
      const auto& events = events_[key];
      while (next < events.size()) batch.push_back(events[next++]);
    }
    for (const json& event : batch) send_event(event);
    // The client closes the connection once it has what it waited for.
    char probe;
    ssize_t peeked = ::recv(fd, &probe, 1, MSG_PEEK | MSG_DONTWAIT);
    if (peeked == 0 || (peeked < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) return;
  }
  SendAll(fd, "0\r\n\r\n");
}

absl::StatusOr<std::map<std::string, std::string>> FakeKubeApiServer::PodEnv(
    const std::string& ns, const json& container) {
  std::map<std::string, std::string> env;
  absl::MutexLock lock(&mu_);
  for (const json& entry : container.value("env", json::array())) {
    const std::string name = entry.value("name", "");
    if (entry.contains("value")) {
      env[name] = entry.value("value", "");
      continue;
    }
    if (!entry.contains("valueFrom") || !entry["valueFrom"].contains("secretKeyRef")) continue;
    const json& ref = entry["valueFrom"]["secretKeyRef"];
    const std::string secret_name = ref.value("name", ""), key = ref.value("key", "");
    auto it = objects_.find({"secrets", ns, secret_name});
    if (it == objects_.end()) {
      return absl::NotFoundError(absl::StrCat("secret \"", secret_name, "\" not found"));
    }
    const json data = it->second.value("data", json::object());
    std::string decoded;
    if (!data.contains(key) || !absl::Base64Unescape(data[key].get<std::string>(), &decoded)) {
      return absl::NotFoundError(
          absl::StrCat("couldn't find key ", key, " in Secret ", ns, "/", secret_name));
    }
    env[name] = decoded;
  }
  return env;
}

absl::StatusOr<std::string> FakeKubeApiServer::PodVolume(const std::string& ns, const json& pod,
                                                         const std::string& mount_path) {
  std::string volume_name;
  for (const json& mount : pod["spec"]["containers"][0].value("volumeMounts", json::array())) {
    if (mount.value("mountPath", "") == mount_path) volume_name = mount.value("name", "");
  }
  for (const json& volume : pod["spec"].value("volumes", json::array())) {
    if (volume.value("name", "") != volume_name) continue;
    std::string dir;
    if (volume.contains("persistentVolumeClaim")) {
      const std::string claim = volume["persistentVolumeClaim"].value("claimName", "");
      absl::MutexLock lock(&mu_);
      auto it = objects_.find({"persistentvolumeclaims", ns, claim});
      if (it == objects_.end()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "0/1 nodes are available: persistentvolumeclaim \"", claim, "\" not found."));
      }
      it->second["status"] = {{"phase", "Bound"},
                              {"accessModes", it->second["spec"].value("accessModes", json())},
                              {"capacity", it->second["spec"]["resources"]["requests"]}};
      dir = VolumePath(ns, claim);
    } else if (volume.contains("emptyDir")) {
      dir = absl::StrCat(volumes_dir_, "/emptydir-", pod["metadata"].value("uid", ""));
    } else {
      return absl::FailedPreconditionError("volume type not supported by the fake");
    }
    std::filesystem::create_directories(dir);
    return dir;
  }
  return absl::FailedPreconditionError(absl::StrCat("no volume mounted at ", mount_path));
}

void FakeKubeApiServer::SetPending(const std::string& ns, const json& pod, const json& status) {
  const std::string name = pod["metadata"]["name"];
  absl::MutexLock lock(&mu_);
  auto it = objects_.find({"pods", ns, name});
  if (it == objects_.end() || it->second["metadata"]["uid"] != pod["metadata"]["uid"]) return;
  it->second["status"] = status;
  it->second["status"]["phase"] = "Pending";
  Changed("pods", ns, name, "MODIFIED");
}

void FakeKubeApiServer::StartPod(const std::string& ns, const std::string& name) {
  json pod;
  std::string ip;
  {
    absl::MutexLock lock(&mu_);
    auto it = objects_.find({"pods", ns, name});
    if (it == objects_.end()) return;
    pod = it->second;
    // Loopback "Pod IPs" in a block of this process's own, so parallel test processes
    // never share an address.
    ip = absl::StrCat("127.", 2 + ::getpid() % 250, ".", next_ip_ / 250, ".", 1 + next_ip_ % 250);
    ++next_ip_;
  }
  if (fail_pods_) {
    absl::MutexLock lock(&mu_);
    auto it = objects_.find({"pods", ns, name});
    if (it == objects_.end()) return;
    it->second["status"] = {
        {"phase", "Failed"},
        {"containerStatuses",
         {{{"name", "sandbox"},
           {"state",
            {{"terminated", {{"reason", "Error"}, {"message", "fake image failure"}}}}}}}}};
    Changed("pods", ns, name, "MODIFIED");
    return;
  }
  const json& container = pod["spec"]["containers"][0];
  // As the scheduler and the kubelet would: volumes first, then the environment.
  std::vector<std::string> args;
  for (size_t i = 1; i < container["command"].size(); ++i) {
    std::string arg = container["command"][i].get<std::string>();
    if (absl::StartsWith(arg, "--listen=")) arg = absl::StrCat("--listen=", ip, ":", daemon_port_);
    if (absl::StartsWith(arg, "--workspace=")) {
      absl::StatusOr<std::string> dir = PodVolume(ns, pod, arg.substr(std::strlen("--workspace=")));
      if (!dir.ok()) {
        SetPending(ns, pod,
                   {{"conditions",
                     {{{"type", "PodScheduled"},
                       {"status", "False"},
                       {"reason", "Unschedulable"},
                       {"message", dir.status().message()}}}}});
        return;
      }
      arg = "--workspace=" + *dir;
    }
    args.push_back(arg);
  }
  absl::StatusOr<std::map<std::string, std::string>> env = PodEnv(ns, container);
  if (!env.ok()) {
    SetPending(ns, pod,
               {{"containerStatuses",
                 {{{"name", "sandbox"},
                   {"ready", false},
                   {"state",
                    {{"waiting",
                      {{"reason", "CreateContainerConfigError"},
                       {"message", env.status().message()}}}}}}}}});
    return;
  }
  auto process = ServiceProcess::Start(
      {.binary = BinaryPath("sandbox-svc/parley-sandboxd"), .args = args, .env = *env});
  if (!process.ok()) return;
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (!CanConnect(ip, daemon_port_) && absl::Now() < give_up && !stopping_) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  absl::MutexLock lock(&mu_);
  auto it = objects_.find({"pods", ns, name});
  // Deleted meanwhile (or deleted and created again): the process goes with `process`.
  if (it == objects_.end() || it->second["metadata"]["uid"] != pod["metadata"]["uid"]) return;
  daemons_[{ns, name}] = *std::move(process);
  it->second["status"] = {
      {"phase", "Running"},
      {"podIP", ip},
      {"conditions", {{{"type", "Ready"}, {"status", "True"}}}},
      {"containerStatuses",
       {{{"name", "sandbox"}, {"ready", true}, {"state", {{"running", json::object()}}}}}}};
  Changed("pods", ns, name, "MODIFIED");
}

}  // namespace parley::testing
