// Redis Cluster routing (see redis_cluster.h). The one piece of state is the slot map;
// every call first refreshes it when a redirection or a lost node made it stale, then
// runs rounds: each round sends every command still pending to the node its slot
// belongs to (all nodes in flight at once), keeps the final outcomes and collects the
// commands to try again (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, an unreachable node).
#include "common/redis_cluster.h"

#include <algorithm>
#include <array>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace parley {
namespace {

// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), the checksum Redis Cluster
// hashes keys with.
constexpr std::array<uint16_t, 256> MakeCrc16Table() {
  std::array<uint16_t, 256> table{};
  for (int byte = 0; byte < 256; ++byte) {
    uint16_t crc = static_cast<uint16_t>(byte << 8);
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc & 0x8000) != 0 ? static_cast<uint16_t>((crc << 1) ^ 0x1021)
                                : static_cast<uint16_t>(crc << 1);
    }
    table[byte] = crc;
  }
  return table;
}
constexpr std::array<uint16_t, 256> kCrc16Table = MakeCrc16Table();

uint16_t Crc16(absl::string_view bytes) {
  uint16_t crc = 0;
  for (unsigned char byte : bytes) {
    crc = static_cast<uint16_t>((crc << 8) ^ kCrc16Table[((crc >> 8) ^ byte) & 0xff]);
  }
  return crc;
}

// Rounds per call: enough for a redirection, a refresh and a few pauses of a failover;
// the connection's timeout bounds the time they take.
constexpr int kMaxRounds = 32;
constexpr absl::Duration kFirstPause = absl::Milliseconds(20);
constexpr absl::Duration kMaxPause = absl::Milliseconds(250);

bool RetryableClusterError(const absl::Status& status) {
  // Both are answered before the command runs: retrying cannot run it twice.
  return absl::StrContains(status.message(), "TRYAGAIN") ||
         absl::StrContains(status.message(), "CLUSTERDOWN");
}

absl::StatusOr<RedisNodeAddress> NodeOfSlotEntry(const redisReply& entry,
                                                 const RedisNodeAddress& asked) {
  if (entry.type != REDIS_REPLY_ARRAY || entry.elements < 2 ||
      entry.element[0]->type != REDIS_REPLY_STRING ||
      entry.element[1]->type != REDIS_REPLY_INTEGER) {
    return absl::InternalError("redis cluster: malformed node in CLUSTER SLOTS");
  }
  RedisNodeAddress node{.host = ReplyString(entry.element[0]),
                        .port = static_cast<int>(entry.element[1]->integer)};
  if (node.host.empty()) node.host = asked.host;  // "This node's own address."
  return node;
}

}  // namespace

uint16_t RedisKeySlot(absl::string_view key) {
  if (size_t open = key.find('{'); open != absl::string_view::npos) {
    size_t close = key.find('}', open + 1);
    if (close != absl::string_view::npos && close > open + 1) {
      key = key.substr(open + 1, close - open - 1);
    }
  }
  return Crc16(key) & (kRedisClusterSlots - 1);
}

RedisRoute RouteOfCommand(const std::vector<std::string>& args) {
  if (args.empty()) return {};
  const std::string name = absl::AsciiStrToUpper(args[0]);
  if (name == "EVAL" || name == "EVALSHA" || name == "EVAL_RO" || name == "EVALSHA_RO" ||
      name == "FCALL" || name == "FCALL_RO") {
    int key_count = 0;
    if (args.size() > 3 && absl::SimpleAtoi(args[2], &key_count) && key_count > 0) {
      return {.kind = RedisRoute::Kind::kKey, .key = args[3]};
    }
    return {};
  }
  if (name == "SCRIPT" || name == "FLUSHALL" || name == "FLUSHDB") {
    return {.kind = RedisRoute::Kind::kEveryPrimary};
  }
  if (name == "WAIT" || name == "WAITAOF") return {.kind = RedisRoute::Kind::kLastWrite};
  if (name == "XREAD" || name == "XREADGROUP") {
    for (size_t i = 1; i + 1 < args.size(); ++i) {
      if (absl::EqualsIgnoreCase(args[i], "STREAMS")) {
        return {.kind = RedisRoute::Kind::kKey, .key = args[i + 1]};
      }
    }
    return {};
  }
  // Commands without a key. Classic PUBLISH goes to any node: the cluster bus carries it
  // to every subscriber of every node.
  static constexpr absl::string_view kKeyless[] = {
      "PING",   "ECHO",     "INFO",    "CLUSTER",   "AUTH",        "SELECT",     "HELLO",
      "TIME",   "CLIENT",   "CONFIG",  "COMMAND",   "DBSIZE",      "KEYS",       "SCAN",
      "QUIT",   "RESET",    "MONITOR", "READONLY",  "READWRITE",   "ASKING",     "MULTI",
      "EXEC",   "DISCARD",  "PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE", "PSUBSCRIBE", "PUNSUBSCRIBE",
      "PUBSUB", "FUNCTION", "DEBUG"};
  for (absl::string_view keyless : kKeyless) {
    if (name == keyless) return {};
  }
  if (args.size() < 2) return {};
  return {.kind = RedisRoute::Kind::kKey, .key = args[1]};
}

