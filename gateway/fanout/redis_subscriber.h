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
//
// On a Redis Cluster (a redis+cluster:// endpoint) channels are sharded: each channel
// is SSUBSCRIBEd on the primary serving its slot (the publisher SPUBLISHes there), over
// one blocking hiredis connection per primary whose socket the same libevent loop
// watches (hiredis 0.14's async client knows no sharded pub/sub replies). The links of
// all primaries count as one connection: when any of them drops (a failover) or a
// channel's slot moves (the server's own SUNSUBSCRIBE, or MOVED), every link is closed,
// OnDisconnected is reported, and the reconnect reads the slot map again and
// re-subscribes every channel — each OnSubscribed then resyncs its streams exactly as
// after a single server's reconnect. Connecting a link blocks the loop thread for at
// most a second.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "common/redis.h"
#include "common/redis_cluster.h"
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

  // One primary's sharded pub/sub connection (cluster mode only).
  struct ShardLink {
    RedisSubscriber* owner = nullptr;
    std::unique_ptr<RedisServerConnection> connection;
    event* readable = nullptr;
  };

  void Loop();
  void Connect();
  void ScheduleReconnect();
  void DrainCommands();
  void Send(bool subscribe, const std::string& channel);

  // Cluster mode, on the loop thread.
  void ConnectShards();
  void SendSharded(bool subscribe, const std::string& channel);
  ShardLink* LinkTo(const RedisNodeAddress& node);
  // Whether the reply keeps the links usable (false: resubscribe everything).
  bool HandleShardReply(const redisReply& reply);
  void CloseShards();
  void DropShards();  // CloseShards, report OnDisconnected and schedule a reconnect.
  static void OnShardReadable(int fd, short what, void* link);

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
  // Cluster mode, loop thread only: the slot map and one link per primary in use.
  std::unique_ptr<RedisSlotMap> slot_map_;
  absl::flat_hash_map<RedisNodeAddress, std::unique_ptr<ShardLink>> shards_;
  std::atomic<bool> connected_{false};
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace parley::gateway
