#include "common/events/publisher.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/status.h"

namespace parley {
namespace {

// KEYS: lease hash, stream, channel. ARGV: lease epoch, seq, transient (0/1),
// serialized event, publish time ms.
constexpr char kPublishScript[] = R"lua(
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch ~= ARGV[1] then
  return redis.error_reply('PARLEY_LEASE_LOST ' .. tostring(epoch or 0))
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_seq') or '0')
local seq = tonumber(ARGV[2])
local sub = 0
if ARGV[3] == '0' then
  if seq ~= last + 1 then return redis.error_reply('PARLEY_SEQ_MISMATCH ' .. last) end
  redis.call('HSET', KEYS[1], 'last_seq', seq, 'sub', 0)
else
  if seq ~= last then return redis.error_reply('PARLEY_SEQ_MISMATCH ' .. last) end
  sub = redis.call('HINCRBY', KEYS[1], 'sub', 1)
end
redis.call('XADD', KEYS[2], seq .. '-' .. sub, 'e', ARGV[4], 't', ARGV[5])
redis.call('PUBLISH', KEYS[3], ARGV[4])
return seq
)lua";

// The same for several events in order. KEYS: lease hash, stream, channel. ARGV: lease
// epoch, publish time ms, then per event: seq, transient (0/1), serialized event. Every
// seq is checked before anything is written, so a refused batch writes nothing.
constexpr char kPublishBatchScript[] = R"lua(
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch ~= ARGV[1] then
  return redis.error_reply('PARLEY_LEASE_LOST ' .. tostring(epoch or 0))
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_seq') or '0')
local expect = last
for i = 3, #ARGV, 3 do
  local seq = tonumber(ARGV[i])
  if ARGV[i + 1] == '0' then
    if seq ~= expect + 1 then return redis.error_reply('PARLEY_SEQ_MISMATCH ' .. last) end
    expect = seq
  elseif seq ~= expect then
    return redis.error_reply('PARLEY_SEQ_MISMATCH ' .. last)
  end
end
local sub = tonumber(redis.call('HGET', KEYS[1], 'sub') or '0')
for i = 3, #ARGV, 3 do
  local seq = ARGV[i]
  if ARGV[i + 1] == '0' then sub = 0 else sub = sub + 1 end
  redis.call('XADD', KEYS[2], seq .. '-' .. sub, 'e', ARGV[i + 2], 't', ARGV[2])
  redis.call('PUBLISH', KEYS[3], ARGV[i + 2])
end
redis.call('HSET', KEYS[1], 'last_seq', expect, 'sub', sub)
return expect
)lua";

// KEYS: lease hash. ARGV: epoch, owner, floor seq, "1" when the hash must exist
// (STATE_LOST, nothing written, when it does not). Returns last_seq.
constexpr char kAcquireScript[] = R"lua(
if ARGV[4] == '1' and redis.call('HEXISTS', KEYS[1], 'epoch') == 0 then
  return redis.error_reply('PARLEY_STATE_LOST 0')
end
local current = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
local epoch = tonumber(ARGV[1])
if current > epoch then return redis.error_reply('PARLEY_LEASE_LOST ' .. current) end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'owner', ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[1], 'last_seq') or '0')
local floor = tonumber(ARGV[3])
if floor > last then
  redis.call('HSET', KEYS[1], 'last_seq', floor, 'sub', 0)
  last = floor
end
return last
)lua";

