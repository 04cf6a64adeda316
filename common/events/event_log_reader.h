// EventLogReader: the one reader of a session's event log in Redis, as EventPublisher
// (publisher.h, beside this file) writes it.
//
// The log is the stream `{s:<id>}:ev`: entry id "<seq>-0" for a durable event and
// "<seq>-1", "<seq>-2", … for the transient events published after it (they carry its
// seq), fields e=<serialized parley.v1.Event> and t=<publish time, ms>. The lease hash
// `{s:<id>}:lease` holds `last_seq`, the newest durable seq published. Nothing else
// parses either: the gateway's hot window, store-svc's persister, session-svc's executor
// and router, and the publisher's own trimming all read through here.
//
//   EventLogReader log(keys);
//   absl::StatusOr<EventLogRange> range = log.Read(redis, session_id, EntryId{next_seq}, 500);
//   for (const EventLogEntry& entry : range->entries) {
//     absl::StatusOr<v1::Event> event = entry.Parse(session_id);
//   }
//
// Holds only key names: each call takes the caller's RedisConnection, so a reader is as
// thread-safe as the connections it is given. Errors are the connection's (UNAVAILABLE
// when Redis is unreachable).
#pragma once

#include <hiredis/hiredis.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/redis.h"
#include "parley/v1/events.pb.h"

namespace parley {

// A stream entry id, "<seq>-<sub>": sub 0 is the durable event `seq`, sub 1, 2, … the
// transient events published after it. Ordered as Redis orders the entries.
struct EntryId {
  uint64_t seq = 0;
  uint64_t sub = 0;

  // "<seq>-<sub>" or "<seq>"; what does not parse reads as 0.
  static EntryId Parse(absl::string_view id);
  std::string ToString() const;
  bool durable() const { return sub == 0; }
  auto operator<=>(const EntryId&) const = default;
};

// One entry of the log, copied out of Redis' reply.
struct EventLogEntry {
  EntryId id;
  std::optional<std::string> event;  // Field e: a serialized parley.v1.Event.
  int64_t published_ms = 0;          // Field t; 0 when absent.

  // The event. DATA_LOSS naming the entry (and `session_id`) when the entry has no
  // event or it does not parse.
  absl::StatusOr<v1::Event> Parse(absl::string_view session_id) const;
};

// A forward read and, from the same round trip, the id of the newest entry of the log
// (seq 0 when the log is empty).
struct EventLogRange {
  std::vector<EventLogEntry> entries;
  EntryId newest;
};

class EventLogReader {
 public:
  explicit EventLogReader(RedisKeys keys) : keys_(std::move(keys)) {}

  // Up to `max` entries with id >= `from`, oldest first, and the newest entry's id.
  absl::StatusOr<EventLogRange> Read(RedisConnection& redis, const std::string& session_id,
                                     EntryId from, int max) const;
  // The same entries without the newest id (one command instead of two).
  absl::StatusOr<std::vector<EventLogEntry>> ReadForward(RedisConnection& redis,
                                                         const std::string& session_id,
                                                         EntryId from, int max) const;
  // Up to `max` entries, newest first, with id < `before` (nullopt: from the newest).
  absl::StatusOr<std::vector<EventLogEntry>> ReadBackward(RedisConnection& redis,
                                                          const std::string& session_id,
                                                          std::optional<EntryId> before,
                                                          int max) const;
  // The lease hash's `last_seq`: the newest durable seq published (0 when Redis has
  // none, e.g. after a flush).
  absl::StatusOr<uint64_t> LastSeq(RedisConnection& redis, const std::string& session_id) const;

  // The same reads as commands and replies, for a caller that pipelines them with its own.
  std::vector<std::string> RangeCommand(const std::string& session_id, EntryId from, int max) const;
  std::vector<std::string> BackwardCommand(const std::string& session_id,
                                           std::optional<EntryId> before, int max) const;
  std::vector<std::string> LastSeqCommand(const std::string& session_id) const;
  // The entries of an XRANGE / XREVRANGE reply, in its order.
  static std::vector<EventLogEntry> EntriesOf(const redisReply* reply);
  static uint64_t LastSeqOf(const redisReply* reply);

 private:
  const RedisKeys keys_;
};

}  // namespace parley
