// Idempotency keys for the gateway's mutating unary calls, shared by every replica
// through Redis.
//
// A client that may retry a call sends the metadata `idempotency-key: <key>` (1 to 256
// printable ASCII characters, chosen by the client, e.g. a UUID). The first call with a
// key runs; its outcome — the response, or an error that trying again would not change
// — is kept for `ttl` (24 h), and a retry with the same key gets that outcome again
// (trailing metadata `idempotent-replayed: true`) without anything running twice. While
// the first call is still running, a retry is ABORTED "IDEMPOTENCY_KEY_IN_USE" with a
// retry delay; the same key sent with a different request (or to another method) is
// FAILED_PRECONDITION "IDEMPOTENCY_KEY_REUSED". Outcomes a retry may change
// (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, CANCELLED, INTERNAL,
// UNKNOWN) are not kept: the key is released and the retry runs. Keys belong to a
// tenant: another tenant's use of the same key is unrelated.
//
// Stored outcomes are sealed (AES-256-GCM) with a key derived from the idempotency key
// and the tenant, and filed under a different digest of the idempotency key: Redis
// alone cannot read them — which matters for CreateApiKey, whose response holds a
// secret. Without Redis a call that asks for idempotency is UNAVAILABLE rather than
// run unprotected.
//
// SendMessage keeps its own durable idempotency (SendMessageRequest.idempotency_key in
// store-svc); CreateSession has external_id. This layer serves every other mutating
// unary call, and the header also works for those two.
//
// Threading: Begin and Complete only queue; a RedisWorkerPool runs the Redis work and
// Begin's `done` runs on its thread.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/redis.h"
#include "common/redis_worker_pool.h"
#include "google/protobuf/message.h"

namespace parley::gateway {

inline constexpr char kIdempotencyKeyHeader[] = "idempotency-key";
inline constexpr char kIdempotentReplayedTrailer[] = "idempotent-replayed";

struct IdempotencyOptions {
  RedisEndpoint redis;
  RedisKeys keys;
  // How long an outcome is kept for retries.
  absl::Duration ttl = absl::Hours(24);
  // How long a call may hold its key before a retry may run again (a gateway that died
  // mid-call never releases it).
  absl::Duration in_flight_ttl = absl::Minutes(2);
  int workers = 2;
};

// The idempotency key a call carries: nullopt without one; INVALID_ARGUMENT for one
// that is empty, too long or not printable ASCII.
absl::StatusOr<std::optional<std::string>> IdempotencyKeyOf(const grpc::ServerContextBase& context);

class IdempotencyStore {
 public:
  // A call's hold on its key, from Begin to Complete.
  struct Claim {
    std::string redis_key;
    std::string fingerprint;
    std::string seal_key;  // 32 bytes.
  };
  // What Begin found: the call runs (holding `claim`), or an earlier outcome to replay.
  struct Started {
    std::optional<Claim> claim;
    grpc::Status replay_status;
    std::string replay_response;  // The serialized response when replay_status is OK.
  };
  using BeginDone = std::function<void(absl::StatusOr<Started>)>;

  explicit IdempotencyStore(IdempotencyOptions options);

  // Claims `key` of `tenant` for a call of `method` with `request`, or finds its
  // outcome. `done` gets the claim, the outcome to replay, or the error to answer with
  // (IDEMPOTENCY_KEY_IN_USE, IDEMPOTENCY_KEY_REUSED, UNAVAILABLE). Thread-safe.
  // `in_flight_ttl` overrides the option for a call that may run longer (an Exec runs
  // up to its stream deadline: its key must stay held until then).
  void Begin(absl::string_view tenant, absl::string_view method, absl::string_view key,
             const google::protobuf::Message& request, BeginDone done,
             std::optional<absl::Duration> in_flight_ttl = std::nullopt);
  // Records how the claimed call ended (`response` when `status` is OK), or releases the
  // key when a retry could end otherwise, then runs `done` (on a worker thread). Answer
  // the caller from `done`: a retry sent after the answer must find the outcome, not
  // the pending claim. When Redis fails, `done` still runs and the claim expires by
  // itself (in_flight_ttl). Thread-safe.
  void Complete(Claim claim, const grpc::Status& status, const google::protobuf::Message* response,
                std::function<void()> done);

 private:
  const IdempotencyOptions options_;
  RedisWorkerPool pool_;
};

}  // namespace parley::gateway