// "PARLEY_<REASON> <number>" from a script error -> status with ErrorInfo.
absl::Status ScriptError(const absl::Status& status) {
  absl::string_view message = status.message();
  size_t at = message.find("PARLEY_");
  if (at == absl::string_view::npos) return status;
  std::vector<absl::string_view> words = absl::StrSplit(message.substr(at + 7), ' ');
  std::string reason(words[0]);
  std::string value = words.size() > 1 ? std::string(words[1]) : "";
  if (reason == "STATE_LOST") {
    absl::Status out = absl::FailedPreconditionError(
        "the session's lease is gone from redis: its stream state was lost");
    SetErrorInfo(out, reason, {});
    return out;
  }
  absl::Status out = absl::FailedPreconditionError(
      reason == "LEASE_LOST" ? "lease lost: a newer writer holds this session"
                             : absl::StrCat("seq mismatch: the stream ends at ", value));
  SetErrorInfo(out, reason, {{reason == "LEASE_LOST" ? "lease_epoch" : "last_seq", value}});
  return out;
}

// The publish scripts as this connection's server takes them: a Redis Cluster
// publishes a session's channel with SPUBLISH (sharded pub/sub: only the nodes of the
// channel's slot carry it), a single server with PUBLISH.
std::string ForServer(absl::string_view script, const RedisConnection& redis) {
  if (!redis.cluster()) return std::string(script);
  return absl::StrReplaceAll(script, {{"redis.call('PUBLISH',", "redis.call('SPUBLISH',"}});
}

}  // namespace

EventPublisher::EventPublisher(RedisConnection& redis, PublisherOptions options, Clock& clock)
    : redis_(redis),
      options_(std::move(options)),
      keys_(options_.key_prefix),
      log_(keys_),
      clock_(clock),
      publish_script_(ForServer(kPublishScript, redis)),
      publish_batch_script_(ForServer(kPublishBatchScript, redis)),
      wait_replicas_(options_.wait_replicas.value_or(redis.cluster() ? 1 : 0)) {}

absl::StatusOr<RedisReply> EventPublisher::RunScript(
    const std::string& sha, const std::string& body, std::vector<std::string> keys_and_args,
    int key_count, std::vector<std::string> extra_command, RedisReply* extra_reply) {
  // EVAL caches the script by its SHA on the server; EVALSHA afterwards avoids
  // resending the body. A server that lost its script cache (restart) answers
  // NOSCRIPT and gets the body again.
  std::vector<std::string> command = {sha.empty() ? "EVAL" : "EVALSHA", sha.empty() ? body : sha,
                                      absl::StrCat(key_count)};
  command.insert(command.end(), keys_and_args.begin(), keys_and_args.end());
  // WAIT goes right behind the script: on a cluster a WAIT follows the previous keyed
  // command to its node, and it must count the replicas of the script's node, not of
  // the persist queue's.
  std::vector<std::vector<std::string>> commands = WaitCommands();
  const bool waits = !commands.empty();
  commands.insert(commands.begin(), command);
  if (!extra_command.empty()) commands.push_back(extra_command);
  absl::StatusOr<std::vector<RedisReply>> replies = redis_.Pipeline(commands);
  if (!replies.ok() && absl::StrContains(replies.status().message(), "NOSCRIPT")) {
    command[0] = "EVAL";
    command[1] = body;
    commands[0] = command;
    replies = redis_.Pipeline(commands);
  }
  if (!replies.ok()) return ScriptError(replies.status());
  if (waits && ReplyInt64((*replies)[1].get()) < wait_replicas_) ++replica_wait_shortfalls_;
  if (extra_reply != nullptr && !extra_command.empty()) *extra_reply = std::move(replies->back());
  return std::move(replies->front());
}

std::vector<std::vector<std::string>> EventPublisher::WaitCommands() const {
  if (wait_replicas_ == 0) return {};
  return {{"WAIT", absl::StrCat(wait_replicas_),
           absl::StrCat(std::max<int64_t>(1, absl::ToInt64Milliseconds(options_.wait_timeout)))}};
}

absl::StatusOr<uint64_t> EventPublisher::AcquireLease(const std::string& session_id,
                                                      const std::string& owner, uint64_t epoch,
                                                      uint64_t floor_seq) {
  absl::StatusOr<Lease> lease =
      AcquireLease(session_id, owner, epoch, LeaseRequest{.floor_seq = floor_seq});
  if (!lease.ok()) return lease.status();
  return lease->last_seq;
}

