// Redis Cluster support: key slots, the slot map, and a RedisConnection that routes
// every command to the node serving its key.
//
//   absl::StatusOr<RedisEndpoint> endpoint =
//       ParseRedisUrl("redis+cluster://10.0.0.1:6379,10.0.0.2:6379");
//   auto redis = RedisConnection::Connect(*endpoint, absl::Seconds(2));  // a cluster one
//   (*redis)->Command({"XRANGE", keys.EventStream(id), "-", "+"});      // to the slot's node
//
// hiredis 0.14 has no cluster client and Debian packages no maintained C/C++ one, so
// this is the small one Parley needs:
//   - RedisKeySlot: CRC16 (XMODEM) of the key, or of its `{hash tag}`, modulo 16384;
//   - RedisCommandKey: which argument a command is routed by (EVAL/EVALSHA: the first
//     of KEYS; keyless commands go to any node; SCRIPT and FLUSHALL/FLUSHDB to every
//     primary);
//   - RedisSlotMap: slot -> primary, from CLUSTER SLOTS;
//   - RedisClusterConnection: one RedisServerConnection per node, opened on first use.
//     A pipeline is split by node, every node's share is in flight at once, and the
//     replies come back in the caller's order. MOVED refreshes the map and retries on
//     the new owner; ASK retries once on the named node after ASKING; TRYAGAIN and
//     CLUSTERDOWN, and a node that cannot be reached (a failover in progress), are
//     retried after a short pause with a fresh map, within the connection's timeout.
//     An idle connection the server has closed (a node that died since the last call)
//     is replaced before anything is sent on it. A command that was sent and then lost
//     its connection is not retried (it may have run): it fails UNAVAILABLE like on a
//     single server, and the next call reconnects.
// A multi-key command or script must keep its keys on one slot (hash tags); the server
// refuses anything else with CROSSSLOT, which the caller gets as an error.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/redis.h"

namespace parley {

inline constexpr int kRedisClusterSlots = 16384;

// The cluster slot of `key`: of the part between the first '{' and the next '}' when
// that part is not empty, else of the whole key.
uint16_t RedisKeySlot(absl::string_view key);

// How a command is routed in a cluster.
struct RedisRoute {
  // kLastWrite: WAIT and WAITAOF, which count the replicas that acknowledged this
  // client's writes on one node, so they go where the previous keyed command went.
  enum class Kind { kKey, kAnyNode, kEveryPrimary, kLastWrite };
  Kind kind = Kind::kAnyNode;
  absl::string_view key;  // For kKey: a view into the command's arguments.
};
RedisRoute RouteOfCommand(const std::vector<std::string>& args);

// A redirection a cluster node answered with: "MOVED <slot> <host>:<port>" (the slot
// has a new owner) or "ASK <slot> <host>:<port>" (this one key is being migrated there).
struct RedisRedirect {
  bool ask = false;
  uint16_t slot = 0;
  RedisNodeAddress node;
};
// The redirection an error status (as ErrorReplyStatus makes it) carries, if any.
std::optional<RedisRedirect> ParseRedirect(const absl::Status& status);

// Which primary serves each slot, and which nodes exist.
class RedisSlotMap {
 public:
  // From a CLUSTER SLOTS reply. Nodes reported without an address (empty ip) are
  // taken to be `asked`, the node that answered. INTERNAL on a malformed reply.
  static absl::StatusOr<RedisSlotMap> FromClusterSlots(const redisReply& reply,
                                                       const RedisNodeAddress& asked);

  // The primary serving `slot`; null when none does (a cluster that lost coverage).
  const RedisNodeAddress* PrimaryOf(uint16_t slot) const;
  const std::vector<RedisNodeAddress>& primaries() const { return primaries_; }
  // Primaries and replicas.
  const std::vector<RedisNodeAddress>& nodes() const { return nodes_; }

 private:
  RedisSlotMap() : slot_primary_(kRedisClusterSlots, -1) {}
  std::vector<int16_t> slot_primary_;  // Index into primaries_, -1: unserved.
  std::vector<RedisNodeAddress> primaries_;
  std::vector<RedisNodeAddress> nodes_;
};

// Asks each of `candidates` in turn for CLUSTER SLOTS until one answers. UNAVAILABLE
// when none can be reached; FAILED_PRECONDITION when a node is not in cluster mode.
absl::StatusOr<RedisSlotMap> FetchRedisSlotMap(const RedisEndpoint& endpoint,
                                               const std::vector<RedisNodeAddress>& candidates,
                                               absl::Duration timeout);

// A RedisConnection over a whole cluster (see the top of this file). One thread at a
// time, like every RedisConnection. ReadReply/ReadReplyFor read from the node that
// keyless commands went to (classic SUBSCRIBE: plain PUBLISH reaches every node of a
// cluster); broken() is true once that node's connection broke, as a subscriber then
// lost its subscriptions. Routed commands reconnect by themselves.
class RedisClusterConnection final : public RedisConnection {
 public:
  // Reads the slot map from the first reachable seed of `endpoint`. UNAVAILABLE when no
  // seed answers within `timeout`, which also bounds each later call's retries.
  static absl::StatusOr<std::unique_ptr<RedisClusterConnection>> Connect(
      const RedisEndpoint& endpoint, absl::Duration timeout);

  absl::StatusOr<std::vector<absl::StatusOr<RedisReply>>> PipelineEach(
      const std::vector<std::vector<std::string>>& commands) override;
  absl::StatusOr<RedisReply> ReadReply() override;
  absl::StatusOr<RedisReply> ReadReplyFor(absl::Duration timeout) override;
  bool broken() const override { return any_node_broken_; }
  bool cluster() const override { return true; }

 private:
  struct Pending;
  RedisClusterConnection(RedisEndpoint endpoint, absl::Duration timeout, RedisSlotMap map)
      : endpoint_(std::move(endpoint)), timeout_(timeout), map_(std::move(map)) {}

  absl::Status RefreshMap();
  // The open connection to `node`, opened now if needed; null when it cannot be reached.
  RedisServerConnection* ConnectionTo(const RedisNodeAddress& node);
  void Drop(const RedisNodeAddress& node);
  // The node keyless commands and ReadReply use; null when no node can be reached.
  RedisServerConnection* AnyNode();
  // One round: sends every pending command to its node, fills `results` for those that
  // got a final outcome and returns those to try again.
  std::vector<Pending> RunRound(const std::vector<std::vector<std::string>>& commands,
                                std::vector<Pending> pending,
                                std::vector<std::optional<absl::StatusOr<RedisReply>>>& results);
  absl::StatusOr<RedisReply> RunOnEveryPrimary(const std::vector<std::string>& command);

  const RedisEndpoint endpoint_;
  const absl::Duration timeout_;
  RedisSlotMap map_;
  bool map_stale_ = false;
  absl::flat_hash_map<RedisNodeAddress, std::unique_ptr<RedisServerConnection>> connections_;
  std::optional<RedisNodeAddress> any_node_;
  bool any_node_broken_ = false;
  std::optional<RedisNodeAddress> last_keyed_node_;  // Where WAIT goes (kLastWrite).
};

}  // namespace parley
