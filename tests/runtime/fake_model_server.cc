// One thread accepts; each connection gets a thread that reads one request (headers and
// a Content-Length body) and writes the next scripted response.
#include "tests/runtime/fake_model_server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace parley::testing {
namespace {

bool WriteAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// Reads one request; false when the connection closed first.
bool ReadRequest(int fd, RecordedRequest& request) {
  std::string buffer;
  char chunk[8192];
  size_t header_end = std::string::npos;
  while ((header_end = buffer.find("\r\n\r\n")) == std::string::npos) {
    ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
    if (n <= 0) return false;
    buffer.append(chunk, static_cast<size_t>(n));
  }
  std::vector<std::string> lines = absl::StrSplit(buffer.substr(0, header_end), "\r\n");
  std::vector<std::string> first = absl::StrSplit(lines[0], ' ');
  if (first.size() < 2) return false;
  request.method = first[0];
  request.path = first[1];
  size_t length = 0;
  for (size_t i = 1; i < lines.size(); ++i) {
    size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    std::string name = absl::AsciiStrToLower(lines[i].substr(0, colon));
    std::string value(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
    if (name == "content-length") (void)absl::SimpleAtoi(value, &length);
    request.headers[name] = value;
  }
  request.body = buffer.substr(header_end + 4);
  while (request.body.size() < length) {
    ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
    if (n <= 0) return false;
    request.body.append(chunk, static_cast<size_t>(n));
  }
  return true;
}

const char* Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Status";
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<FakeModelServer>> FakeModelServer::Start(int port) {
  std::unique_ptr<FakeModelServer> server(new FakeModelServer());
  server->listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  int one = 1;
  ::setsockopt(server->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  socklen_t size = sizeof(address);
  if (server->listen_fd_ < 0 ||
      ::bind(server->listen_fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      ::listen(server->listen_fd_, 64) != 0 ||
      ::getsockname(server->listen_fd_, reinterpret_cast<sockaddr*>(&address), &size) != 0) {
    return absl::InternalError(absl::StrCat("fake model server: ", std::strerror(errno)));
  }
  server->port_ = ntohs(address.sin_port);
  server->acceptor_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  return server;
}

FakeModelServer::~FakeModelServer() {
  stopping_.store(true);
  ::shutdown(listen_fd_, SHUT_RDWR);
  acceptor_.join();
  ::close(listen_fd_);
  std::vector<std::thread> connections;
  {
    absl::MutexLock lock(&mu_);
    connections.swap(connections_);
  }
  for (std::thread& thread : connections) thread.join();
}

std::string FakeModelServer::base_url() const { return absl::StrCat("http://127.0.0.1:", port_); }

void FakeModelServer::Enqueue(FakeResponse response) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(std::move(response));
}

void FakeModelServer::SetDefaultResponse(FakeResponse response) {
  absl::MutexLock lock(&mu_);
  default_response_ = std::move(response);
}

std::vector<absl::Time> FakeModelServer::first_chunk_times() const {
  absl::MutexLock lock(&mu_);
  return first_chunk_times_;
}

std::vector<RecordedRequest> FakeModelServer::requests() const {
  absl::MutexLock lock(&mu_);
  return requests_;
}

bool FakeModelServer::WaitForRequests(size_t count, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto enough = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return requests_.size() >= count; };
  return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
}

void FakeModelServer::AcceptLoop() {
  while (!stopping_.load()) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (stopping_.load()) return;
      continue;
    }
    absl::MutexLock lock(&mu_);
    connections_.emplace_back([this, fd] { Serve(fd); });
  }
}

void FakeModelServer::Serve(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  RecordedRequest request;
  if (!ReadRequest(fd, request)) {
    ::close(fd);
    return;
  }
  FakeResponse response;
  {
    absl::MutexLock lock(&mu_);
    requests_.push_back(request);
    response = default_response_;
    if (!queue_.empty()) {
      response = std::move(queue_.front());
      queue_.pop_front();
    }
  }
  std::string head = absl::StrCat("HTTP/1.1 ", response.status, " ", Reason(response.status),
                                  "\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n");
  bool has_type = false;
  for (const auto& [name, value] : response.headers) {
    absl::StrAppend(&head, name, ": ", value, "\r\n");
    has_type = has_type || absl::AsciiStrToLower(name) == "content-type";
  }
  if (!has_type) {
    absl::StrAppend(&head, "Content-Type: ",
                    response.status == 200 ? "text/event-stream" : "application/json", "\r\n");
  }
  bool open = WriteAll(fd, head + "\r\n");
  for (size_t i = 0; open && i < response.chunks.size(); ++i) {
    if (i > 0 && response.chunk_delay > absl::ZeroDuration()) absl::SleepFor(response.chunk_delay);
    const std::string& chunk = response.chunks[i];
    if (i == 0) {  // Stamped as it leaves: the client cannot see it sooner.
      absl::MutexLock lock(&mu_);
      first_chunk_times_.push_back(absl::Now());
    }
    open = WriteAll(fd, absl::StrCat(absl::Hex(chunk.size()), "\r\n", chunk, "\r\n"));
  }
  switch (response.end) {
    case FakeResponse::End::kClean:
      if (open) WriteAll(fd, "0\r\n\r\n");
      break;
    case FakeResponse::End::kTruncated:
      break;
    case FakeResponse::End::kReset: {
      linger reset{.l_onoff = 1, .l_linger = 0};  // close() sends RST.
      ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
      break;
    }
    case FakeResponse::End::kStall:
      // Hold the connection until the client closes it (or the server stops).
      while (!stopping_.load()) {
        pollfd poll_fd{.fd = fd, .events = POLLIN};
        if (::poll(&poll_fd, 1, 50) > 0) {
          char byte;
          if (::recv(fd, &byte, 1, MSG_DONTWAIT) <= 0) {
            stalled_client_left_.store(true);
            break;
          }
        }
      }
      break;
  }
  ::close(fd);
}

}  // namespace parley::testing
