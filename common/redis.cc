#include "common/redis.h"

#include <poll.h>
#include <signal.h>
#include <sys/time.h>

#include <cerrno>
#include <mutex>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/redis_cluster.h"

namespace parley {

namespace {

// "host[:port]" of a redis URL; `url` is only quoted in errors.
absl::StatusOr<RedisNodeAddress> ParseHostPort(absl::string_view url, absl::string_view text) {
  RedisNodeAddress node{.host = "", .port = 6379};
  if (size_t colon = text.rfind(':'); colon != absl::string_view::npos) {
    if (!absl::SimpleAtoi(text.substr(colon + 1), &node.port) || node.port <= 0 ||
        node.port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("redis url \"", url, "\": port must be in 1..65535"));
    }
    text = text.substr(0, colon);
  }
  if (text.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("redis url \"", url, "\": missing host"));
  }
  node.host = std::string(text);
  return node;
}

}  // namespace

std::string RedisNodeAddress::ToString() const { return absl::StrCat(host, ":", port); }

RedisEndpoint RedisEndpoint::ForNode(const RedisNodeAddress& node) const {
  RedisEndpoint endpoint = *this;
  endpoint.host = node.host;
  endpoint.port = node.port;
  endpoint.cluster_seeds.clear();
  return endpoint;
}

absl::StatusOr<RedisEndpoint> ParseRedisUrl(absl::string_view url) {
  RedisEndpoint endpoint;
  absl::string_view rest = url;
  const bool cluster = absl::ConsumePrefix(&rest, "redis+cluster://");
  if (!cluster && !absl::ConsumePrefix(&rest, "redis://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("redis url \"", url, "\": must start with redis:// or redis+cluster://"));
  }
  if (size_t at = rest.rfind('@'); at != absl::string_view::npos) {
    absl::string_view userinfo = rest.substr(0, at);
    rest = rest.substr(at + 1);
    size_t colon = userinfo.find(':');
    endpoint.password =
        std::string(colon == absl::string_view::npos ? userinfo : userinfo.substr(colon + 1));
  }
  if (size_t slash = rest.find('/'); slash != absl::string_view::npos) {
    absl::string_view db = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
    if (!db.empty() && (!absl::SimpleAtoi(db, &endpoint.db) || endpoint.db < 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("redis url \"", url, "\": database must be a non-negative number"));
    }
  }
  if (!cluster) {
    absl::StatusOr<RedisNodeAddress> node = ParseHostPort(url, rest);
    if (!node.ok()) return node.status();
    endpoint.host = node->host;
    endpoint.port = node->port;
    return endpoint;
  }
  if (endpoint.db != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("redis url \"", url, "\": a Redis Cluster has only database 0"));
  }
  for (absl::string_view text : absl::StrSplit(rest, ',')) {
    absl::StatusOr<RedisNodeAddress> node = ParseHostPort(url, text);
    if (!node.ok()) return node.status();
    endpoint.cluster_seeds.push_back(*std::move(node));
  }
  endpoint.host = endpoint.cluster_seeds.front().host;
  endpoint.port = endpoint.cluster_seeds.front().port;
  return endpoint;
}

absl::StatusOr<std::unique_ptr<RedisConnection>> RedisConnection::Connect(
    const RedisEndpoint& endpoint, absl::Duration timeout) {
  if (endpoint.cluster()) return RedisClusterConnection::Connect(endpoint, timeout);
  return RedisServerConnection::Connect(endpoint, timeout);
}

absl::StatusOr<std::unique_ptr<RedisServerConnection>> RedisServerConnection::Connect(
    const RedisEndpoint& endpoint, absl::Duration timeout) {
  // hiredis 0.14 writes with write(2), not send(MSG_NOSIGNAL): a write to a server that
  // died (a cluster primary killed mid-stream) would raise SIGPIPE and end the whole
  // process. Ignored, it is EPIPE, which the connection reports as UNAVAILABLE.
  static std::once_flag ignore_sigpipe;
  std::call_once(ignore_sigpipe, [] { ::signal(SIGPIPE, SIG_IGN); });
  timeval tv = absl::ToTimeval(timeout);
  redisContext* raw = redisConnectWithTimeout(endpoint.host.c_str(), endpoint.port, tv);
  if (raw == nullptr) return absl::ResourceExhaustedError("redis: cannot allocate context");
  std::unique_ptr<RedisServerConnection> connection(new RedisServerConnection(raw));
  if (raw->err != 0) {
    return absl::UnavailableError(
        absl::StrCat("redis ", endpoint.host, ":", endpoint.port, ": ", raw->errstr));
  }
  redisSetTimeout(raw, tv);
  if (!endpoint.password.empty()) {
    absl::StatusOr<RedisReply> auth = connection->Command({"AUTH", endpoint.password});
    if (!auth.ok()) return auth.status();
  }
  if (endpoint.db != 0) {
    absl::StatusOr<RedisReply> select = connection->Command({"SELECT", absl::StrCat(endpoint.db)});
    if (!select.ok()) return select.status();
  }
  return connection;
}

