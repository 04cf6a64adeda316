#include "gateway/fanout/redis_subscriber.h"

#include <event2/event.h>
#include <fcntl.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <unistd.h>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"

namespace parley::gateway {
namespace {

RedisSubscriber* Self(const redisAsyncContext* context) {
  return static_cast<RedisSubscriber*>(context->data);
}

}  // namespace

RedisSubscriber::RedisSubscriber(RedisEndpoint endpoint, Listener& listener,
                                 BackoffPolicy reconnect)
    : endpoint_(std::move(endpoint)), listener_(listener), reconnect_(reconnect) {
  (void)!::pipe2(pipe_, O_CLOEXEC | O_NONBLOCK);
  base_ = event_base_new();
  pipe_event_ = event_new(base_, pipe_[0], EV_READ | EV_PERSIST, &RedisSubscriber::OnPipe, this);
  event_add(pipe_event_, nullptr);
  reconnect_event_ = evtimer_new(base_, &RedisSubscriber::OnReconnectTimer, this);
}

RedisSubscriber::~RedisSubscriber() {
  stopping_ = true;
  char byte = 0;
  (void)!::write(pipe_[1], &byte, 1);
  if (thread_.joinable()) thread_.join();
  event_free(reconnect_event_);
  event_free(pipe_event_);
  event_base_free(base_);
  ::close(pipe_[0]);
  ::close(pipe_[1]);
}

void RedisSubscriber::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void RedisSubscriber::Loop() {
  Connect();
  event_base_dispatch(base_);
}

void RedisSubscriber::Subscribe(const std::string& channel) {
  {
    absl::MutexLock lock(&mu_);
    commands_.push_back({true, channel});
  }
  char byte = 0;
  (void)!::write(pipe_[1], &byte, 1);
}

void RedisSubscriber::Unsubscribe(const std::string& channel) {
  {
    absl::MutexLock lock(&mu_);
    commands_.push_back({false, channel});
  }
  char byte = 0;
  (void)!::write(pipe_[1], &byte, 1);
}

void RedisSubscriber::OnPipe(int fd, short, void* arg) {
  auto* self = static_cast<RedisSubscriber*>(arg);
  char buffer[256];
  while (::read(fd, buffer, sizeof(buffer)) > 0) {
  }
  if (self->stopping_) {
    if (self->context_ != nullptr) {
      redisAsyncContext* context = self->context_;
      self->context_ = nullptr;
      redisAsyncFree(context);
    }
    self->CloseShards();
    event_base_loopbreak(self->base_);
    return;
  }
  self->DrainCommands();
}

void RedisSubscriber::DrainCommands() {
  std::vector<Command> commands;
  {
    absl::MutexLock lock(&mu_);
    commands.swap(commands_);
  }
  for (const Command& command : commands) {
    if (command.subscribe) {
      if (!wanted_.insert(command.channel).second) continue;
      Send(true, command.channel);
    } else {
      if (wanted_.erase(command.channel) == 0) continue;
      Send(false, command.channel);
    }
  }
}

void RedisSubscriber::Send(bool subscribe, const std::string& channel) {
  if (endpoint_.cluster()) return SendSharded(subscribe, channel);
  if (context_ == nullptr || !connected_) return;  // Replayed after (re)connect.
  const char* verb = subscribe ? "SUBSCRIBE" : "UNSUBSCRIBE";
  const char* argv[] = {verb, channel.data()};
  size_t argvlen[] = {strlen(verb), channel.size()};
  redisAsyncCommandArgv(context_, &RedisSubscriber::OnReply, this, 2, argv, argvlen);
}

void RedisSubscriber::Connect() {
  if (endpoint_.cluster()) return ConnectShards();
  redisAsyncContext* context = redisAsyncConnect(endpoint_.host.c_str(), endpoint_.port);
  if (context == nullptr || context->err != 0) {
    if (context != nullptr) redisAsyncFree(context);
    ScheduleReconnect();
    return;
  }
  context->data = this;
  redisLibeventAttach(context, base_);
  redisAsyncSetConnectCallback(context, &RedisSubscriber::OnConnect);
  redisAsyncSetDisconnectCallback(context, &RedisSubscriber::OnDisconnect);
  context_ = context;
}

void RedisSubscriber::ScheduleReconnect() {
  if (stopping_) return;
  absl::BitGen bitgen;
  timeval delay =
      absl::ToTimeval(BackoffDelay(reconnect_, failures_++, absl::Uniform(bitgen, 0.0, 1.0)));
  evtimer_add(reconnect_event_, &delay);
}

void RedisSubscriber::OnReconnectTimer(int, short, void* arg) {
  static_cast<RedisSubscriber*>(arg)->Connect();
}

void RedisSubscriber::OnConnect(const redisAsyncContext* context, int status) {
  RedisSubscriber* self = Self(context);
  if (status != REDIS_OK) {
    // hiredis frees a context whose connect failed.
    self->context_ = nullptr;
    self->ScheduleReconnect();
    return;
  }
  self->failures_ = 0;
  self->connected_ = true;
  auto* mutable_context = const_cast<redisAsyncContext*>(context);
  if (!self->endpoint_.password.empty()) {
    const char* argv[] = {"AUTH", self->endpoint_.password.c_str()};
    size_t argvlen[] = {4, self->endpoint_.password.size()};
    redisAsyncCommandArgv(mutable_context, nullptr, nullptr, 2, argv, argvlen);
  }
  // Pub/sub ignores the database number, so no SELECT is needed.
  for (const std::string& channel : self->wanted_) self->Send(true, channel);
  self->DrainCommands();
}

void RedisSubscriber::OnDisconnect(const redisAsyncContext* context, int) {
  RedisSubscriber* self = Self(context);
  self->context_ = nullptr;  // hiredis frees it after this callback.
  self->connected_ = false;
  if (self->stopping_) return;
  self->listener_.OnDisconnected();
  self->ScheduleReconnect();
}

void RedisSubscriber::OnReply(redisAsyncContext*, void* raw, void* arg) {
  auto* self = static_cast<RedisSubscriber*>(arg);
  const auto* reply = static_cast<const redisReply*>(raw);
  if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3) return;
  const std::string kind = ReplyString(reply->element[0]);
  const std::string channel = ReplyString(reply->element[1]);
  if (kind == "message") {
    self->listener_.OnMessage(channel, ReplyString(reply->element[2]));
  } else if (kind == "subscribe" && self->wanted_.contains(channel)) {
    self->listener_.OnSubscribed(channel);
  }
}

