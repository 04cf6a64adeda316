// parley-session: session routing — turn queue, leases with fencing, the agent loop.
#include "common/config.h"
#include "common/redis.h"
#include "common/server/service_host.h"
#include "parley/router/v1/router.grpc.pb.h"

namespace {

struct SessionConfig {
  std::string store_addr = "127.0.0.1:7073";
  std::string sandbox_addr = "127.0.0.1:7072";
  std::string redis_url = "redis://127.0.0.1:56379";
};

}  // namespace

int main(int argc, char** argv) {
  parley::ServerOptions server{.grpc_addr = "127.0.0.1:7071", .admin_addr = "127.0.0.1:9071"};
  SessionConfig config;
  parley::Flags flags("parley-session",
                      "Session routing: turn queue, leases with fencing, the agent loop.");
  parley::AddServerFlags(flags, &server);
  flags.HostPort("store_addr", &config.store_addr, "store-svc address");
  flags.HostPort("sandbox_addr", &config.sandbox_addr, "sandbox-svc address");
  flags.String("redis_url", &config.redis_url, "Redis for session event streams and leases",
               parley::ValidateRedisUrl);
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());

  parley::ServiceHost host("parley-session", server);
  parley::router::v1::SessionRouter::CallbackService router;
  host.AddService(&router);
  return host.Run();
}