std::optional<RedisRedirect> ParseRedirect(const absl::Status& status) {
  absl::string_view message = status.message();
  (void)absl::ConsumePrefix(&message, "redis: ");
  std::vector<absl::string_view> words = absl::StrSplit(message, ' ');
  if (words.size() != 3 || (words[0] != "MOVED" && words[0] != "ASK")) return std::nullopt;
  RedisRedirect redirect{.ask = words[0] == "ASK"};
  int slot = 0;
  const size_t colon = words[2].rfind(':');
  if (!absl::SimpleAtoi(words[1], &slot) || slot < 0 || slot >= kRedisClusterSlots ||
      colon == absl::string_view::npos ||
      !absl::SimpleAtoi(words[2].substr(colon + 1), &redirect.node.port)) {
    return std::nullopt;
  }
  redirect.slot = static_cast<uint16_t>(slot);
  redirect.node.host = std::string(words[2].substr(0, colon));  // Empty: the node that answered.
  return redirect;
}

absl::StatusOr<RedisSlotMap> RedisSlotMap::FromClusterSlots(const redisReply& reply,
                                                            const RedisNodeAddress& asked) {
  if (reply.type != REDIS_REPLY_ARRAY) {
    return absl::InternalError("redis cluster: CLUSTER SLOTS did not answer an array");
  }
  RedisSlotMap map;
  auto add_node = [&map](const RedisNodeAddress& node) {
    if (std::find(map.nodes_.begin(), map.nodes_.end(), node) == map.nodes_.end()) {
      map.nodes_.push_back(node);
    }
  };
  for (size_t r = 0; r < reply.elements; ++r) {
    const redisReply& range = *reply.element[r];
    if (range.type != REDIS_REPLY_ARRAY || range.elements < 3 ||
        range.element[0]->type != REDIS_REPLY_INTEGER ||
        range.element[1]->type != REDIS_REPLY_INTEGER) {
      return absl::InternalError("redis cluster: malformed slot range in CLUSTER SLOTS");
    }
    const int64_t first = range.element[0]->integer;
    const int64_t last = range.element[1]->integer;
    if (first < 0 || last >= kRedisClusterSlots || first > last) {
      return absl::InternalError("redis cluster: slot range out of bounds in CLUSTER SLOTS");
    }
    absl::StatusOr<RedisNodeAddress> primary = NodeOfSlotEntry(*range.element[2], asked);
    if (!primary.ok()) return primary.status();
    auto found = std::find(map.primaries_.begin(), map.primaries_.end(), *primary);
    const auto index = static_cast<int16_t>(found - map.primaries_.begin());
    if (found == map.primaries_.end()) map.primaries_.push_back(*primary);
    add_node(*primary);
    for (int64_t slot = first; slot <= last; ++slot) map.slot_primary_[slot] = index;
    for (size_t n = 3; n < range.elements; ++n) {
      absl::StatusOr<RedisNodeAddress> replica = NodeOfSlotEntry(*range.element[n], asked);
      if (!replica.ok()) return replica.status();
      add_node(*replica);
    }
  }
  return map;
}

