// RedisSubscriber: one Redis pub/sub connection for the whole gateway process.
//
// It runs hiredis' async client on a libevent loop on its own thread. Other threads
// ask it to Subscribe()/Unsubscribe() channels (queued and handed to the loop through
// a pipe); it reports back on the loop thread through a Listener:
//   OnSubscribed(channel)   the subscription is active: messages from now on arrive
//   OnMessage(channel, payload)
//   OnDisconnected()        the connection dropped; nothing arrives until re-subscribed
// After a disconnect it reconnects with capped exponential backoff (1 s base, 30 s cap,
// jitter) and re-subscribes every wanted channel, which again reports OnSubscribed —
// the hub's cue to resync those streams from their last delivered seq.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "common/redis.h"
#include "common/retry.h"

struct event_base;
struct event;
struct redisAsyncContext;

namespace parley::gateway {

class RedisSubscriber {
 public:
  class Listener {
   public:
    virtual ~Listener() = default;
    virtual void OnSubscribed(const std::string& channel) = 0;
    virtual void OnMessage(const std::string& channel, std::string payload) = 0;
    virtual void OnDisconnected() = 0;
  };

  // `listener` must outlive the subscriber; its methods run on the subscriber thread.
  RedisSubscriber(RedisEndpoint endpoint, Listener& listener,
                  BackoffPolicy reconnect = {.initial = absl::Seconds(1),
                                             .max = absl::Seconds(30)});
  ~RedisSubscriber();  // Stops the loop thread.

  void Start();
  // Thread-safe; idempotent per channel.
  void Subscribe(const std::string& channel);
  void Unsubscribe(const std::string& channel);
  bool connected() const { return connected_.load(); }

 private:
  struct Command {
    bool subscribe;
    std::string channel;
  };

  void Loop();
  void Connect();
  void ScheduleReconnect();
  void DrainCommands();
  void Send(const char* verb, const std::string& channel);

  static void OnPipe(int fd, short what, void* self);
  static void OnReconnectTimer(int fd, short what, void* self);
  static void OnConnect(const redisAsyncContext* context, int status);
  static void OnDisconnect(const redisAsyncContext* context, int status);
  static void OnReply(redisAsyncContext* context, void* reply, void* self);

  const RedisEndpoint endpoint_;
  Listener& listener_;
  const BackoffPolicy reconnect_;
  int failures_ = 0;  // Loop thread only.

  absl::Mutex mu_;
  std::vector<Command> commands_ ABSL_GUARDED_BY(mu_);
  // Channels the hub wants; replayed after every reconnect. Loop thread only.
  absl::flat_hash_set<std::string> wanted_;

  int pipe_[2] = {-1, -1};
  event_base* base_ = nullptr;
  event* pipe_event_ = nullptr;
  event* reconnect_event_ = nullptr;
  redisAsyncContext* context_ = nullptr;  // Loop thread only; null while disconnected.
  std::atomic<bool> connected_{false};
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace parley::gateway
