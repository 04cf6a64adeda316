// health_bench: gRPC health-check round trips against a Parley service, and in the same
// run against a bare gRPC server in this process (no interceptors, no logging) — the
// limit that Parley's per-call overhead (tracing, metrics, access logs) is measured
// against.
//
//   health_bench --target=127.0.0.1:7073 --duration=5s --concurrency=4
//   ... RESULT name=health rps=... p50_us=... p99_us=... bare_rps=... ratio=...
//
// Each of `concurrency` threads issues blocking unary Check calls back to back on its
// own channel; latency is measured per call. The two targets are measured one after
// the other with identical settings.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <iostream>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/config.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"

namespace {

struct Measurement {
  int64_t calls = 0;
  int64_t errors = 0;
  double rps = 0;
  double p50_us = 0;
  double p99_us = 0;
};

double Percentile(std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t index = std::min(sorted.size() - 1, static_cast<size_t>(q * sorted.size()));
  return sorted[index];
}

Measurement Measure(const std::string& target, absl::Duration duration, int concurrency) {
  std::vector<std::vector<double>> latencies(concurrency);
  std::vector<int64_t> errors(concurrency, 0);
  std::vector<std::thread> threads;
  const absl::Time start = absl::Now();
  const absl::Time stop = start + duration;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&, t] {
      grpc::ChannelArguments args;
      args.SetInt("grpc.channel_id", t);  // A connection per thread.
      auto stub = grpc::health::v1::Health::NewStub(
          grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
      grpc::health::v1::HealthCheckRequest request;
      grpc::health::v1::HealthCheckResponse response;
      while (absl::Now() < stop) {
        grpc::ClientContext context;
        context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
        absl::Time before = absl::Now();
        grpc::Status status = stub->Check(&context, request, &response);
        double us = absl::ToDoubleMicroseconds(absl::Now() - before);
        if (status.ok()) {
          latencies[t].push_back(us);
        } else {
          ++errors[t];
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  double elapsed_s = absl::ToDoubleSeconds(absl::Now() - start);
  std::vector<double> all;
  Measurement m;
  for (int t = 0; t < concurrency; ++t) {
    all.insert(all.end(), latencies[t].begin(), latencies[t].end());
    m.errors += errors[t];
  }
  std::sort(all.begin(), all.end());
  m.calls = static_cast<int64_t>(all.size());
  m.rps = m.calls / elapsed_s;
  m.p50_us = Percentile(all, 0.50);
  m.p99_us = Percentile(all, 0.99);
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  std::string target;
  absl::Duration duration = absl::Seconds(5);
  int64_t concurrency = 4;
  parley::Flags flags("health_bench", "gRPC health-check round trips, service vs bare gRPC.");
  flags.HostPort("target", &target, "the Parley service to measure");
  flags.Duration("duration", &duration, "how long to measure each target");
  flags.Int("concurrency", &concurrency, "client threads", 1, 256);
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());
  if (target.empty()) {
    std::cerr << "health_bench: --target is required\n";
    return 2;
  }

  grpc::EnableDefaultHealthCheckService(true);
  int bare_port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &bare_port);
  // Any callback service makes the builder poll; the default health service answers.
  grpc::reflection::v1alpha::ServerReflection::CallbackService placeholder;
  builder.RegisterService(&placeholder);
  std::unique_ptr<grpc::Server> bare = builder.BuildAndStart();
  if (!bare) {
    std::cerr << "health_bench: cannot start the bare server\n";
    return 1;
  }

  Measure(target, absl::Milliseconds(500), static_cast<int>(concurrency));  // Warm-up.
  Measurement service = Measure(target, duration, static_cast<int>(concurrency));
  Measurement limit = Measure("127.0.0.1:" + std::to_string(bare_port), duration,
                              static_cast<int>(concurrency));
  bare->Shutdown();

  std::cout << absl::StrFormat(
      "service: %d calls, %d errors, %.0f/s, p50 %.0f us, p99 %.0f us\n"
      "bare:    %d calls, %d errors, %.0f/s, p50 %.0f us, p99 %.0f us\n",
      service.calls, service.errors, service.rps, service.p50_us, service.p99_us, limit.calls,
      limit.errors, limit.rps, limit.p50_us, limit.p99_us);
  std::cout << absl::StrFormat(
      "RESULT name=health concurrency=%d calls=%d errors=%d rps=%.0f p50_us=%.0f p99_us=%.0f "
      "bare_rps=%.0f bare_p50_us=%.0f bare_p99_us=%.0f ratio=%.3f\n",
      concurrency, service.calls, service.errors, service.rps, service.p50_us, service.p99_us,
      limit.rps, limit.p50_us, limit.p99_us, limit.rps > 0 ? service.rps / limit.rps : 0.0);
  return service.errors == 0 && service.calls > 0 ? 0 : 1;
}