absl::StatusOr<EventPublisher::Lease> EventPublisher::AcquireLease(const std::string& session_id,
                                                                   const std::string& owner,
                                                                   uint64_t epoch,
                                                                   LeaseRequest request) {
  Lease lease;
  absl::StatusOr<RedisReply> reply =
      RunScript(acquire_sha_, kAcquireScript,
                {keys_.Lease(session_id), absl::StrCat(epoch), owner,
                 absl::StrCat(request.floor_seq), request.expect_existing ? "1" : "0"},
                1, std::move(request.read), &lease.read);
  if (!reply.ok()) return reply.status();
  if (acquire_sha_.empty()) {
    auto sha = redis_.Command({"SCRIPT", "LOAD", kAcquireScript});
    if (sha.ok()) acquire_sha_ = std::string((*sha)->str, (*sha)->len);
  }
  lease.last_seq = static_cast<uint64_t>((*reply)->integer);
  return lease;
}

absl::Status EventPublisher::Publish(const v1::Event& event, uint64_t lease_epoch) {
  const std::string& session = event.session_id();
  const std::string now_ms = absl::StrCat(absl::ToUnixMillis(clock_.Now()));
  absl::StatusOr<RedisReply> reply =
      RunScript(publish_sha_, publish_script_,
                {keys_.Lease(session), keys_.EventStream(session), keys_.EventChannel(session),
                 absl::StrCat(lease_epoch), absl::StrCat(event.seq()),
                 event.transient() ? "1" : "0", event.SerializeAsString(), now_ms},
                3, {"ZADD", keys_.PersistQueue(), "NX", now_ms, session});
  if (!reply.ok()) return reply.status();
  if (publish_sha_.empty()) {
    auto sha = redis_.Command({"SCRIPT", "LOAD", publish_script_});
    if (sha.ok()) publish_sha_ = std::string((*sha)->str, (*sha)->len);
  }
  if (++since_trim_ >= options_.trim_every) {
    since_trim_ = 0;
    return Trim(session);
  }
  return absl::OkStatus();
}

absl::Status EventPublisher::PublishBatch(const std::vector<v1::Event>& events,
                                          uint64_t lease_epoch) {
  if (events.empty()) return absl::OkStatus();
  const std::string& session = events.front().session_id();
  const std::string now_ms = absl::StrCat(absl::ToUnixMillis(clock_.Now()));
  std::vector<std::string> keys_and_args = {keys_.Lease(session), keys_.EventStream(session),
                                            keys_.EventChannel(session), absl::StrCat(lease_epoch),
                                            now_ms};
  keys_and_args.reserve(5 + 3 * events.size());
  for (const v1::Event& event : events) {
    keys_and_args.push_back(absl::StrCat(event.seq()));
    keys_and_args.push_back(event.transient() ? "1" : "0");
    keys_and_args.push_back(event.SerializeAsString());
  }
  absl::StatusOr<RedisReply> reply =
      RunScript(publish_batch_sha_, publish_batch_script_, std::move(keys_and_args), 3,
                {"ZADD", keys_.PersistQueue(), "NX", now_ms, session});
  if (!reply.ok()) return reply.status();
  if (publish_batch_sha_.empty()) {
    auto sha = redis_.Command({"SCRIPT", "LOAD", publish_batch_script_});
    if (sha.ok()) publish_batch_sha_ = std::string((*sha)->str, (*sha)->len);
  }
  since_trim_ += static_cast<int64_t>(events.size());
  if (since_trim_ >= options_.trim_every) {
    since_trim_ = 0;
    return Trim(session);
  }
  return absl::OkStatus();
}

