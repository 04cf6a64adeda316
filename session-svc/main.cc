// parley-session: session routing — turn queue, leases with fencing, the agent loop.
//
// Wiring only: flags → options, then the parts described in session-svc/README.md.
// Shutdown order on SIGTERM: the scheduler drains first (stop claiming, let running
// turns finish, hand back the rest) while the gRPC server still answers cancels; then
// the server drains.
#include <unistd.h>

#include <cstdlib>
#include <optional>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "common/config.h"
#include "common/redis.h"
#include "common/server/service_host.h"
#include "session-svc/agent/agent_runner.h"
#include "session-svc/api/router_service.h"
#include "session-svc/model/provider_config.h"
#include "session-svc/model/scripted.h"
#include "session-svc/scheduler/scheduler.h"
#include "session-svc/scheduler/signals.h"
#include "session-svc/turn/turn_executor.h"

namespace {

struct SessionConfig {
  std::string store_addr = "127.0.0.1:7073";
  std::string sandbox_addr = "127.0.0.1:7072";
  std::string sandbox_replica_address_template;
  std::string redis_url = "redis://127.0.0.1:56379";
  std::string redis_key_prefix;
  int64_t redis_wait_replicas = -1;
  absl::Duration redis_wait_timeout = absl::Milliseconds(50);
  std::string worker_id;
  int64_t turn_slots = 16;
  absl::Duration lease_ttl = absl::Seconds(10);
  absl::Duration poll_interval = absl::Seconds(1);
  int64_t max_attempts = 2;
  absl::Duration queued_turn_ttl = absl::Hours(24);
  int64_t max_running_per_tenant = 0;
  absl::Duration scripted_delay = absl::ZeroDuration();
  absl::Duration tool_timeout = absl::Minutes(10);
  std::string sandbox_template;
  std::string providers_file;
  int64_t history_token_budget = 100000;
  int64_t capture_model_bodies_bytes = 0;
  absl::Duration retry_backoff = absl::Milliseconds(500);
  absl::Duration retry_max_backoff = absl::Seconds(30);
};

std::string DefaultWorkerId() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  absl::BitGen random;
  return absl::StrCat(host, "/", getpid(), "/", absl::Uniform<uint32_t>(random));
}

}  // namespace

