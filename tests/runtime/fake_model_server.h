// FakeModelServer: an HTTP/1.1 server on loopback that plays the part of a model API,
// for tests of the OpenAI and Anthropic providers — the real wire protocol, scripted.
//
// Each request is recorded (path, headers, body) and answered with the next queued
// FakeResponse: a status, headers, and a body sent in chunks (chunked transfer
// encoding, as the real APIs stream) with an optional pause between chunks. A response
// can also end with a connection reset, end without its final chunk (truncated), or
// stall after its chunks until the client gives up. With the queue empty, requests get
// the default response: a 500 unless SetDefaultResponse said otherwise.
//
//   auto server = FakeModelServer::Start();
//   (*server)->Enqueue({.chunks = {"data: {...}\n\n", "data: [DONE]\n\n"}});
//   config.base_url = (*server)->base_url();
//   ... (*server)->requests()[0].body ...
#pragma once

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace parley::testing {

struct FakeResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::vector<std::string> chunks;
  absl::Duration chunk_delay = absl::ZeroDuration();
  enum class End { kClean, kTruncated, kReset, kStall };
  End end = End::kClean;
};

struct RecordedRequest {
  std::string method;
  std::string path;
  std::map<std::string, std::string> headers;  // Names lower-cased.
  std::string body;
};

class FakeModelServer {
 public:
  // Listens on 127.0.0.1:`port` (0: any free port).
  static absl::StatusOr<std::unique_ptr<FakeModelServer>> Start(int port = 0);
  ~FakeModelServer();

  std::string base_url() const;
  void Enqueue(FakeResponse response);
  // The answer to requests that find the queue empty.
  void SetDefaultResponse(FakeResponse response);
  std::vector<RecordedRequest> requests() const;
  // Waits until at least `count` requests arrived.
  bool WaitForRequests(size_t count, absl::Duration timeout) const;
  // When the first body chunk of each response was written, in request order (for
  // latency measurements from the provider's first byte).
  std::vector<absl::Time> first_chunk_times() const;
  // True once a stalled response's client closed its connection.
  bool stalled_client_left() const { return stalled_client_left_.load(); }

 private:
  FakeModelServer() = default;
  void AcceptLoop();
  void Serve(int fd);

  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> stalled_client_left_{false};
  std::thread acceptor_;
  mutable absl::Mutex mu_;
  std::deque<FakeResponse> queue_ ABSL_GUARDED_BY(mu_);
  FakeResponse default_response_ ABSL_GUARDED_BY(mu_){
      .status = 500, .chunks = {"{\"error\":{\"message\":\"no response queued\"}}"}};
  std::vector<RecordedRequest> requests_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Time> first_chunk_times_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> connections_ ABSL_GUARDED_BY(mu_);
};

}  // namespace parley::testing