const RedisNodeAddress* RedisSlotMap::PrimaryOf(uint16_t slot) const {
  const int16_t index = slot_primary_[slot % kRedisClusterSlots];
  return index < 0 ? nullptr : &primaries_[index];
}

namespace {

absl::StatusOr<RedisSlotMap> ReadSlotMap(RedisConnection& connection,
                                         const RedisNodeAddress& asked) {
  absl::StatusOr<RedisReply> slots = connection.Command({"CLUSTER", "SLOTS"});
  if (!slots.ok()) {
    if (absl::StrContains(slots.status().message(), "cluster support disabled")) {
      return absl::FailedPreconditionError(
          absl::StrCat("redis ", asked.ToString(),
                       " is not a cluster node (cluster_enabled:0): use a redis:// url"));
    }
    return slots.status();
  }
  return RedisSlotMap::FromClusterSlots(**slots, asked);
}

}  // namespace

absl::StatusOr<RedisSlotMap> FetchRedisSlotMap(const RedisEndpoint& endpoint,
                                               const std::vector<RedisNodeAddress>& candidates,
                                               absl::Duration timeout) {
  absl::Status last = absl::UnavailableError("redis cluster: no node to ask for the slot map");
  for (const RedisNodeAddress& node : candidates) {
    absl::StatusOr<std::unique_ptr<RedisServerConnection>> connection =
        RedisServerConnection::Connect(endpoint.ForNode(node), timeout);
    if (!connection.ok()) {
      last = connection.status();
      continue;
    }
    absl::StatusOr<RedisSlotMap> map = ReadSlotMap(**connection, node);
    if (map.ok() || map.status().code() == absl::StatusCode::kFailedPrecondition) return map;
    last = map.status();
  }
  return last;
}

struct RedisClusterConnection::Pending {
  size_t index;                         // Into the caller's commands.
  std::optional<RedisNodeAddress> ask;  // After ASK: that node, once, behind ASKING.
  bool redirected = false;              // MOVED or ASK: follow at once, no pause.
};

absl::StatusOr<std::unique_ptr<RedisClusterConnection>> RedisClusterConnection::Connect(
    const RedisEndpoint& endpoint, absl::Duration timeout) {
  absl::StatusOr<RedisSlotMap> map = FetchRedisSlotMap(endpoint, endpoint.cluster_seeds, timeout);
  if (!map.ok()) return map.status();
  return std::unique_ptr<RedisClusterConnection>(
      new RedisClusterConnection(endpoint, timeout, *std::move(map)));
}

absl::Status RedisClusterConnection::RefreshMap() {
  // Known nodes first (a replica may have just been promoted), then the seeds.
  std::vector<RedisNodeAddress> candidates = map_.nodes();
  for (const RedisNodeAddress& seed : endpoint_.cluster_seeds) {
    if (std::find(candidates.begin(), candidates.end(), seed) == candidates.end()) {
      candidates.push_back(seed);
    }
  }
  absl::Status last = absl::UnavailableError("redis cluster: no node answers CLUSTER SLOTS");
  for (const RedisNodeAddress& node : candidates) {
    RedisServerConnection* connection = ConnectionTo(node);
    if (connection == nullptr) continue;
    absl::StatusOr<RedisSlotMap> map = ReadSlotMap(*connection, node);
    if (!map.ok()) {
      if (connection->broken()) Drop(node);
      last = map.status();
      continue;
    }
    map_ = *std::move(map);
    map_stale_ = false;
    return absl::OkStatus();
  }
  return last;
}

RedisServerConnection* RedisClusterConnection::ConnectionTo(const RedisNodeAddress& node) {
  if (auto it = connections_.find(node); it != connections_.end()) {
    // An idle connection the server closed (a primary that died since the last call)
    // is replaced before anything is sent on it, so the command can still be retried.
    // The node keyless commands use is exempt: a subscriber reads messages there.
    const bool stale =
        it->second->broken() || (!(any_node_ == node) && it->second->ReadableWhileIdle());
    if (!stale) return it->second.get();
    Drop(node);  // Never silently replaced: a subscriber on it must learn it is gone.
  }
  absl::StatusOr<std::unique_ptr<RedisServerConnection>> connection =
      RedisServerConnection::Connect(endpoint_.ForNode(node), timeout_);
  if (!connection.ok()) return nullptr;
  RedisServerConnection* raw = connection->get();
  connections_[node] = *std::move(connection);
  return raw;
}