// Errors raised by Parley's own scripts start with "PARLEY_" and are preconditions
// the caller acts on; any other error reply is a bug or a server problem.
absl::Status ErrorReplyStatus(const redisReply& reply) {
  absl::string_view message(reply.str, reply.len);
  return absl::Status(absl::StrContains(message, "PARLEY_") ? absl::StatusCode::kFailedPrecondition
                                                            : absl::StatusCode::kInternal,
                      absl::StrCat("redis: ", message));
}

absl::StatusOr<RedisReply> RedisConnection::Command(const std::vector<std::string>& args) {
  absl::StatusOr<std::vector<RedisReply>> replies = Pipeline({args});
  if (!replies.ok()) return replies.status();
  return std::move(replies->front());
}

absl::StatusOr<std::vector<RedisReply>> RedisConnection::Pipeline(
    const std::vector<std::vector<std::string>>& commands) {
  absl::StatusOr<std::vector<absl::StatusOr<RedisReply>>> each = PipelineEach(commands);
  if (!each.ok()) return each.status();
  std::vector<RedisReply> replies;
  replies.reserve(each->size());
  for (absl::StatusOr<RedisReply>& reply : *each) {
    if (!reply.ok()) return reply.status();
    replies.push_back(*std::move(reply));
  }
  return replies;
}

absl::StatusOr<std::vector<absl::StatusOr<RedisReply>>> RedisServerConnection::PipelineEach(
    const std::vector<std::vector<std::string>>& commands) {
  if (absl::Status sent = Send(commands); !sent.ok()) return sent;
  return Receive(commands.size());
}