// Cluster mode: sharded pub/sub, one link per primary (see the header).

void RedisSubscriber::ConnectShards() {
  absl::StatusOr<RedisSlotMap> map =
      FetchRedisSlotMap(endpoint_, endpoint_.cluster_seeds, absl::Seconds(1));
  if (!map.ok()) return ScheduleReconnect();
  slot_map_ = std::make_unique<RedisSlotMap>(*std::move(map));
  connected_ = true;
  for (const std::string& channel : wanted_) {
    SendSharded(true, channel);
    if (!connected_) return;  // A link failed: DropShards scheduled the next attempt.
  }
  failures_ = 0;  // Only now: a map naming a dead primary must not reset the backoff.
  DrainCommands();
}

void RedisSubscriber::SendSharded(bool subscribe, const std::string& channel) {
  if (!connected_ || slot_map_ == nullptr) return;  // Replayed after (re)connect.
  const RedisNodeAddress* primary = slot_map_->PrimaryOf(RedisKeySlot(channel));
  ShardLink* link = primary == nullptr ? nullptr : LinkTo(*primary);
  if (link == nullptr ||
      !link->connection->Send({{subscribe ? "SSUBSCRIBE" : "SUNSUBSCRIBE", channel}}).ok()) {
    DropShards();
  }
}

RedisSubscriber::ShardLink* RedisSubscriber::LinkTo(const RedisNodeAddress& node) {
  if (auto it = shards_.find(node); it != shards_.end()) return it->second.get();
  absl::StatusOr<std::unique_ptr<RedisServerConnection>> connection =
      RedisServerConnection::Connect(endpoint_.ForNode(node), absl::Seconds(1));
  if (!connection.ok()) return nullptr;
  auto link = std::make_unique<ShardLink>();
  link->owner = this;
  link->connection = *std::move(connection);
  link->readable = event_new(base_, link->connection->fd(), EV_READ | EV_PERSIST,
                             &RedisSubscriber::OnShardReadable, link.get());
  event_add(link->readable, nullptr);
  return (shards_[node] = std::move(link)).get();
}

void RedisSubscriber::OnShardReadable(int, short, void* arg) {
  auto* link = static_cast<ShardLink*>(arg);
  RedisSubscriber* self = link->owner;
  absl::StatusOr<std::vector<RedisReply>> replies = link->connection->ReadAvailable();
  bool healthy = replies.ok();
  if (healthy) {
    for (const RedisReply& reply : *replies) healthy &= self->HandleShardReply(*reply);
  }
  if (!healthy) self->DropShards();
}

bool RedisSubscriber::HandleShardReply(const redisReply& reply) {
  if (reply.type == REDIS_REPLY_ERROR) return false;  // MOVED, CLUSTERDOWN: slots changed.
  if (reply.type != REDIS_REPLY_ARRAY || reply.elements < 3) return true;
  const std::string kind = ReplyString(reply.element[0]);
  const std::string channel = ReplyString(reply.element[1]);
  if (kind == "smessage") {
    listener_.OnMessage(channel, ReplyString(reply.element[2]));
  } else if (kind == "ssubscribe" && wanted_.contains(channel)) {
    listener_.OnSubscribed(channel);
  } else if (kind == "sunsubscribe" && wanted_.contains(channel)) {
    // Not asked for (or asked for before the channel was wanted again): the server
    // dropped it because its slot moved. Resubscribing everything finds the new owner.
    return false;
  }
  return true;
}

void RedisSubscriber::CloseShards() {
  for (auto& [node, link] : shards_) event_free(link->readable);
  shards_.clear();
}

void RedisSubscriber::DropShards() {
  if (!connected_) return;
  CloseShards();
  slot_map_.reset();
  connected_ = false;
  if (stopping_) return;
  listener_.OnDisconnected();
  ScheduleReconnect();
}

}  // namespace parley::gateway
