// Signals: the Redis pub/sub channels through which session-svc replicas nudge each
// other. Both are hints that make things fast; correctness never depends on them (a
// lost wake costs at most one poll interval, a lost cancel at most one heartbeat).
//
//   <prefix>parley:sched:wake     "<session id>"            work may be claimable
//   <prefix>parley:sched:cancel   "<turn id> <REASON>"      stop this running turn
//
//   Signals signals(options, logger);
//   signals.Start([&] { scheduler.Wake(); },
//                 [&](const std::string& turn, const std::string& why) { ... });
//   signals.PublishWake(session_id);
//
// One thread reads the subscription and calls the handlers (they must not block);
// Publish* may be called from any thread (a small pool of connections). After a
// reconnect the wake handler is called once, since wakes may have been missed.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/redis.h"
#include "telemetry/log.h"

namespace parley::session {

struct SignalsOptions {
  RedisEndpoint redis;
  std::string key_prefix;
};

class Signals {
 public:
  using WakeHandler = std::function<void()>;
  using CancelHandler = std::function<void(const std::string& turn_id, const std::string& reason)>;

  Signals(SignalsOptions options, const telemetry::Logger& logger);
  ~Signals();  // Stops the reader thread.

  // Subscribes (in the background, retrying) and starts calling the handlers.
  void Start(WakeHandler on_wake, CancelHandler on_cancel);
  void Stop();

  // Best effort: an error is returned, but callers go on (see the top of this file).
  absl::Status PublishWake(const std::string& session_id);
  absl::Status PublishCancel(const std::string& turn_id, const std::string& reason);

  // Runs one command on a pooled connection (also used for reads the router needs).
  absl::StatusOr<RedisReply> Command(const std::vector<std::string>& args);

  const std::string& wake_channel() const { return wake_channel_; }
  const std::string& cancel_channel() const { return cancel_channel_; }

 private:
  void ReadLoop();

  const SignalsOptions options_;
  const telemetry::Logger& logger_;
  const std::string wake_channel_;
  const std::string cancel_channel_;
  WakeHandler on_wake_;
  CancelHandler on_cancel_;
  std::atomic<bool> stop_{false};
  std::thread reader_;

  absl::Mutex pool_mu_;
  std::vector<std::unique_ptr<RedisConnection>> idle_ ABSL_GUARDED_BY(pool_mu_);
};

}  // namespace parley::session
