// Redis connection helpers on hiredis 0.14 (RESP2), plus the key layout every service
// agrees on.
//
//   absl::StatusOr<RedisEndpoint> endpoint = ParseRedisUrl("redis://127.0.0.1:6379/0");
//   if (!endpoint.ok()) return endpoint.status();
//   absl::StatusOr<std::unique_ptr<RedisConnection>> redis =
//       RedisConnection::Connect(*endpoint, absl::Seconds(2));
//   if (!redis.ok()) return redis.status();
//   absl::StatusOr<RedisReply> pong = (*redis)->Command({"PING"});
//
// RedisConnection is a blocking connection for one thread at a time; the fan-out hub
// uses hiredis' async API separately. Connect() returns a RedisServerConnection (one
// socket to one server) for a redis:// URL and a RedisClusterConnection
// (common/redis_cluster.h: routes each command to the node serving its key's slot) for
// a redis+cluster:// URL; callers see only RedisConnection. Keys are built by RedisKeys
// so that all keys of a session share one Redis Cluster hash slot (the `{s:<id>}` hash
// tag) and so tests can give each test a key space of its own (the prefix).
#pragma once

#include <hiredis/hiredis.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace parley {

struct RedisNodeAddress {
  std::string host;
  int port = 0;

  std::string ToString() const;  // "host:port"
  friend bool operator==(const RedisNodeAddress&, const RedisNodeAddress&) = default;
  template <typename H>
  friend H AbslHashValue(H state, const RedisNodeAddress& node) {
    return H::combine(std::move(state), node.host, node.port);
  }
};

struct RedisEndpoint {
  std::string host = "127.0.0.1";
  int port = 6379;
  int db = 0;
  std::string password;  // Empty: no AUTH.
  // The nodes a redis+cluster:// URL names (host and port above are the first); empty
  // for a single server.
  std::vector<RedisNodeAddress> cluster_seeds;

  bool cluster() const { return !cluster_seeds.empty(); }
  // The same credentials for another server (a cluster node): host and port replaced,
  // no seeds.
  RedisEndpoint ForNode(const RedisNodeAddress& node) const;
};

// Parses "redis://[:password@]host[:port][/db]" (one server) or
// "redis+cluster://[:password@]host[:port][,host[:port]...]" (a Redis Cluster reached
// through any of the listed nodes; database 0 only). Errors name what is malformed.
absl::StatusOr<RedisEndpoint> ParseRedisUrl(absl::string_view url);

// Validator for a --redis_url flag.
inline absl::Status ValidateRedisUrl(absl::string_view url) { return ParseRedisUrl(url).status(); }

// The bytes of a string/status/error reply; "" for null and non-string replies.
inline std::string ReplyString(const redisReply* reply) {
  return reply != nullptr && reply->str != nullptr ? std::string(reply->str, reply->len) : "";
}

// An integer reply, or a number Redis keeps as a string (GET, HGET); 0 for nil or
// anything else.
int64_t ReplyInt64(const redisReply* reply);

// The value of field `name` of one XRANGE entry ([id, [field, value, ...]]); null when
// the entry has no such field.
const redisReply* StreamEntryField(const redisReply* entry, absl::string_view name);

struct RedisReplyDeleter {
  void operator()(redisReply* reply) const { freeReplyObject(reply); }
};
using RedisReply = std::unique_ptr<redisReply, RedisReplyDeleter>;

// The status a reply of type error stands for: INTERNAL carrying the server's message,
// FAILED_PRECONDITION for Lua script errors raised with redis.error_reply("PARLEY_...").
absl::Status ErrorReplyStatus(const redisReply& reply);

class RedisConnection {
 public:
  // Connects to the server or cluster `endpoint` names, authenticates and selects the
  // database. UNAVAILABLE when no server can be reached within `timeout`.
  static absl::StatusOr<std::unique_ptr<RedisConnection>> Connect(const RedisEndpoint& endpoint,
                                                                  absl::Duration timeout);
  virtual ~RedisConnection() = default;

  // Sends one command with binary-safe arguments and waits for its reply. A reply of
  // type error becomes a status (ErrorReplyStatus); a broken connection is UNAVAILABLE
  // and the connection must then be discarded when broken() says so.
  absl::StatusOr<RedisReply> Command(const std::vector<std::string>& args);

  // Sends several commands in one round trip and returns their replies in order. The
  // first error (a reply of type error, or a broken connection) is returned instead.
  absl::StatusOr<std::vector<RedisReply>> Pipeline(
      const std::vector<std::vector<std::string>>& commands);
  // Like Pipeline, but each command keeps its own outcome: an error reply becomes that
  // command's status (as Command reports it) and the others still succeed. Only a
  // broken connection fails the whole batch.
  virtual absl::StatusOr<std::vector<absl::StatusOr<RedisReply>>> PipelineEach(
      const std::vector<std::vector<std::string>>& commands) = 0;