void RedisClusterConnection::Drop(const RedisNodeAddress& node) {
  connections_.erase(node);
  if (any_node_ == node) {
    any_node_.reset();
    any_node_broken_ = true;
  }
}

RedisServerConnection* RedisClusterConnection::AnyNode() {
  if (any_node_.has_value()) {
    if (RedisServerConnection* connection = ConnectionTo(*any_node_)) return connection;
  }
  std::vector<RedisNodeAddress> candidates = map_.primaries();
  candidates.insert(candidates.end(), endpoint_.cluster_seeds.begin(),
                    endpoint_.cluster_seeds.end());
  for (const RedisNodeAddress& node : candidates) {
    if (RedisServerConnection* connection = ConnectionTo(node)) {
      any_node_ = node;
      return connection;
    }
  }
  return nullptr;
}

absl::StatusOr<std::vector<absl::StatusOr<RedisReply>>> RedisClusterConnection::PipelineEach(
    const std::vector<std::vector<std::string>>& commands) {
  std::vector<std::optional<absl::StatusOr<RedisReply>>> results(commands.size());
  std::vector<Pending> pending;
  for (size_t i = 0; i < commands.size(); ++i) {
    if (RouteOfCommand(commands[i]).kind == RedisRoute::Kind::kEveryPrimary) {
      results[i] = RunOnEveryPrimary(commands[i]);
    } else {
      pending.push_back({.index = i});
    }
  }
  const absl::Time deadline = absl::Now() + timeout_;
  absl::Duration pause = kFirstPause;
  for (int round = 0; !pending.empty(); ++round) {
    if (map_stale_) (void)RefreshMap();  // On failure the old map still routes.
    pending = RunRound(commands, std::move(pending), results);
    if (pending.empty()) break;
    if (round + 1 >= kMaxRounds || absl::Now() >= deadline) {
      for (const Pending& lost : pending) {
        results[lost.index] = absl::UnavailableError(
            absl::StrCat("redis cluster: no node served the command's slot within ",
                         absl::FormatDuration(timeout_), " (failover or resharding in progress?)"));
      }
      break;
    }
    // A redirection is followed at once; a refusal or an unreachable node waits a bit.
    if (!std::all_of(pending.begin(), pending.end(),
                     [](const Pending& item) { return item.redirected; })) {
      absl::SleepFor(std::min(pause, deadline - absl::Now()));
      pause = std::min(pause * 2, kMaxPause);
    }
  }
  std::vector<absl::StatusOr<RedisReply>> out;
  out.reserve(results.size());
  for (std::optional<absl::StatusOr<RedisReply>>& result : results)
    out.push_back(*std::move(result));
  return out;
}

