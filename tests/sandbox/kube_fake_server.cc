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

#include "absl/strings/ascii.h"
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
    : token_(std::move(token)), daemon_port_(daemon_port) {
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

std::vector<std::string> FakeKubeApiServer::Requests() {
  absl::MutexLock lock(&mu_);
  return requests_;
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
  // /api/v1/namespaces/{ns}/pods[/{name}] or
  // /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies[/{name}]
  std::vector<std::string> parts = absl::StrSplit(request.path, '/', absl::SkipEmpty());
  size_t ns_index = 0;
  while (ns_index < parts.size() && parts[ns_index] != "namespaces") ++ns_index;
  if (ns_index + 2 >= parts.size()) {
    Respond(fd, 404, StatusObject(404, "NotFound", "the server could not find the resource"));
    return;
  }
  const std::string ns = parts[ns_index + 1];
  const std::string kind = parts[ns_index + 2];
  const std::string name = ns_index + 3 < parts.size() ? parts[ns_index + 3] : "";
  if (kind != "pods" && kind != "networkpolicies") {
    Respond(fd, 404, StatusObject(404, "NotFound", "unknown resource"));
    return;
  }
  if (request.method == "POST" && name.empty()) {
    json object = json::parse(request.body, nullptr, false);
    if (object.is_discarded() || !object.contains("metadata")) {
      Respond(fd, 400, StatusObject(400, "BadRequest", "invalid object"));
      return;
    }
    const std::string object_name = object["metadata"].value("name", "");
    absl::MutexLock lock(&mu_);
    auto key = std::make_tuple(kind, ns, object_name);
    if (objects_.count(key)) {
      Respond(fd, 409,
              StatusObject(409, "AlreadyExists",
                           absl::StrCat(kind, " \"", object_name, "\" already exists")));
      return;
    }
    object["metadata"]["namespace"] = ns;
    object["metadata"]["uid"] = absl::StrCat("uid-", next_version_);
    object["metadata"]["resourceVersion"] = absl::StrCat(next_version_++);
    if (kind == "pods") object["status"] = {{"phase", "Pending"}};
    objects_[key] = object;
    Changed(kind, ns, object_name, "ADDED");
    if (kind == "pods") {
      workers_.emplace_back([this, ns, object_name] { StartPod(ns, object_name); });
    }
    Respond(fd, 201, object);
    return;
  }
  if (request.method == "GET" && name.empty() && kind == "pods" &&
      absl::StrContains(request.query, "watch=1")) {
    std::string selected;
    int timeout_s = 60;
    for (absl::string_view param : absl::StrSplit(request.query, '&')) {
      std::string decoded = UrlDecode(param);
      if (absl::StartsWith(decoded, "fieldSelector=metadata.name=")) {
        selected = decoded.substr(std::strlen("fieldSelector=metadata.name="));
      }
      if (absl::StartsWith(decoded, "timeoutSeconds=")) {
        (void)absl::SimpleAtoi(decoded.substr(std::strlen("timeoutSeconds=")), &timeout_s);
      }
    }
    Watch(fd, ns, selected, timeout_s);
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
  if (request.method == "DELETE") {
    json object = it->second;
    if (kind == "pods") daemons_.erase({ns, name});  // SIGKILL, like a deleted container.
    Changed(kind, ns, name, "DELETED");
    objects_.erase(key);
    Respond(fd, 200, object);
    return;
  }
  Respond(fd, 405, StatusObject(405, "MethodNotAllowed", "not supported by the fake"));
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
  std::vector<std::string> args;
  for (size_t i = 1; i < container["command"].size(); ++i) {
    std::string arg = container["command"][i].get<std::string>();
    if (absl::StartsWith(arg, "--listen=")) arg = absl::StrCat("--listen=", ip, ":", daemon_port_);
    if (absl::StartsWith(arg, "--workspace=")) {
      std::string workspace = TestTempDir() + "/pod-workspace";
      ::mkdir(workspace.c_str(), 0755);
      arg = "--workspace=" + workspace;
    }
    args.push_back(arg);
  }
  std::map<std::string, std::string> env;
  for (const json& entry : container["env"]) {
    env[entry.value("name", "")] = entry.value("value", "");
  }
  auto process = ServiceProcess::Start(
      {.binary = BinaryPath("sandbox-svc/parley-sandboxd"), .args = args, .env = env});
  if (!process.ok()) return;
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (!CanConnect(ip, daemon_port_) && absl::Now() < give_up && !stopping_) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  absl::MutexLock lock(&mu_);
  auto it = objects_.find({"pods", ns, name});
  if (it == objects_.end()) return;  // Deleted meanwhile: the process goes with `process`.
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
