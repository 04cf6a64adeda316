// Rate limits per tenant and per API key, shared by every gateway replica through Redis.
//
// The algorithm is GCRA (a token bucket kept as one timestamp per limited thing, the
// "theoretical arrival time"): a limit of `per_s` requests per second with a burst of
// `burst` admits `burst` requests at once and then one every 1/per_s seconds. One Lua
// script checks the tenant's limit and the key's together and records the request only
// when both admit it, atomically, with Redis's own clock (replicas' clocks never
// matter). Both keys hash to the tenant's slot, so the script also runs on a Cluster.
//
// A refusal is RESOURCE_EXHAUSTED with ErrorInfo.reason "RATE_LIMITED" (metadata
// "limit": "tenant" or "key") and a RetryInfo saying when the request would be
// admitted. When Redis cannot be reached (a failed call, and for a second after one),
// requests are admitted unchecked and counted
// (parley_gateway_rate_limit_unchecked_total), as are requests beyond 10,000 waiting
// for a check: losing the limiter must not take the API down with it. Operator keys
// (scope "admin") are not limited.
//
// Threading: Admit() only queues; a RedisWorkerPool (a few threads, each with its own
// blocking Redis connection) runs the script and calls `done` on its thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/redis.h"
#include "common/redis_worker_pool.h"
#include "gateway/auth/authenticator.h"
#include "telemetry/metrics.h"

namespace parley::gateway {

struct RateLimit {
  uint32_t per_s = 0;  // 0: no limit
  uint32_t burst = 0;  // 0: per_s
};

struct RateLimiterOptions {
  RedisEndpoint redis;
  RedisKeys keys;
  // Used where a tenant's own (store-svc's Tenant.rate_limit_*) is 0.
  RateLimit tenant_default{.per_s = 500, .burst = 1000};
  // Every key of a tenant; 0 leaves keys limited by their tenant only.
  RateLimit key_default{.per_s = 0, .burst = 0};
  int workers = 2;
};

class RateLimiter {
 public:
  // Destruction (the worker pool's) answers what is queued, then joins the workers.
  RateLimiter(RateLimiterOptions options, telemetry::Registry& registry);

  // Hands `who` back when admitted, else RESOURCE_EXHAUSTED (RATE_LIMITED with the
  // retry delay). Thread-safe.
  void Admit(Principal who, AuthenticateDone done);

 private:
  // Requests waiting for a check, at most; more are admitted unchecked.
  static constexpr size_t kMaxQueued = 10'000;
  // After Redis failed to answer, how long requests are admitted without asking it.
  static constexpr absl::Duration kUnreachableBackoff = absl::Seconds(1);

  // The limits that apply to `who`, and the GCRA script call that checks them (empty
  // when none applies).
  struct Check {
    RateLimit tenant;
    RateLimit key;
    std::vector<std::string> command;
  };
  Check CheckFor(const Principal& who) const;
  // The verdict of the script's reply: OK, or RESOURCE_EXHAUSTED naming the limit.
  absl::Status Verdict(const Check& check, const absl::StatusOr<RedisReply>& reply);
  void MarkUnreachable();

  const RateLimiterOptions options_;
  telemetry::CounterFamily& limited_;
  telemetry::Counter& limited_tenant_;
  telemetry::Counter& limited_key_;
  telemetry::Counter& unchecked_;

  absl::Mutex mu_;
  absl::Time unreachable_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // Last, so it is destroyed first: its jobs use everything above.
  RedisWorkerPool pool_;
};

// Authenticates with `inner`, then admits the principal through `limiter`.
class RateLimitedAuthenticator final : public Authenticator {
 public:
  // Both must outlive this object.
  RateLimitedAuthenticator(Authenticator& inner, RateLimiter& limiter)
      : inner_(inner), limiter_(limiter) {}
  void Authenticate(const grpc::ServerContextBase& context, AuthenticateDone done) override;

 private:
  Authenticator& inner_;
  RateLimiter& limiter_;
};

}  // namespace parley::gateway
