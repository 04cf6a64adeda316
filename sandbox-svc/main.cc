// parley-sandbox: sandbox lifecycle, warm pools, and exec/file calls into sandboxes.
#include "common/config.h"
#include "common/server/service_host.h"
#include "parley/sandbox/v1/sandbox.grpc.pb.h"

namespace {

struct SandboxConfig {
  std::string store_addr = "127.0.0.1:7073";
  std::string templates;  // Path of the template file; empty: built-in defaults.
};

}  // namespace

int main(int argc, char** argv) {
  parley::ServerOptions server{.grpc_addr = "127.0.0.1:7072", .admin_addr = "127.0.0.1:9072"};
  SandboxConfig config;
  parley::Flags flags("parley-sandbox",
                      "Sandbox lifecycle: create, warm pools, pause/resume, reaping, exec, files.");
  parley::AddServerFlags(flags, &server);
  flags.HostPort("store_addr", &config.store_addr, "store-svc address");
  flags.String("templates", &config.templates,
               "path of the sandbox template file (empty: built-in defaults)");
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());

  parley::ServiceHost host("parley-sandbox", server);
  parley::sandbox::v1::SandboxManager::CallbackService sandboxes;
  host.AddService(&sandboxes);
  return host.Run();
}