int main(int argc, char** argv) {
  parley::ServerOptions server{.grpc_addr = "127.0.0.1:7071", .admin_addr = "127.0.0.1:9071"};
  SessionConfig config;
  parley::Flags flags("parley-session",
                      "Session routing: turn queue, leases with fencing, the agent loop.");
  parley::AddServerFlags(flags, &server);
  flags.HostPort("store_addr", &config.store_addr, "store-svc address");
  flags.HostPort("sandbox_addr", &config.sandbox_addr,
                 "sandbox-svc address (any replica): acquiring a session's sandbox goes there");
  flags.String("sandbox_replica_address_template", &config.sandbox_replica_address_template,
               "address of sandbox-svc replica {replica}, where calls for its sandboxes go, e.g. "
               "parley-sandbox-{replica}.parley-sandbox-headless:7003 (empty: --sandbox_addr)");
  flags.String("redis_url", &config.redis_url, "Redis for session event streams and leases",
               parley::ValidateRedisUrl);
  flags.String("redis_key_prefix", &config.redis_key_prefix,
               "prefix of every Redis key and channel (tests use it to share one server)");
  flags.Int("redis_wait_replicas", &config.redis_wait_replicas,
            "replicas each event publish waits for (WAIT) before the turn goes on; 0 = no "
            "WAIT; -1 = 1 on a Redis Cluster, 0 on a single server",
            -1, 16);
  flags.Duration("redis_wait_timeout", &config.redis_wait_timeout,
                 "longest one publish waits for its replicas; on timeout it goes on");
  flags.String("worker_id", &config.worker_id, "lease owner name (default <host>/<pid>/<random>)");
  flags.Int("turn_slots", &config.turn_slots, "turns this replica runs at once", 1, 4096);
  flags.Duration("lease_ttl", &config.lease_ttl, "a turn's lease; heartbeats every third of it");
  flags.Duration("poll_interval", &config.poll_interval,
                 "claim attempt without a wake (what a lost wake costs at most)");
  flags.Int("max_attempts", &config.max_attempts,
            "runs of a turn whose worker died before it emitted output", 1, 100);
  flags.Duration("queued_turn_ttl", &config.queued_turn_ttl,
                 "a turn not started this long after it was queued ends CANCELLED");
  flags.Int("max_running_per_tenant", &config.max_running_per_tenant,
            "running turns per tenant across all replicas; 0 = no cap", 0, 100000);
  flags.Duration("scripted_delay", &config.scripted_delay,
                 "the scripted model's default pause before each word");
  flags.String("providers_file", &config.providers_file,
               "JSON file of the model providers (see session-svc/README.md); empty: only the "
               "built-in scripted model");
  flags.Int("history_token_budget", &config.history_token_budget,
            "estimated tokens of stored history per model request (older turns are left "
            "out); 0 = no budget",
            0, 100000000);
  flags.Int("capture_model_bodies_bytes", &config.capture_model_bodies_bytes,
            "opt in: put the provider request and response bodies (credentials redacted, "
            "each cut to this many bytes) on sampled chat spans; 0 = never",
            0, 16 << 20);
  flags.Duration("tool_timeout", &config.tool_timeout, "wall-clock limit of one tool call");
  flags.Duration("retry_backoff", &config.retry_backoff,
                 "first delay before retrying a failed model request (doubles per retry)");
  flags.Duration("retry_max_backoff", &config.retry_max_backoff,
                 "longest delay between model request retries");
  flags.String("sandbox_template", &config.sandbox_template,
               "sandbox template of sessions that name none (empty: sandbox-svc's default)");
  const parley::Environment env = parley::ProcessEnvironment();
  parley::ParseFlagsOrExit(flags, argc, argv, env);
  parley::ParseTracingEnvOrExit(env, &server);
  if (config.worker_id.empty()) config.worker_id = DefaultWorkerId();
  if (config.lease_ttl < absl::Seconds(1) || config.lease_ttl > absl::Minutes(10)) {
    std::fprintf(stderr, "parley-session: --lease_ttl must be between 1s and 10m\n");
    return 2;
  }
  if (config.poll_interval <= absl::ZeroDuration() || config.poll_interval > absl::Seconds(1)) {
    std::fprintf(stderr, "parley-session: --poll_interval must be in (0, 1s]\n");
    return 2;
  }
  const parley::RedisEndpoint redis = *parley::ParseRedisUrl(config.redis_url);

  parley::ServiceHost host("parley-session", server);
  auto store = parley::store::v1::StoreService::NewStub(
      host.grpc_telemetry().CreateChannel(config.store_addr));
  absl::StatusOr<std::unique_ptr<parley::sandbox::SandboxReplicas>> sandbox =
      parley::sandbox::SandboxReplicas::Create(
          {.service_address = config.sandbox_addr,
           .replica_address_template = config.sandbox_replica_address_template},
          [&host](const std::string& address) {
            return host.grpc_telemetry().CreateChannel(address);
          });
  if (!sandbox.ok()) {
    std::fprintf(stderr, "parley-session: %s\n", std::string(sandbox.status().message()).c_str());
    return 2;
  }

  namespace model = parley::session::model;
  model::ProviderRegistry providers("scripted");
  providers.Add(std::make_unique<model::ScriptedProvider>(
      model::ScriptedOptions{.word_delay = config.scripted_delay}));
  if (!config.providers_file.empty()) {
    // Provider keys come from the variables the file names, read once, here.
    absl::StatusOr<model::ProvidersFile> file = model::LoadProvidersFile(
        config.providers_file, [](const std::string& name) -> std::optional<std::string> {
          const char* value = std::getenv(name.c_str());
          return value == nullptr ? std::nullopt : std::optional<std::string>(value);
        });
    if (!file.ok()) {
      std::fprintf(stderr, "parley-session: %s\n", std::string(file.status().message()).c_str());
      return 2;
    }
    for (model::ProviderConfig& provider : file->providers) {
      providers.Add(model::MakeProvider(std::move(provider)));
    }
    if (!file->default_provider.empty()) providers.set_default_name(file->default_provider);
  }
  const parley::session::TurnMetrics turn_metrics(host.registry());
  parley::session::AgentRunner runner(
      {.tool_timeout = config.tool_timeout,
       .retry_first_backoff = config.retry_backoff,
       .retry_max_backoff = config.retry_max_backoff,
       .history_token_budget = static_cast<uint64_t>(config.history_token_budget),
       .default_sandbox_template = config.sandbox_template,
       .tracer = &host.tracer(),
       .metrics = &turn_metrics,
       .capture_model_bodies_bytes = static_cast<size_t>(config.capture_model_bodies_bytes)},
      providers, *store, sandbox->get(), parley::RealClock::Get());
  parley::session::Signals signals({.redis = redis, .key_prefix = config.redis_key_prefix},
                                   host.logger());
  const parley::session::ExecutorOptions executor_options{
      .owner = config.worker_id,
      .lease_ttl = config.lease_ttl,
      .max_attempts = static_cast<int>(config.max_attempts),
      .queued_turn_ttl = config.queued_turn_ttl,
      .redis = redis,
      .key_prefix = config.redis_key_prefix,
      .redis_wait_replicas = config.redis_wait_replicas < 0
                                 ? std::nullopt
                                 : std::optional<int>(config.redis_wait_replicas),
      .redis_wait_timeout = config.redis_wait_timeout};
  parley::session::Scheduler scheduler(
      {.owner = config.worker_id,
       .slots = static_cast<int>(config.turn_slots),
       .lease_ttl = config.lease_ttl,
       .poll_interval = config.poll_interval,
       .max_running_per_tenant = static_cast<uint32_t>(config.max_running_per_tenant),
       .clock = &parley::RealClock::Get()},
      *store, signals,
      [&] {
        return std::make_unique<parley::session::TurnExecutor>(
            executor_options, *store, runner, parley::RealClock::Get(), host.logger());
      },
      host.logger(), host.registry());
  parley::session::RouterService router(*store, sandbox->get(), signals, scheduler, redis,
                                        config.redis_key_prefix, config.worker_id, host.logger());
  host.AddService(&router);

  if (absl::Status started = host.Start(); !started.ok()) {
    host.logger().Error("could not start", {{"error", started.ToString()}});
    return 1;
  }
  signals.Start([&] { scheduler.Wake(); },
                [&](const std::string& turn_id, const std::string& reason) {
                  scheduler.Cancel(turn_id, reason);
                });
  scheduler.Start();
  host.logger().Info("scheduler started",
                     {{"worker_id", config.worker_id}, {"turn_slots", config.turn_slots}});
  host.WaitForTerminationSignal();
  host.logger().Info("draining turns", {{"running", scheduler.running()}});
  scheduler.Drain(server.drain_timeout);
  signals.Stop();
  host.Shutdown();
  return 0;
}
