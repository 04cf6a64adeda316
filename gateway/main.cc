// parley-gateway: the public gRPC API (parley.v1) that product backends call.
#include <grpcpp/grpcpp.h>

#include "common/config.h"
#include "common/redis.h"
#include "common/server/service_host.h"
#include "gateway/api/admin_api.h"
#include "gateway/api/api_key_api.h"
#include "gateway/api/sandbox_api.h"
#include "gateway/api/session_api.h"
#include "gateway/auth/authenticator.h"
#include "gateway/auth/rate_limiter.h"
#include "gateway/fanout/history.h"
#include "gateway/fanout/hub.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "parley/v1/parley.grpc.pb.h"

namespace {

struct GatewayConfig {
  std::string session_addr = "127.0.0.1:7071";
  std::string sandbox_addr = "127.0.0.1:7072";
  std::string sandbox_replica_address_template;
  std::string store_addr = "127.0.0.1:7073";
  std::string redis_url = "redis://127.0.0.1:56379";
  std::string bootstrap_api_key;
  std::string bootstrap_tenant = "default";
  absl::Duration downstream_timeout = absl::Seconds(30);
  std::string redis_key_prefix;
  int64_t stream_buffer = 1024;
  int64_t max_streams_per_tenant = 10'000;
  int64_t max_subscriptions_per_tenant = 100'000;
  int64_t max_subscriptions_per_stream = 10'000;
  int64_t max_batch_bytes = 64 * 1024;
  absl::Duration keepalive = absl::Seconds(5);
  absl::Duration key_cache_ttl = absl::Seconds(2);
  int64_t tenant_rate_limit = 500;
  int64_t tenant_rate_burst = 1000;
  int64_t key_rate_limit = 0;
  int64_t key_rate_burst = 0;
};

// Health probe of Redis: PING on a connection of its own, reopened when it broke.
class RedisProbe {
 public:
  explicit RedisProbe(parley::RedisEndpoint endpoint) : endpoint_(std::move(endpoint)) {}

  absl::Status Check() {
    if (!connection_ || connection_->broken()) {
      auto connection = parley::RedisConnection::Connect(endpoint_, absl::Seconds(1));
      if (!connection.ok()) return connection.status();
      connection_ = *std::move(connection);
    }
    return connection_->Command({"PING"}).status();
  }

 private:
  const parley::RedisEndpoint endpoint_;
  std::unique_ptr<parley::RedisConnection> connection_;
};

// Health probe of store-svc: its own health check, so a store whose Postgres is down
// counts as down here too (every StreamEvents backfill and key lookup needs it).
class StoreProbe {
 public:
  explicit StoreProbe(std::shared_ptr<grpc::Channel> channel)
      : health_(grpc::health::v1::Health::NewStub(std::move(channel))) {}

