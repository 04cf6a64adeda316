// parley: the command-line client of a Parley gateway (and health checks of any
// Parley service). `parley help` lists the commands; cli/cli.h has the exit statuses.
#include <grpcpp/grpcpp.h>

#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cli/cli.h"
#include "cli/commands.h"
#include "common/clock.h"
#include "common/config.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace {

constexpr char kUsage[] =
    "usage: parley <command> [flags]\n"
    "\n"
    "  sessions create|list|get|update|close   manage sessions\n"
    "  send SESSION TEXT [--follow]            send a message (and stream the turn)\n"
    "  watch SESSION... [--after N|--from-latest] stream sessions' events, resuming by\n"
    "                                          itself (several share one Subscribe stream)\n"
    "  turns list|get|cancel SESSION [TURN]    a session's turns\n"
    "  messages SESSION                        a session's stored messages\n"
    "  exec SESSION -- CMD [ARG...]            run a command in the session's sandbox\n"
    "  files put|get|ls SESSION ...            files in the session's sandbox\n"
    "  keys create|list|revoke                 your tenant's API keys\n"
    "  admin tenants create|list|get|disable|enable\n"
    "  admin keys create|list|revoke --tenant T   (operator key)\n"
    "  health [ADDR]                           a service's gRPC health (exit 0 when SERVING)\n"
    "  version                                 print the version\n"
    "\n"
    "The gateway and key come from --addr and --api_key, or PARLEY_ADDR and PARLEY_API_KEY\n"
    "(`eval \"$(scripts/dev env)\"` sets both for the local stack). --json prints one JSON\n"
    "object per line. Exit status: 0 ok, 1 failed, 2 usage, 3 auth, 4 not found,\n"
    "5 unavailable, 6 conflict. Run 'parley <command> --help' for its flags.\n";

std::string StatusName(grpc::health::v1::HealthCheckResponse::ServingStatus status) {
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(status);
}

int Health(int argc, char** argv) {
  std::string addr = parley::cli::Options{}.addr;  // The gateway, as every command's.
  std::string service;
  absl::Duration wait = absl::ZeroDuration();
  absl::Duration timeout = absl::Seconds(2);
  parley::Flags flags("parley health",
                      "Checks the gRPC health of the service at ADDR (default: --addr, which is "
                      "the gateway).");
  flags.HostPort("addr", &addr, "the service's address when ADDR is not given");
  flags.String("service", &service, "service name to check (empty: the whole server)");
  flags.Duration("wait", &wait, "keep trying until SERVING or this much time has passed");
  flags.Duration("timeout", &timeout, "deadline of each check");
  std::vector<std::string> args = parley::ParseFlagsOrExit(
      flags, argc, argv, parley::ProcessEnvironment(), /*allow_positional=*/true);
  if (args.size() > 1 || (args.size() == 1 && !parley::ValidateHostPort(args[0]).ok())) {
    std::cerr << "parley health: expected at most one argument, the service address host:port\n";
    return 2;
  }
  if (args.size() == 1) addr = args[0];
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
  const absl::Time give_up = absl::Now() + wait;
  std::string last = "UNREACHABLE";
  do {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    grpc::Status status = stub->Check(&context, request, &response);
    if (status.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
      std::cout << "SERVING\n";
      return 0;
    }
    last = status.ok() ? StatusName(response.status())
                       : "UNREACHABLE (" + status.error_message() + ")";
    if (absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(100));
  } while (absl::Now() < give_up);
  std::cout << last << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  absl::string_view command = argv[1];
  const parley::cli::Invocation call{absl::StrCat("parley ", command), argc - 1, argv + 1};
  if (command == "health") return Health(argc - 1, argv + 1);
  if (command == "sessions") return parley::cli::SessionsCommand(call);
  if (command == "send") return parley::cli::SendCommand(call);
  if (command == "watch") return parley::cli::WatchCommand(call);
  if (command == "turns") return parley::cli::TurnsCommand(call);
  if (command == "messages") return parley::cli::MessagesCommand(call);
  if (command == "keys") return parley::cli::KeysCommand(call);
  if (command == "exec") return parley::cli::ExecCommand(call);
  if (command == "files") return parley::cli::FilesCommand(call);
  if (command == "admin") return parley::cli::AdminCommand(call);
  if (command == "version") {
    std::cout << "parley " << PARLEY_VERSION << "\n";
    return 0;
  }
  if (command == "--help" || command == "-h" || command == "help") {
    std::cout << kUsage;
    return 0;
  }
  std::cerr << "parley: unknown command \"" << command << "\"\n" << kUsage;
  return 2;
}
