// The wake and cancel channels: a reader thread on one subscribed connection, and a
// pool of plain connections for publishing.
#include "session-svc/scheduler/signals.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace parley::session {
namespace {

constexpr size_t kMaxIdleConnections = 8;

}  // namespace

Signals::Signals(SignalsOptions options, const telemetry::Logger& logger)
    : options_(std::move(options)),
      logger_(logger),
      wake_channel_(absl::StrCat(options_.key_prefix, "parley:sched:wake")),
      cancel_channel_(absl::StrCat(options_.key_prefix, "parley:sched:cancel")) {}

Signals::~Signals() { Stop(); }

void Signals::Start(WakeHandler on_wake, CancelHandler on_cancel) {
  on_wake_ = std::move(on_wake);
  on_cancel_ = std::move(on_cancel);
  reader_ = std::thread([this] { ReadLoop(); });
}

void Signals::Stop() {
  stop_ = true;
  if (reader_.joinable()) reader_.join();
}

void Signals::ReadLoop() {
  absl::Duration backoff = absl::Milliseconds(100);
  while (!stop_) {
    absl::StatusOr<std::unique_ptr<RedisConnection>> connection =
        RedisConnection::Connect(options_.redis, absl::Seconds(2));
    absl::Status status = connection.status();
    if (status.ok()) {
      status = (*connection)->Command({"SUBSCRIBE", wake_channel_, cancel_channel_}).status();
      // The second subscription's confirmation follows the first.
      if (status.ok()) status = (*connection)->ReadReply().status();
    }
    if (!status.ok()) {
      logger_.Warn("scheduler signals: redis unavailable, retrying", {{"error", status.ToString()}});
      absl::SleepFor(backoff);
      backoff = std::min(backoff * 2, absl::Seconds(5));
      continue;
    }
    backoff = absl::Milliseconds(100);
    on_wake_();  // Wakes published while we were not subscribed are lost: look now.
    while (!stop_) {
      absl::StatusOr<RedisReply> reply = (*connection)->ReadReplyFor(absl::Milliseconds(200));
      if (reply.status().code() == absl::StatusCode::kDeadlineExceeded) continue;
      if (!reply.ok()) break;
      const redisReply* message = reply->get();
      if (message->type != REDIS_REPLY_ARRAY || message->elements != 3) continue;
      const std::string channel = ReplyString(message->element[1]);
      const std::string payload = ReplyString(message->element[2]);
      if (channel == wake_channel_) {
        on_wake_();
      } else if (channel == cancel_channel_) {
        const size_t space = payload.find(' ');
        on_cancel_(payload.substr(0, space),
                   space == std::string::npos ? "" : payload.substr(space + 1));
      }
    }
  }
}

absl::StatusOr<RedisReply> Signals::Command(const std::vector<std::string>& args) {
  std::unique_ptr<RedisConnection> connection;
  {
    absl::MutexLock lock(&pool_mu_);
    if (!idle_.empty()) {
      connection = std::move(idle_.back());
      idle_.pop_back();
    }
  }
  if (connection == nullptr) {
    absl::StatusOr<std::unique_ptr<RedisConnection>> fresh =
        RedisConnection::Connect(options_.redis, absl::Seconds(2));
    if (!fresh.ok()) return fresh.status();
    connection = *std::move(fresh);
  }
  absl::StatusOr<RedisReply> reply = connection->Command(args);
  if (!connection->broken()) {
    absl::MutexLock lock(&pool_mu_);
    if (idle_.size() < kMaxIdleConnections) idle_.push_back(std::move(connection));
  }
  return reply;
}

absl::Status Signals::PublishWake(const std::string& session_id) {
  return Command({"PUBLISH", wake_channel_, session_id}).status();
}

absl::Status Signals::PublishCancel(const std::string& turn_id, const std::string& reason) {
  return Command({"PUBLISH", cancel_channel_, absl::StrCat(turn_id, " ", reason)}).status();
}

}  // namespace parley::session
