#include "gateway/auth/rate_limiter.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace parley::gateway {
namespace {

// KEYS: the limited things (tenant, then key). ARGV: per key, its emission interval
// and burst, in microseconds and requests. Returns 0 when admitted (and records it in
// every key), else how many microseconds until it would be, and which key refused
// ("1" the tenant, "2" the key) — recording nothing.
constexpr char kGcraScript[] = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait, refused, tats = 0, 0, {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat + interval
  local over = tats[i] - now - burst * interval
  if over > wait then wait, refused = over, i end
end
if refused > 0 then return {wait, refused} end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]),
             'PX', math.ceil((tats[i] - now) / 1000) + 1000)
end
return {0, 0}
)lua";

RateLimit Effective(uint32_t per_s, uint32_t burst, const RateLimit& fallback) {
  RateLimit limit = per_s > 0 ? RateLimit{per_s, burst} : fallback;
  if (limit.burst == 0) limit.burst = std::max<uint32_t>(1, limit.per_s);
  return limit;
}

}  // namespace

RateLimiter::RateLimiter(RateLimiterOptions options, telemetry::Registry& registry)
    : options_(std::move(options)),
      limited_(registry.AddCounter("parley_gateway_rate_limited_total",
                                   "Requests refused by a rate limit, by which limit.", {"limit"})),
      limited_tenant_(limited_.WithLabels({"tenant"})),
      limited_key_(limited_.WithLabels({"key"})),
      unchecked_(registry
                     .AddCounter("parley_gateway_rate_limit_unchecked_total",
                                 "Requests admitted without a check because Redis was "
                                 "unreachable.")
                     .WithLabels({})),
      pool_({.redis = options_.redis, .workers = options_.workers, .max_queued = kMaxQueued}) {}

void RateLimiter::Admit(Principal who, AuthenticateDone done) {
  if (who.Has(kScopeAdmin)) return done(std::move(who));  // The operator.
  auto check = std::make_shared<Check>(CheckFor(who));
  if (check->command.empty()) return done(std::move(who));
  bool reachable;
  {
    absl::MutexLock lock(&mu_);
    reachable = absl::Now() >= unreachable_until_;
  }
  // Checks are cheap while Redis answers; when it does not, requests are admitted
  // unchecked rather than queued behind timeouts.
  auto request =
      std::make_shared<std::pair<Principal, AuthenticateDone>>(std::move(who), std::move(done));
  if (reachable && pool_.Submit(std::move(check->command),
                                [this, check, request](absl::StatusOr<RedisReply> reply) {
                                  absl::Status verdict = Verdict(*check, reply);
                                  auto& [who, done] = *request;
                                  if (!verdict.ok()) return done(std::move(verdict));
                                  done(std::move(who));
                                })) {
    return;
  }
  unchecked_.Increment();
  request->second(std::move(request->first));
}

void RateLimiter::MarkUnreachable() {
  absl::MutexLock lock(&mu_);
  unreachable_until_ = absl::Now() + kUnreachableBackoff;
}

RateLimiter::Check RateLimiter::CheckFor(const Principal& who) const {
  Check check{
      .tenant = Effective(who.tenant_rate_per_s, who.tenant_rate_burst, options_.tenant_default),
      .key = Effective(options_.key_default.per_s, options_.key_default.burst, {})};
  std::vector<std::string> keys, argv;
  for (const auto& [name, limit] :
       {std::pair{options_.keys.TenantRate(who.tenant_id), check.tenant},
        std::pair{options_.keys.KeyRate(who.tenant_id, who.key_id), check.key}}) {
    if (limit.per_s == 0) continue;
    keys.push_back(name);
    argv.push_back(absl::StrCat(1'000'000 / limit.per_s));
    argv.push_back(absl::StrCat(limit.burst));
  }
  if (keys.empty()) return check;
  check.command = {"EVAL", kGcraScript, absl::StrCat(keys.size())};
  check.command.insert(check.command.end(), keys.begin(), keys.end());
  check.command.insert(check.command.end(), argv.begin(), argv.end());
  return check;
}

absl::Status RateLimiter::Verdict(const Check& check, const absl::StatusOr<RedisReply>& reply) {
  if (!reply.ok() || (*reply)->type != REDIS_REPLY_ARRAY || (*reply)->elements != 2) {
    // Unreachable or broken: admit, and stop asking for a while.
    if (!reply.ok() && absl::IsUnavailable(reply.status())) MarkUnreachable();
    unchecked_.Increment();
    return absl::OkStatus();
  }
  const int64_t wait_us = ReplyInt64((*reply)->element[0]);  // Script time: microseconds.
  if (wait_us <= 0) return absl::OkStatus();
  // Which limit refused: the first key is the tenant's when it is limited at all.
  const bool by_tenant = ReplyInt64((*reply)->element[1]) == 1 && check.tenant.per_s > 0;
  (by_tenant ? limited_tenant_ : limited_key_).Increment();
  const int64_t wait_ms = (wait_us + 999) / 1000;
  absl::Status status = absl::ResourceExhaustedError(absl::StrCat(
      "rate limit of the ", by_tenant ? "tenant" : "api key", " (",
      by_tenant ? check.tenant.per_s : check.key.per_s, "/s) reached; retry in ", wait_ms, " ms"));
  SetErrorInfo(status, "RATE_LIMITED", {{"limit", by_tenant ? "tenant" : "key"}});
  SetRetryDelay(status, wait_ms);
  return status;
}

void RateLimitedAuthenticator::Authenticate(const grpc::ServerContextBase& context,
                                            AuthenticateDone done) {
  inner_.Authenticate(context,
                      [this, done = std::move(done)](absl::StatusOr<Principal> who) mutable {
                        if (!who.ok()) return done(std::move(who));
                        limiter_.Admit(*std::move(who), std::move(done));
                      });
}

}  // namespace parley::gateway