  absl::Status Check() {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    grpc::Status status = health_->Check(&context, request, &response);
    if (!status.ok()) return absl::UnavailableError(status.error_message());
    if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::UnavailableError("store-svc is not serving");
    }
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

}  // namespace

int main(int argc, char** argv) {
  parley::ServerOptions server{.grpc_addr = "127.0.0.1:7070", .admin_addr = "127.0.0.1:9070"};
  GatewayConfig config;
  parley::Flags flags("parley-gateway",
                      "The public Parley API: authentication, tenancy, rate limits, fan-out.");
  parley::AddServerFlags(flags, &server);
  flags.HostPort("session_addr", &config.session_addr, "session-svc address (any replica)");
  flags.HostPort("sandbox_addr", &config.sandbox_addr,
                 "sandbox-svc address (any replica): acquiring a session's sandbox goes there");
  flags.String("sandbox_replica_address_template", &config.sandbox_replica_address_template,
               "address of sandbox-svc replica {replica}, where calls for its sandboxes go, e.g. "
               "parley-sandbox-{replica}.parley-sandbox-headless:7003 (empty: --sandbox_addr)");
  flags.HostPort("store_addr", &config.store_addr, "store-svc address");
  flags.String("redis_url", &config.redis_url, "Redis for session event fan-out",
               parley::ValidateRedisUrl);
  flags.String("bootstrap_api_key", &config.bootstrap_api_key,
               "the operator key: holds \"admin\" (parley.admin.v1, to create tenants and "
               "their keys) and every scope of --bootstrap_tenant; empty disables it");
  flags.String("bootstrap_tenant", &config.bootstrap_tenant, "tenant of the bootstrap API key",
               parley::ValidateNonEmpty);
  flags.Duration("downstream_timeout", &config.downstream_timeout,
                 "longest a forwarded call may take, within the caller's own deadline");
  flags.String("redis_key_prefix", &config.redis_key_prefix,
               "prefix of every Redis key (tests use it to share one server)");
  flags.Int("max_streams_per_tenant", &config.max_streams_per_tenant,
            "open event streams one tenant may hold on this gateway (0: no cap)", 0, 10'000'000);
  flags.Int("max_subscriptions_per_tenant", &config.max_subscriptions_per_tenant,
            "Subscribe subscriptions one tenant may hold on this gateway (0: no cap)", 0,
            100'000'000);
  flags.Int("max_subscriptions_per_stream", &config.max_subscriptions_per_stream,
            "subscriptions one Subscribe stream may hold (0: no cap)", 0, 10'000'000);
  flags.Int("max_batch_bytes", &config.max_batch_bytes,
            "most bytes one write of a Subscribe stream or a batched StreamEvents carries", 1024,
            16 << 20);
  flags.Int("stream_buffer", &config.stream_buffer,
            "events buffered per StreamEvents call before a slow client is cut", 16, 1 << 20);
  flags.Duration("keepalive", &config.keepalive,
                 "StreamEvents and Subscribe send a keepalive after this long without a write");
  flags.Duration("key_cache_ttl", &config.key_cache_ttl,
                 "how long a looked-up API key (or its refusal) is reused: the longest a "
                 "revoked key keeps working on this gateway");
  flags.Int("tenant_rate_limit", &config.tenant_rate_limit,
            "requests per second a tenant may make, where its own limit is 0 (0: none)", 0,
            1'000'000);
  flags.Int("tenant_rate_burst", &config.tenant_rate_burst,
            "requests a tenant may make at once (0: the rate)", 0, 10'000'000);
  flags.Int("key_rate_limit", &config.key_rate_limit,
            "requests per second one API key may make (0: only its tenant's limit)", 0, 1'000'000);
  flags.Int("key_rate_burst", &config.key_rate_burst,
            "requests one API key may make at once (0: the rate)", 0, 10'000'000);
  const parley::Environment env = parley::ProcessEnvironment();
  parley::ParseFlagsOrExit(flags, argc, argv, env);
  parley::ParseTracingEnvOrExit(env, &server);

  parley::ServiceHost host("parley-gateway", server);
  auto store = std::shared_ptr<parley::store::v1::StoreService::StubInterface>(
      parley::store::v1::StoreService::NewStub(
          host.grpc_telemetry().CreateChannel(config.store_addr)));
  parley::gateway::KeyAuthenticator authenticator({.bootstrap_secret = config.bootstrap_api_key,
                                                   .bootstrap_tenant = config.bootstrap_tenant,
                                                   .cache_ttl = config.key_cache_ttl},
                                                  store);
  const parley::RedisEndpoint redis = *parley::ParseRedisUrl(config.redis_url);
  parley::gateway::RateLimiter rate_limiter(
      {.redis = redis,
       .keys = parley::RedisKeys(config.redis_key_prefix),
       .tenant_default = {.per_s = static_cast<uint32_t>(config.tenant_rate_limit),
                          .burst = static_cast<uint32_t>(config.tenant_rate_burst)},
       .key_default = {.per_s = static_cast<uint32_t>(config.key_rate_limit),
                       .burst = static_cast<uint32_t>(config.key_rate_burst)}},
      host.registry());
  parley::gateway::RateLimitedAuthenticator limited(authenticator, rate_limiter);
  parley::gateway::RedisStoreHistory history(redis, parley::RedisKeys(config.redis_key_prefix),
                                             store);
  parley::gateway::HubOptions hub_options;
  hub_options.redis = redis;
  hub_options.key_prefix = config.redis_key_prefix;
  hub_options.stream.max_buffered = static_cast<int>(config.stream_buffer);
  hub_options.stream.keepalive = config.keepalive;
  hub_options.max_streams_per_tenant = static_cast<int>(config.max_streams_per_tenant);
  hub_options.max_subscriptions_per_tenant = static_cast<int>(config.max_subscriptions_per_tenant);
  hub_options.max_subscriptions_per_stream = static_cast<int>(config.max_subscriptions_per_stream);
  hub_options.stream.max_batch_bytes = static_cast<size_t>(config.max_batch_bytes);
  parley::gateway::Hub hub(hub_options, history, host.registry());
  hub.Start();
  // On SIGTERM every open stream ends UNAVAILABLE with its resume cursor at once, rather
  // than being cut without one when the drain timeout runs out.
  host.OnDrain([&hub] { hub.Drain(); });
  parley::gateway::IdempotencyStore idempotency(
      {.redis = redis, .keys = parley::RedisKeys(config.redis_key_prefix)});
  // A revoked key's open streams end within a second plus the key cache's TTL.
  parley::gateway::StreamRevalidator revalidator(authenticator, absl::Seconds(1));
  parley::gateway::SessionApi sessions(
      limited, host.grpc_telemetry(), host.grpc_telemetry().CreateChannel(config.session_addr),
      store, config.downstream_timeout, hub, &idempotency, &revalidator);
  parley::gateway::ApiKeyApi api_keys(limited, store, config.downstream_timeout, &idempotency);
  parley::gateway::AdminApi admin(limited, store, config.downstream_timeout, &idempotency);
  absl::StatusOr<std::unique_ptr<parley::sandbox::SandboxReplicas>> sandbox_replicas =
      parley::sandbox::SandboxReplicas::Create(
          {.service_address = config.sandbox_addr,
           .replica_address_template = config.sandbox_replica_address_template},
          [&host](const std::string& address) {
            return host.grpc_telemetry().CreateChannel(address);
          });
  if (!sandbox_replicas.ok()) {
    host.logger().Error("bad sandbox-svc address",
                        {{"error", sandbox_replicas.status().ToString()}});
    return 2;
  }
  parley::gateway::SandboxApi sandboxes(limited, {.store = store,
                                                  .sandbox = *std::move(sandbox_replicas),
                                                  .unary_timeout = config.downstream_timeout,
                                                  .idempotency = &idempotency});
  host.AddService(&sessions);
  host.AddService(&sandboxes);
  host.AddService(&api_keys);
  host.AddService(&admin);
  RedisProbe redis_probe(redis);
  // A plain channel: probes are not calls worth tracing or counting per method.
  StoreProbe store_probe(
      grpc::CreateChannel(config.store_addr, grpc::InsecureChannelCredentials()));
  host.AddDependency("redis", [&redis_probe] { return redis_probe.Check(); });
  host.AddDependency("store", [&store_probe] { return store_probe.Check(); });
  return host.Run();
}