  // Waits, within the connection's timeout, for the next reply: for a connection that
  // has subscribed, the next pub/sub message. An error reply is returned as a reply.
  virtual absl::StatusOr<RedisReply> ReadReply() = 0;

  // Like ReadReply, but gives up after `timeout` without breaking the connection:
  // DEADLINE_EXCEEDED when nothing arrived. For a subscribed connection whose reader
  // thread must also notice that it is asked to stop.
  virtual absl::StatusOr<RedisReply> ReadReplyFor(absl::Duration timeout) = 0;

  virtual bool broken() const = 0;

  // True when this connection routes over a Redis Cluster: a session's channel is then
  // published with SPUBLISH (sharded pub/sub) instead of PUBLISH.
  virtual bool cluster() const { return false; }
};

// One socket to one Redis server.
class RedisServerConnection final : public RedisConnection {
 public:
  // Connects to endpoint.host:port (ignoring cluster seeds), authenticates and selects
  // the database. UNAVAILABLE when the server cannot be reached within `timeout`.
  static absl::StatusOr<std::unique_ptr<RedisServerConnection>> Connect(
      const RedisEndpoint& endpoint, absl::Duration timeout);

  absl::StatusOr<std::vector<absl::StatusOr<RedisReply>>> PipelineEach(
      const std::vector<std::vector<std::string>>& commands) override;
  absl::StatusOr<RedisReply> ReadReply() override;
  absl::StatusOr<RedisReply> ReadReplyFor(absl::Duration timeout) override;
  bool broken() const override { return context_ == nullptr || context_->err != 0; }

  // PipelineEach in two halves, so one thread can have commands in flight on several
  // servers at once: Send writes every command; Receive then reads `count` replies.
  absl::Status Send(const std::vector<std::vector<std::string>>& commands);
  absl::StatusOr<std::vector<absl::StatusOr<RedisReply>>> Receive(size_t count);

  // For an event loop watching the socket: fd() becomes readable, then ReadAvailable()
  // reads what arrived (one read, no waiting) and returns every complete reply, error
  // replies included as replies. UNAVAILABLE when the server closed the connection.
  int fd() const { return context_->fd; }
  absl::StatusOr<std::vector<RedisReply>> ReadAvailable();

  // For a pooled connection awaiting no reply: true when its socket is readable anyway
  // (the server closed it — a node that died — or sent something unasked), so a new
  // command must not go on it. Never blocks.
  bool ReadableWhileIdle() const;

 private:
  struct ContextDeleter {
    void operator()(redisContext* context) const { redisFree(context); }
  };
  explicit RedisServerConnection(redisContext* context) : context_(context) {}
  std::unique_ptr<redisContext, ContextDeleter> context_;
};

// The names of every Redis key Parley uses for a session (DESIGN §5).
class RedisKeys {
 public:
  // `prefix` is prepended to every key and channel; empty in production.
  explicit RedisKeys(std::string prefix = "") : prefix_(std::move(prefix)) {}

  // The session's event stream: entry ids "<seq>-0" for durable events, "<seq>-1", … for
  // the transient ones after them (common/events/event_log_reader.h reads it).
  std::string EventStream(absl::string_view session_id) const;
  // The pub/sub channel on which each event is published.
  std::string EventChannel(absl::string_view session_id) const;
  // Owner and fencing epoch of the session's current writer, and the last seq it
  // published (`last_seq`, read through EventLogReader::LastSeq).
  std::string Lease(absl::string_view session_id) const;
  // The highest seq store-svc has committed to Postgres; the publisher trims the
  // stream only below it.
  std::string PersistedSeq(absl::string_view session_id) const;
  // Which store-svc replica is persisting the session right now (a short lease).
  std::string PersisterLock(absl::string_view session_id) const;
  // Sorted set of sessions with events not yet in Postgres, scored by the time (ms)
  // they were first marked. One key for all sessions: its own Cluster slot.
  std::string PersistQueue() const;
  // The gateway's rate limiter state (GCRA: the theoretical arrival time) of a tenant
  // and of one of its keys; both on the tenant's Cluster slot, so one script sees both.
  std::string TenantRate(absl::string_view tenant_id) const;
  std::string KeyRate(absl::string_view tenant_id, absl::string_view key_id) const;
  // The outcome of a call made with an idempotency key (gateway): per tenant, method
  // and the key's digest (hex).
  std::string Idempotency(absl::string_view tenant_id, absl::string_view method,
                          absl::string_view key_digest) const;

  const std::string& prefix() const { return prefix_; }

 private:
  std::string Tag(absl::string_view session_id) const;
  std::string prefix_;
};

}  // namespace parley
