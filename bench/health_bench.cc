// health_bench: gRPC health-check round trips against a Parley service, and in the same
// run against bare_health_server (plain gRPC: no interceptors, no logging) — the limit
// that Parley's per-call overhead (tracing, metrics, access logs) is measured against.
//
//   health_bench --target=127.0.0.1:7073 --bare_target=127.0.0.1:7999 --duration=5s
//   ... RESULT name=health rps=... p50_us=... p99_us=... bare_rps=... ratio=...
//
// Each of `concurrency` threads issues blocking unary Check calls back to back on its
// own channel; latency is measured per call. The two targets are measured in
// alternating rounds with identical settings.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <iostream>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/config.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace {

struct Measurement {
  std::vector<double> latencies_us;
  int64_t errors = 0;
  double elapsed_s = 0;
};

struct Summary {
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
  Measurement m;
  m.elapsed_s = absl::ToDoubleSeconds(absl::Now() - start);
  for (int t = 0; t < concurrency; ++t) {
    m.latencies_us.insert(m.latencies_us.end(), latencies[t].begin(), latencies[t].end());
    m.errors += errors[t];
  }
  return m;
}

void Accumulate(Measurement& total, const Measurement& round) {
  total.latencies_us.insert(total.latencies_us.end(), round.latencies_us.begin(),
                            round.latencies_us.end());
  total.errors += round.errors;
  total.elapsed_s += round.elapsed_s;
}

Summary Summarize(Measurement m) {
  std::sort(m.latencies_us.begin(), m.latencies_us.end());
  Summary s;
  s.calls = static_cast<int64_t>(m.latencies_us.size());
  s.errors = m.errors;
  s.rps = m.elapsed_s > 0 ? s.calls / m.elapsed_s : 0;
  s.p50_us = Percentile(m.latencies_us, 0.50);
  s.p99_us = Percentile(m.latencies_us, 0.99);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::string target;
  std::string bare_target;
  absl::Duration duration = absl::Seconds(5);
  int64_t concurrency = 4;
  parley::Flags flags("health_bench", "gRPC health-check round trips, service vs bare gRPC.");
  flags.HostPort("target", &target, "the Parley service to measure");
  flags.HostPort("bare_target", &bare_target, "a bare_health_server, the limit");
  flags.Duration("duration", &duration, "how long to measure each target");
  flags.Int("concurrency", &concurrency, "client threads", 1, 256);
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());
  if (target.empty() || bare_target.empty()) {
    std::cerr << "health_bench: --target and --bare_target are required\n";
    return 2;
  }

  // Alternate short rounds so that drift in what else the machine is doing affects both
  // targets alike.
  const int threads = static_cast<int>(concurrency);
  constexpr int kRounds = 5;
  Measure(target, absl::Milliseconds(300), threads);  // Warm-up.
  Measure(bare_target, absl::Milliseconds(300), threads);
  Measurement service_total, limit_total;
  for (int round = 0; round < kRounds; ++round) {
    Accumulate(service_total, Measure(target, duration / kRounds, threads));
    Accumulate(limit_total, Measure(bare_target, duration / kRounds, threads));
  }
  Summary service = Summarize(std::move(service_total));
  Summary limit = Summarize(std::move(limit_total));

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
