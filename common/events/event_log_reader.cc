// Parsing of the stream entries and lease field EventPublisher writes (see the header).
#include "common/events/event_log_reader.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace parley {

EntryId EntryId::Parse(absl::string_view id) {
  EntryId parsed;
  const size_t dash = id.find('-');
  (void)absl::SimpleAtoi(id.substr(0, dash), &parsed.seq);
  if (dash != absl::string_view::npos) (void)absl::SimpleAtoi(id.substr(dash + 1), &parsed.sub);
  return parsed;
}

std::string EntryId::ToString() const { return absl::StrCat(seq, "-", sub); }

absl::StatusOr<v1::Event> EventLogEntry::Parse(absl::string_view session_id) const {
  v1::Event parsed;
  if (!event.has_value() || !parsed.ParseFromString(*event)) {
    return absl::DataLossError(absl::StrCat("stream entry ", id.ToString(), " of ", session_id,
                                            " holds no event that parses"));
  }
  return parsed;
}

std::vector<std::string> EventLogReader::RangeCommand(const std::string& session_id, EntryId from,
                                                      int max) const {
  return {"XRANGE",         keys_.EventStream(session_id), from.ToString(), "+", "COUNT",
          absl::StrCat(max)};
}

std::vector<std::string> EventLogReader::LastSeqCommand(const std::string& session_id) const {
  return {"HGET", keys_.Lease(session_id), "last_seq"};
}

std::vector<EventLogEntry> EventLogReader::EntriesOf(const redisReply* reply) {
  std::vector<EventLogEntry> entries;
  entries.reserve(reply->elements);
  for (size_t i = 0; i < reply->elements; ++i) {
    const redisReply* entry = reply->element[i];
    EventLogEntry& out = entries.emplace_back();
    out.id = EntryId::Parse(absl::string_view(entry->element[0]->str, entry->element[0]->len));
    if (const redisReply* event = StreamEntryField(entry, "e"); event != nullptr) {
      out.event.emplace(event->str, event->len);
    }
    out.published_ms = ReplyInt64(StreamEntryField(entry, "t"));
  }
  return entries;
}

uint64_t EventLogReader::LastSeqOf(const redisReply* reply) {
  return static_cast<uint64_t>(std::max<int64_t>(0, ReplyInt64(reply)));
}

absl::StatusOr<EventLogRange> EventLogReader::Read(RedisConnection& redis,
                                                   const std::string& session_id, EntryId from,
                                                   int max) const {
  absl::StatusOr<std::vector<RedisReply>> replies = redis.Pipeline(
      {RangeCommand(session_id, from, max), BackwardCommand(session_id, std::nullopt, 1)});
  if (!replies.ok()) return replies.status();
  EventLogRange range{.entries = EntriesOf((*replies)[0].get())};
  std::vector<EventLogEntry> newest = EntriesOf((*replies)[1].get());
  if (!newest.empty()) range.newest = newest.front().id;
  return range;
}

absl::StatusOr<std::vector<EventLogEntry>> EventLogReader::ReadForward(
    RedisConnection& redis, const std::string& session_id, EntryId from, int max) const {
  absl::StatusOr<RedisReply> reply = redis.Command(RangeCommand(session_id, from, max));
  if (!reply.ok()) return reply.status();
  return EntriesOf(reply->get());
}

absl::StatusOr<std::vector<EventLogEntry>> EventLogReader::ReadBackward(
    RedisConnection& redis, const std::string& session_id, std::optional<EntryId> before,
    int max) const {
  absl::StatusOr<RedisReply> reply = redis.Command(BackwardCommand(session_id, before, max));
  if (!reply.ok()) return reply.status();
  return EntriesOf(reply->get());
}

std::vector<std::string> EventLogReader::BackwardCommand(const std::string& session_id,
                                                         std::optional<EntryId> before,
                                                         int max) const {
  const std::string end = before.has_value() ? absl::StrCat("(", before->ToString()) : "+";
  return {"XREVRANGE", keys_.EventStream(session_id), end, "-", "COUNT", absl::StrCat(max)};
}

absl::StatusOr<uint64_t> EventLogReader::LastSeq(RedisConnection& redis,
                                                 const std::string& session_id) const {
  absl::StatusOr<RedisReply> reply = redis.Command(LastSeqCommand(session_id));
  if (!reply.ok()) return reply.status();
  return LastSeqOf(reply->get());
}

}  // namespace parley