absl::Status RedisServerConnection::Send(const std::vector<std::vector<std::string>>& commands) {
  if (broken()) return absl::UnavailableError("redis: connection is broken");
  std::vector<const char*> argv;
  std::vector<size_t> argvlen;
  for (const std::vector<std::string>& args : commands) {
    argv.clear();
    argvlen.clear();
    for (const std::string& arg : args) {
      argv.push_back(arg.data());
      argvlen.push_back(arg.size());
    }
    if (redisAppendCommandArgv(context_.get(), static_cast<int>(args.size()), argv.data(),
                               argvlen.data()) != REDIS_OK) {
      return absl::UnavailableError(absl::StrCat("redis: ", context_->errstr));
    }
  }
  int done = 0;
  while (done == 0) {
    if (redisBufferWrite(context_.get(), &done) != REDIS_OK) {
      return absl::UnavailableError(absl::StrCat("redis: ", context_->errstr));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<absl::StatusOr<RedisReply>>> RedisServerConnection::Receive(
    size_t count) {
  // Every reply is read, even after an error reply, so the connection stays in step.
  std::vector<absl::StatusOr<RedisReply>> replies;
  replies.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    absl::StatusOr<RedisReply> reply = ReadReply();
    if (!reply.ok()) return reply.status();
    if ((*reply)->type == REDIS_REPLY_ERROR) {
      replies.push_back(ErrorReplyStatus(**reply));
    } else {
      replies.push_back(*std::move(reply));
    }
  }
  return replies;
}

bool RedisServerConnection::ReadableWhileIdle() const {
  if (broken()) return true;
  pollfd fd{.fd = context_->fd, .events = POLLIN, .revents = 0};
  return ::poll(&fd, 1, 0) != 0;
}

absl::StatusOr<std::vector<RedisReply>> RedisServerConnection::ReadAvailable() {
  if (broken()) return absl::UnavailableError("redis: connection is broken");
  if (redisBufferRead(context_.get()) != REDIS_OK) {
    return absl::UnavailableError(absl::StrCat("redis: ", context_->errstr));
  }
  std::vector<RedisReply> replies;
  for (;;) {
    void* raw = nullptr;
    if (redisGetReplyFromReader(context_.get(), &raw) != REDIS_OK) {
      return absl::UnavailableError(absl::StrCat("redis: ", context_->errstr));
    }
    if (raw == nullptr) return replies;
    replies.emplace_back(static_cast<redisReply*>(raw));
  }
}

int64_t ReplyInt64(const redisReply* reply) {
  int64_t value = 0;
  if (reply != nullptr && reply->type == REDIS_REPLY_INTEGER) return reply->integer;
  if (reply != nullptr && reply->type == REDIS_REPLY_STRING) {
    (void)absl::SimpleAtoi(absl::string_view(reply->str, reply->len), &value);
  }
  return value;
}

const redisReply* StreamEntryField(const redisReply* entry, absl::string_view name) {
  const redisReply* fields = entry->element[1];
  for (size_t f = 0; f + 1 < fields->elements; f += 2) {
    if (absl::string_view(fields->element[f]->str, fields->element[f]->len) == name) {
      return fields->element[f + 1];
    }
  }
  return nullptr;
}

absl::StatusOr<RedisReply> RedisServerConnection::ReadReply() {
  void* raw = nullptr;
  if (redisGetReply(context_.get(), &raw) != REDIS_OK || raw == nullptr) {
    return absl::UnavailableError(absl::StrCat("redis: ", context_->errstr));
  }
  return RedisReply(static_cast<redisReply*>(raw));
}

absl::StatusOr<RedisReply> RedisServerConnection::ReadReplyFor(absl::Duration timeout) {
  if (broken()) return absl::UnavailableError("redis: connection is broken");
  void* raw = nullptr;
  // A reply may already sit in hiredis' buffer; only an empty buffer waits on the socket.
  if (redisGetReplyFromReader(context_.get(), &raw) != REDIS_OK) {
    return absl::UnavailableError(absl::StrCat("redis: ", context_->errstr));
  }
  if (raw != nullptr) return RedisReply(static_cast<redisReply*>(raw));
  pollfd fd{.fd = context_->fd, .events = POLLIN, .revents = 0};
  const int ready = poll(&fd, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  if (ready < 0 && errno != EINTR) return absl::UnavailableError("redis: poll failed");
  if (ready <= 0) return absl::DeadlineExceededError("redis: no reply yet");
  if (redisBufferRead(context_.get()) != REDIS_OK ||
      redisGetReplyFromReader(context_.get(), &raw) != REDIS_OK) {
    return absl::UnavailableError(absl::StrCat("redis: ", context_->errstr));
  }
  if (raw == nullptr) return absl::DeadlineExceededError("redis: partial reply");
  return RedisReply(static_cast<redisReply*>(raw));
}

std::string RedisKeys::Tag(absl::string_view session_id) const {
  return absl::StrCat(prefix_, "{s:", session_id, "}");
}
std::string RedisKeys::EventStream(absl::string_view session_id) const {
  return absl::StrCat(Tag(session_id), ":ev");
}
std::string RedisKeys::EventChannel(absl::string_view session_id) const { return Tag(session_id); }
std::string RedisKeys::Lease(absl::string_view session_id) const {
  return absl::StrCat(Tag(session_id), ":lease");
}
std::string RedisKeys::PersistedSeq(absl::string_view session_id) const {
  return absl::StrCat(Tag(session_id), ":persisted");
}
std::string RedisKeys::PersisterLock(absl::string_view session_id) const {
  return absl::StrCat(Tag(session_id), ":persister");
}
std::string RedisKeys::PersistQueue() const { return absl::StrCat(prefix_, "parley:persist"); }
std::string RedisKeys::TenantRate(absl::string_view tenant_id) const {
  return absl::StrCat(prefix_, "{t:", tenant_id, "}:rate");
}
std::string RedisKeys::KeyRate(absl::string_view tenant_id, absl::string_view key_id) const {
  return absl::StrCat(prefix_, "{t:", tenant_id, "}:rate:", key_id);
}
std::string RedisKeys::Idempotency(absl::string_view tenant_id, absl::string_view method,
                                   absl::string_view key_digest) const {
  return absl::StrCat(prefix_, "{t:", tenant_id, "}:idem:", method, ":", key_digest);
}

}  // namespace parley