std::vector<RedisClusterConnection::Pending> RedisClusterConnection::RunRound(
    const std::vector<std::vector<std::string>>& commands, std::vector<Pending> pending,
    std::vector<std::optional<absl::StatusOr<RedisReply>>>& results) {
  struct Batch {
    RedisServerConnection* connection = nullptr;
    std::vector<Pending> items;
    std::vector<std::vector<std::string>> wire;
    std::vector<size_t> reply_index;  // Of each item's own reply within `wire`.
  };
  std::vector<Pending> again;
  absl::flat_hash_map<RedisNodeAddress, Batch> batches;
  for (Pending& item : pending) {
    const std::vector<std::string>& command = commands[item.index];
    std::optional<RedisNodeAddress> target = item.ask;
    if (!target.has_value()) {
      const RedisRoute route = RouteOfCommand(command);
      if (route.kind == RedisRoute::Kind::kKey) {
        if (const RedisNodeAddress* primary = map_.PrimaryOf(RedisKeySlot(route.key))) {
          target = *primary;
          last_keyed_node_ = *primary;  // Commands are placed in order: a WAIT behind
                                        // this one in the same pipeline follows it.
        }
      } else if (route.kind == RedisRoute::Kind::kLastWrite && last_keyed_node_.has_value()) {
        target = last_keyed_node_;
      } else if (AnyNode() != nullptr) {
        target = any_node_;
      }
    }
    if (!target.has_value()) {  // No node serves the slot (yet): a failover may be under way.
      map_stale_ = true;
      again.push_back({.index = item.index});
      continue;
    }
    Batch& batch = batches[*target];
    if (item.ask.has_value()) batch.wire.push_back({"ASKING"});
    batch.reply_index.push_back(batch.wire.size());
    batch.wire.push_back(command);
    batch.items.push_back({.index = item.index});
  }
  // Every node's share goes out before any reply is awaited.
  for (auto& [node, batch] : batches) {
    batch.connection = ConnectionTo(node);
    if (batch.connection == nullptr) {  // Nothing was sent: safe to try again.
      map_stale_ = true;
      again.insert(again.end(), batch.items.begin(), batch.items.end());
      batch.items.clear();
      continue;
    }
    if (absl::Status sent = batch.connection->Send(batch.wire); !sent.ok()) {
      for (const Pending& item : batch.items) results[item.index] = sent;
      batch.items.clear();
      Drop(node);
      map_stale_ = true;
    }
  }
  for (auto& [node, batch] : batches) {
    if (batch.items.empty()) continue;
    absl::StatusOr<std::vector<absl::StatusOr<RedisReply>>> replies =
        batch.connection->Receive(batch.wire.size());
    if (!replies.ok()) {  // Sent, then lost: it may have run, so it is not retried.
      for (const Pending& item : batch.items) results[item.index] = replies.status();
      Drop(node);
      map_stale_ = true;
      continue;
    }
    for (size_t i = 0; i < batch.items.size(); ++i) {
      absl::StatusOr<RedisReply>& reply = (*replies)[batch.reply_index[i]];
      const size_t index = batch.items[i].index;
      if (reply.ok()) {
        results[index] = std::move(reply);
        continue;
      }
      if (std::optional<RedisRedirect> redirect = ParseRedirect(reply.status())) {
        if (redirect->node.host.empty()) redirect->node.host = node.host;
        if (redirect->ask) {
          again.push_back({.index = index, .ask = redirect->node, .redirected = true});
        } else {
          map_stale_ = true;
          again.push_back({.index = index, .redirected = true});
        }
      } else if (RetryableClusterError(reply.status())) {
        map_stale_ = true;
        again.push_back({.index = index});
      } else {
        results[index] = std::move(reply);
      }
    }
  }
  return again;
}

absl::StatusOr<RedisReply> RedisClusterConnection::RunOnEveryPrimary(
    const std::vector<std::string>& command) {
  if (map_stale_) {
    if (absl::Status refreshed = RefreshMap(); !refreshed.ok()) return refreshed;
  }
  std::optional<absl::StatusOr<RedisReply>> first;
  for (const RedisNodeAddress& node : map_.primaries()) {
    RedisServerConnection* connection = ConnectionTo(node);
    if (connection == nullptr) {
      map_stale_ = true;
      return absl::UnavailableError(
          absl::StrCat("redis cluster: ", node.ToString(), " unreachable for ", command.front()));
    }
    absl::StatusOr<RedisReply> reply = connection->Command(command);
    if (connection->broken()) {
      Drop(node);
      map_stale_ = true;
    }
    if (!reply.ok()) return reply.status();
    if (!first.has_value()) first = std::move(reply);
  }
  if (!first.has_value()) return absl::UnavailableError("redis cluster: no primary known");
  return *std::move(first);
}

absl::StatusOr<RedisReply> RedisClusterConnection::ReadReply() { return ReadReplyFor(timeout_); }

absl::StatusOr<RedisReply> RedisClusterConnection::ReadReplyFor(absl::Duration timeout) {
  if (!any_node_.has_value() || any_node_broken_) {
    return absl::UnavailableError("redis cluster: the subscribed node's connection is gone");
  }
  RedisServerConnection* connection = connections_.at(*any_node_).get();
  absl::StatusOr<RedisReply> reply = connection->ReadReplyFor(timeout);
  if (connection->broken()) Drop(*any_node_);
  return reply;
}

}  // namespace parley
