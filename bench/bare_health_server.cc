// bare_health_server: gRPC's built-in health service and nothing else — no
// interceptors, logs or metrics. The reference that health_bench compares a Parley
// service against, run as its own process so both sides pay the same process and
// loopback costs.
//
//   bare_health_server --grpc_addr=127.0.0.1:0    (prints "port N", serves until SIGTERM)
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <iostream>

#include "common/config.h"
#include "parley/router/v1/router.grpc.pb.h"

int main(int argc, char** argv) {
  std::string grpc_addr = "127.0.0.1:0";
  parley::Flags flags("bare_health_server", "A bare gRPC health server.");
  flags.HostPort("grpc_addr", &grpc_addr, "listen address");
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  grpc::EnableDefaultHealthCheckService(true);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(grpc_addr, grpc::InsecureServerCredentials(), &port);
  // Any callback service makes the builder poll; the default health service answers.
  parley::router::v1::SessionRouter::CallbackService placeholder;
  builder.RegisterService(&placeholder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    std::cerr << "bare_health_server: cannot listen on " << grpc_addr << "\n";
    return 1;
  }
  std::cout << "port " << port << std::endl;
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  server->Shutdown();
  return 0;
}