absl::StatusOr<PublishCheck> EventPublisher::CheckPublished(const std::vector<v1::Event>& events,
                                                            uint64_t lease_epoch) {
  if (events.empty()) return absl::InvalidArgumentError("CheckPublished: no events");
  const std::string& session = events.front().session_id();
  // The persist-queue mark goes again too: a publish cut off may have missed it (on a
  // cluster it goes to another node), and NX makes it harmless when it did not.
  const std::string now_ms = absl::StrCat(absl::ToUnixMillis(clock_.Now()));
  absl::StatusOr<std::vector<RedisReply>> state =
      redis_.Pipeline({{"HMGET", keys_.Lease(session), "epoch", "last_seq"},
                       log_.BackwardCommand(session, std::nullopt, static_cast<int>(events.size())),
                       {"ZADD", keys_.PersistQueue(), "NX", now_ms, session}});
  if (!state.ok()) return state.status();
  const redisReply* lease = (*state)[0].get();
  if (lease->type != REDIS_REPLY_ARRAY || lease->elements != 2) {
    return absl::InternalError("HMGET of the lease hash: unexpected reply");
  }
  PublishCheck check{.last_seq = static_cast<uint64_t>(ReplyInt64(lease->element[1])),
                     .lease_epoch = static_cast<uint64_t>(ReplyInt64(lease->element[0]))};
  using Outcome = PublishCheck::Outcome;
  if (check.lease_epoch != lease_epoch) {
    check.outcome = check.lease_epoch > lease_epoch ? Outcome::kLeaseLost : Outcome::kLeaseBehind;
    return check;
  }

  // The seq the batch continues from, and the seq it ends at (as the scripts number it).
  const uint64_t base =
      events.front().transient() ? events.front().seq() : events.front().seq() - 1;
  uint64_t end = base;
  for (const v1::Event& event : events) {
    if (!event.transient()) end = event.seq();
  }
  // A script runs whole or not at all, on the primary and on its replicas alike, so the
  // batch either is the stream's tail, event for event, or is absent.
  const std::vector<EventLogEntry> newest_first = EventLogReader::EntriesOf((*state)[1].get());
  bool tail_is_batch = newest_first.size() == events.size();
  for (size_t i = 0; tail_is_batch && i < events.size(); ++i) {
    tail_is_batch = newest_first[i].event == events[events.size() - 1 - i].SerializeAsString();
  }
  if (check.last_seq == end && tail_is_batch) {
    check.outcome = Outcome::kPublished;
  } else if (check.last_seq == base) {
    check.outcome = Outcome::kNotPublished;
  } else if (check.last_seq < base) {
    check.outcome = Outcome::kStreamBehind;
  } else {
    check.outcome = Outcome::kConflict;
  }
  return check;
}

absl::Status EventPublisher::Trim(const std::string& session_id) {
  absl::StatusOr<std::vector<RedisReply>> state =
      redis_.Pipeline({{"GET", keys_.PersistedSeq(session_id)},
                       log_.LastSeqCommand(session_id),
                       log_.RangeCommand(session_id, EntryId{}, 128)});
  if (!state.ok()) return state.status();
  const int64_t persisted = ReplyInt64((*state)[0].get());
  const auto last = static_cast<int64_t>(EventLogReader::LastSeqOf((*state)[1].get()));
  int64_t floor = last - options_.hot_window_events + 1;  // Keep at most N entries.
  // Entries older than the age limit may go too; the oldest come first.
  const int64_t too_old_ms = absl::ToUnixMillis(clock_.Now() - options_.hot_window_age);
  for (const EventLogEntry& entry : EventLogReader::EntriesOf((*state)[2].get())) {
    if (entry.published_ms >= too_old_ms) break;
    floor = std::max(floor, static_cast<int64_t>(entry.id.seq) + 1);
  }
  const int64_t min_kept = std::min(floor, persisted + 1);  // Never drop unpersisted events.
  if (min_kept <= 1) return absl::OkStatus();
  return redis_
      .Command({"XTRIM", keys_.EventStream(session_id), "MINID", absl::StrCat(min_kept, "-0")})
      .status();
}

}  // namespace parley
