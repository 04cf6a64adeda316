// gateway_bench: what the gateway adds to a call, and how soon a sent message streams.
//
// (a) Unary overhead. GetSession at a fixed rate, open loop (each call is due at its
//     slot and its latency counts from that slot, so a stall is not hidden by sending
//     less), alternately straight to store-svc (store.v1 GetSession with the tenant) and
//     through the gateway (parley.v1 GetSession with a tenant's API key, which the
//     gateway authenticates, rate-checks and forwards to the same store-svc). The rounds
//     alternate so both see the same machine; added_p99_ms = gateway p99 - direct p99.
// (b) SendMessage -> first text delta. One StreamEvents subscriber on the session,
//     through the gateway; each sample sends a message (the scripted model answers with
//     a short streamed reply) and times from the send to the first TextDelta the
//     subscriber receives, then waits for the turn to seal before the next.
//
// Both unary paths also report the CPU each process spent per call (the bench itself,
// store-svc, Postgres with its backends, the gateway, Redis: on a 2-core box the load
// generator is part of the load), and the highest rate each path sustains (a short
// search of 1 s probes: no failures, the offered rate achieved, p99 <= --sustain_p99).
//
//   gateway_bench --gateway_addr=... --store_addr=... --api_key=... --tenant=...
//       [--store_pid=... --postgres_pid=... --gateway_pid=... --redis_pid=...]
//   ... RESULT name=gateway rps=5000 direct_p99_ms=... gateway_p99_ms=... added_p99_ms=...
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "common/config.h"
#include "common/proto_time.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "parley/v1/parley.grpc.pb.h"

namespace parley::bench {
namespace {

struct Config {
  std::string gateway_addr;
  std::string store_addr;
  std::string api_key;
  std::string tenant;
  int64_t rate = 5000;
  absl::Duration round = absl::Seconds(2);
  int64_t rounds = 3;
  int64_t samples = 200;
  // Processes whose CPU per call is reported; 0 = not measured. The postgres pid is the
  // postmaster's: its backends are counted with it.
  int64_t store_pid = 0, postgres_pid = 0, gateway_pid = 0, redis_pid = 0;
  int64_t search_steps = 6;  // Probes per path of the max-rate search; 0 = no search.
  absl::Duration sustain_p99 = absl::Milliseconds(5);  // The max-rate search's bound.
};

// CPU spent by each measured process over a window, per call made in it.
class CpuMeter {
 public:
  explicit CpuMeter(const Config& config) {
    processes_ = {{"bench", getpid(), false},
                  {"store", config.store_pid, false},
                  {"postgres", config.postgres_pid, true},
                  {"gateway", config.gateway_pid, false},
                  {"redis", config.redis_pid, false}};
    std::erase_if(processes_, [](const Process& p) { return p.pid <= 0; });
  }

  std::vector<absl::Duration> Sample() const {
    std::vector<absl::Duration> cpu;
    for (const Process& p : processes_) {
      cpu.push_back(p.tree ? ProcessTreeCpu(p.pid) : ProcessCpu(p.pid));
    }
    return cpu;
  }

  // "bench 41.2 store 80.3 ..." microseconds per call between two samples.
  std::string PerCall(const std::vector<absl::Duration>& before,
                      const std::vector<absl::Duration>& after, int64_t calls) const {
    std::string out;
    for (size_t i = 0; i < processes_.size(); ++i) {
      absl::StrAppendFormat(&out, "%s%s %.1f", out.empty() ? "" : "  ", processes_[i].name,
                            absl::ToDoubleMicroseconds(after[i] - before[i]) /
                                static_cast<double>(std::max<int64_t>(calls, 1)));
    }
    return out;
  }

  // The total over every measured process, in microseconds per call.
  static double TotalPerCall(const std::vector<absl::Duration>& before,
                             const std::vector<absl::Duration>& after, int64_t calls) {
    absl::Duration total;
    for (size_t i = 0; i < before.size(); ++i) total += after[i] - before[i];
    return absl::ToDoubleMicroseconds(total) / static_cast<double>(std::max<int64_t>(calls, 1));
  }

 private:
  struct Process {
    const char* name;
    int64_t pid;
    bool tree;
  };
  std::vector<Process> processes_;
};

// One side of the unary comparison: starts one GetSession and runs `done` when it ends.
using StartCall = std::function<void(std::function<void(bool ok)> done)>;

struct Round {
  std::vector<double> latencies_ms;
  int64_t failures = 0;
  double achieved_rps = 0;
  int64_t calls = 0;
};

// Sends `rate` calls per second for `duration`, open loop: call i is due at start + i /
// rate and its latency is measured from then.
Round RunPaced(const StartCall& start_call, int64_t rate, absl::Duration duration) {
  const int64_t total = static_cast<int64_t>(absl::ToDoubleSeconds(duration) * rate);
  const absl::Duration interval = absl::Seconds(1) / rate;
  std::vector<double> latencies(total, -1);
  std::atomic<int64_t> finished{0};
  std::atomic<int64_t> failures{0};
  absl::Notification all_done;
  const absl::Time begin = absl::Now() + absl::Milliseconds(10);
  for (int64_t i = 0; i < total; ++i) {
    const absl::Time due = begin + i * interval;
    const absl::Time now = absl::Now();
    if (due > now) absl::SleepFor(due - now);
    start_call([&, i, due](bool ok) {
      latencies[i] = absl::ToDoubleMilliseconds(absl::Now() - due);
      if (!ok) failures.fetch_add(1);
      if (finished.fetch_add(1) + 1 == total) all_done.Notify();
    });
  }
  const absl::Duration sending = absl::Now() - begin;
  all_done.WaitForNotificationWithTimeout(absl::Seconds(60));
  Round round;
  for (double latency : latencies) {
    if (latency >= 0) round.latencies_ms.push_back(latency);
  }
  round.failures = failures.load() + (total - finished.load());
  round.achieved_rps = total / absl::ToDoubleSeconds(sending);
  round.calls = total;
  return round;
}

// Whether a round kept up: nothing failed, the offered rate went out, and its p99 stayed
// within `p99_bound_ms`.
bool Sustained(const Round& round, int64_t rate, double p99_bound_ms) {
  return round.failures == 0 && round.achieved_rps >= 0.97 * static_cast<double>(rate) &&
         Percentile(round.latencies_ms, 0.99) <= p99_bound_ms;
}

// The highest rate seen sustained in `steps` probes of 1 s: doubling from `rate` while
// sustained (halving while not), then bisecting between the best sustained and the
// lowest failed rate. 0 when no probe was sustained.
int64_t MaxSustainedRate(const char* label, const StartCall& start_call, int64_t rate,
                         int64_t steps, double p99_bound_ms) {
  int64_t good = 0, bad = 0;
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t probe = bad == 0    ? (good == 0 ? rate : 2 * good)
                          : good == 0 ? bad / 2
                                      : (good + bad) / 2;
    if (probe < 1 || (good > 0 && bad > 0 && bad - good <= good / 50)) break;
    const Round round = RunPaced(start_call, probe, absl::Seconds(1));
    const bool sustained = Sustained(round, probe, p99_bound_ms);
    std::fprintf(stderr, "max-rate %-7s %6lld/s: p99 %.3f ms, %.0f rps, %lld failed -> %s\n", label,
                 static_cast<long long>(probe), Percentile(round.latencies_ms, 0.99),
                 round.achieved_rps, static_cast<long long>(round.failures),
                 sustained ? "sustained" : "not sustained");
    (sustained ? good : bad) = probe;
    absl::SleepFor(absl::Milliseconds(300));  // Let a backlog's aftermath settle.
  }
  return good;
}

template <typename Stub, typename Request, typename Response>
StartCall UnaryCaller(Stub* stub, Request request, std::string key,
                      void (Stub::async_interface::*method)(grpc::ClientContext*, const Request*,
                                                            Response*,
                                                            std::function<void(grpc::Status)>)) {
  return [stub, request = std::move(request), key = std::move(key),
          method](std::function<void(bool)> done) {
    struct Call {
      grpc::ClientContext context;
      Request request;
      Response response;
    };
    auto* call = new Call;
    call->request = request;
    if (!key.empty()) call->context.AddMetadata("authorization", "Bearer " + key);
    call->context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    (stub->async()->*method)(&call->context, &call->request, &call->response,
                             [call, done = std::move(done)](grpc::Status status) {
                               done(status.ok());
                               delete call;
                             });
  };
}

// A StreamEvents subscriber that reports when the first TextDelta after Arm() arrives
// and when the turn it belongs to seals.
class DeltaWatcher {
 public:
  DeltaWatcher(v1::SessionService::Stub& stub, const std::string& key, const std::string& session) {
    context_.AddMetadata("authorization", "Bearer " + key);
    v1::StreamEventsRequest request;
    request.set_session_id(session);
    request.set_from_latest(true);
    reader_ = stub.StreamEvents(&context_, request);
    thread_ = std::thread([this] { Read(); });
  }
  ~DeltaWatcher() {
    context_.TryCancel();
    thread_.join();
  }

  void Arm(absl::Time sent) {
    absl::MutexLock lock(&mu_);
    sent_ = sent;
    first_delta_.reset();
    sealed_ = false;
  }

  // Where the time to a first delta went, from the events' server timestamps (one
  // machine, one clock): send -> TurnStarted (enqueue, wake, claim, lease), TurnStarted
  // -> the delta's publish (the runner's start and the model's first word), publish ->
  // received (the fan-out).
  struct Phases {
    absl::Duration to_started, to_published, to_received;
  };

  // Waits for the armed turn's seal; the send-to-first-delta time, if a delta came.
  std::optional<absl::Duration> WaitForSeal(absl::Duration timeout, Phases* phases) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&sealed_), timeout);
    if (!sealed_ || !first_delta_) return std::nullopt;
    *phases = {started_time_ - sent_, delta_time_ - started_time_, *first_delta_ - delta_time_};
    return *first_delta_ - sent_;
  }

 private:
  void Read() {
    v1::StreamEventsResponse response;
    while (reader_->Read(&response)) {
      if (!response.has_event()) continue;
      const v1::Event& event = response.event();
      const absl::Time now = absl::Now();
      absl::MutexLock lock(&mu_);
      const absl::Time stamped = parley::FromTimestamp(event.time());
      if (event.has_turn_started()) started_time_ = stamped;
      if (event.has_text_delta() && !first_delta_ && sent_ != absl::InfinitePast()) {
        first_delta_ = now;
        delta_time_ = stamped;
      }
      if (event.has_turn_sealed() && first_delta_) sealed_ = true;
    }
    (void)reader_->Finish();
  }

  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::StreamEventsResponse>> reader_;
  std::thread thread_;
  absl::Mutex mu_;
  absl::Time sent_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::optional<absl::Time> first_delta_ ABSL_GUARDED_BY(mu_);
  absl::Time started_time_ ABSL_GUARDED_BY(mu_);  // The TurnStarted event's stamp.
  absl::Time delta_time_ ABSL_GUARDED_BY(mu_);    // The first TextDelta's stamp.
  bool sealed_ ABSL_GUARDED_BY(mu_) = false;
};

int Main(const Config& config) {
  auto gateway_channel =
      grpc::CreateChannel(config.gateway_addr, grpc::InsecureChannelCredentials());
  auto store_channel = grpc::CreateChannel(config.store_addr, grpc::InsecureChannelCredentials());
  auto sessions = v1::SessionService::NewStub(gateway_channel);
  auto store = store::v1::StoreService::NewStub(store_channel);

  // The session both sides read, made through the gateway.
  std::string session;
  {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + config.api_key);
    v1::CreateSessionRequest request;
    request.set_title("gateway bench");
    v1::CreateSessionResponse response;
    grpc::Status status = sessions->CreateSession(&context, request, &response);
    if (!status.ok()) {
      std::fprintf(stderr, "CreateSession failed: %s\n", status.error_message().c_str());
      return 1;
    }
    session = response.session().id();
  }

  store::v1::GetSessionRequest direct_request;
  direct_request.set_tenant_id(config.tenant);
  direct_request.set_session_id(session);
  StartCall direct = UnaryCaller(store.get(), direct_request, "",
                                 &store::v1::StoreService::Stub::async_interface::GetSession);
  v1::GetSessionRequest public_request;
  public_request.set_session_id(session);
  StartCall through_gateway = UnaryCaller(sessions.get(), public_request, config.api_key,
                                          &v1::SessionService::Stub::async_interface::GetSession);

  // A warm-up round of each (connections, caches, the key), then alternating rounds.
  RunPaced(direct, config.rate, absl::Seconds(1));
  RunPaced(through_gateway, config.rate, absl::Seconds(1));
  const CpuMeter meter(config);
  Round direct_all, gateway_all;
  double direct_rps = 0, gateway_rps = 0;
  std::vector<absl::Duration> direct_cpu(meter.Sample().size()), gateway_cpu = direct_cpu;
  for (int64_t r = 0; r < config.rounds; ++r) {
    for (bool via_gateway : {false, true}) {
      const std::vector<absl::Duration> before = meter.Sample();
      Round round = RunPaced(via_gateway ? through_gateway : direct, config.rate, config.round);
      const std::vector<absl::Duration> after = meter.Sample();
      std::vector<absl::Duration>& cpu = via_gateway ? gateway_cpu : direct_cpu;
      for (size_t i = 0; i < cpu.size(); ++i) cpu[i] += after[i] - before[i];
      Round& all = via_gateway ? gateway_all : direct_all;
      all.latencies_ms.insert(all.latencies_ms.end(), round.latencies_ms.begin(),
                              round.latencies_ms.end());
      all.failures += round.failures;
      all.calls += round.calls;
      (via_gateway ? gateway_rps : direct_rps) += round.achieved_rps / config.rounds;
      std::fprintf(stderr,
                   "round %lld %-7s p50 %.3f ms  p99 %.3f ms  failures %lld  %.0f rps  "
                   "cpu us/call: %s\n",
                   static_cast<long long>(r), via_gateway ? "gateway" : "direct",
                   Percentile(round.latencies_ms, 0.5), Percentile(round.latencies_ms, 0.99),
                   static_cast<long long>(round.failures), round.achieved_rps,
                   meter.PerCall(before, after, round.calls).c_str());
    }
  }
  const std::vector<absl::Duration> zero(direct_cpu.size());
  const double direct_cpu_us = CpuMeter::TotalPerCall(zero, direct_cpu, direct_all.calls);
  const double gateway_cpu_us = CpuMeter::TotalPerCall(zero, gateway_cpu, gateway_all.calls);
  const int64_t direct_max_rps =
      MaxSustainedRate("direct", direct, config.rate, config.search_steps,
                       absl::ToDoubleMilliseconds(config.sustain_p99));
  const int64_t gateway_max_rps =
      MaxSustainedRate("gateway", through_gateway, config.rate, config.search_steps,
                       absl::ToDoubleMilliseconds(config.sustain_p99));
  const double direct_p50 = Percentile(direct_all.latencies_ms, 0.5);
  const double direct_p99 = Percentile(direct_all.latencies_ms, 0.99);
  const double gateway_p50 = Percentile(gateway_all.latencies_ms, 0.5);
  const double gateway_p99 = Percentile(gateway_all.latencies_ms, 0.99);

  // (b) SendMessage -> first TextDelta at a subscriber.
  std::vector<double> first_delta_ms, to_ack_ms, to_started_ms, to_published_ms, to_received_ms;
  int64_t lost = 0;
  {
    DeltaWatcher watcher(*sessions, config.api_key, session);
    absl::SleepFor(absl::Milliseconds(500));  // Let the stream go live before the first send.
    for (int64_t i = 0; i < config.samples + 5; ++i) {
      v1::SendMessageRequest request;
      request.set_session_id(session);
      request.add_content()->set_text("Say hello.");
      grpc::ClientContext context;
      context.AddMetadata("authorization", "Bearer " + config.api_key);
      v1::SendMessageResponse response;
      const absl::Time sent = absl::Now();
      watcher.Arm(sent);
      grpc::Status status = sessions->SendMessage(&context, request, &response);
      const absl::Duration ack = absl::Now() - sent;
      DeltaWatcher::Phases phases;
      std::optional<absl::Duration> latency =
          status.ok() ? watcher.WaitForSeal(absl::Seconds(30), &phases) : std::nullopt;
      if (!latency) {
        ++lost;
        if (!status.ok()) {
          std::fprintf(stderr, "SendMessage failed: %s\n", status.error_message().c_str());
        }
        continue;
      }
      if (i < 5) continue;
      first_delta_ms.push_back(absl::ToDoubleMilliseconds(*latency));
      to_ack_ms.push_back(absl::ToDoubleMilliseconds(ack));
      to_started_ms.push_back(absl::ToDoubleMilliseconds(phases.to_started));
      to_published_ms.push_back(absl::ToDoubleMilliseconds(phases.to_published));
      to_received_ms.push_back(absl::ToDoubleMilliseconds(phases.to_received));
    }
  }
  const double delta_p50 = Percentile(first_delta_ms, 0.5);
  const double delta_p99 = Percentile(first_delta_ms, 0.99);

  std::printf("direct to store-svc: p50 %.3f ms, p99 %.3f ms at %.0f rps (%lld failed)\n",
              direct_p50, direct_p99, direct_rps, static_cast<long long>(direct_all.failures));
  std::printf("through the gateway: p50 %.3f ms, p99 %.3f ms at %.0f rps (%lld failed)\n",
              gateway_p50, gateway_p99, gateway_rps, static_cast<long long>(gateway_all.failures));
  std::printf("added p99: %.3f ms (goal <= 1 ms at 5,000 rps)\n", gateway_p99 - direct_p99);
  std::printf(
      "CPU per call, us (all rounds): direct: %s\n                               gateway: %s\n",
      meter.PerCall(zero, direct_cpu, direct_all.calls).c_str(),
      meter.PerCall(zero, gateway_cpu, gateway_all.calls).c_str());
  std::printf(
      "highest rate sustained (p99 <= %.1f ms, 1 s probes): direct %lld/s, gateway %lld/s\n",
      absl::ToDoubleMilliseconds(config.sustain_p99), static_cast<long long>(direct_max_rps),
      static_cast<long long>(gateway_max_rps));
  std::printf(
      "SendMessage -> first delta: p50 %.3f ms, p99 %.3f ms over %zu turns, %lld lost "
      "(goals p50 <= 3 ms, p99 <= 15 ms)\n",
      delta_p50, delta_p99, first_delta_ms.size(), static_cast<long long>(lost));
  std::printf(
      "  p50 by phase: send -> answered %.3f ms; send -> TurnStarted %.3f ms, -> delta "
      "published %.3f ms, -> received %.3f ms\n",
      Percentile(to_ack_ms, 0.5), Percentile(to_started_ms, 0.5), Percentile(to_published_ms, 0.5),
      Percentile(to_received_ms, 0.5));
  std::printf(
      "RESULT name=gateway rps=%lld direct_p50_ms=%.3f direct_p99_ms=%.3f gateway_p50_ms=%.3f "
      "gateway_p99_ms=%.3f added_p99_ms=%.3f first_delta_p50_ms=%.3f first_delta_p99_ms=%.3f "
      "direct_max_rps=%lld gateway_max_rps=%lld direct_cpu_us=%.1f gateway_cpu_us=%.1f "
      "failures=%lld\n",
      static_cast<long long>(config.rate), direct_p50, direct_p99, gateway_p50, gateway_p99,
      gateway_p99 - direct_p99, delta_p50, delta_p99, static_cast<long long>(direct_max_rps),
      static_cast<long long>(gateway_max_rps), direct_cpu_us, gateway_cpu_us,
      static_cast<long long>(direct_all.failures + gateway_all.failures + lost));
  return 0;
}

}  // namespace
}  // namespace parley::bench

int main(int argc, char** argv) {
  parley::bench::Config config;
  parley::Flags flags("gateway_bench",
                      "What the gateway adds to a unary call, and how soon a "
                      "sent message's first delta reaches a subscriber.");
  flags.HostPort("gateway_addr", &config.gateway_addr, "parley-gateway");
  flags.HostPort("store_addr", &config.store_addr, "parley-store (the direct path)");
  flags.String("api_key", &config.api_key, "a tenant's key with sessions:read and :write");
  flags.String("tenant", &config.tenant, "that key's tenant");
  flags.Int("rate", &config.rate, "GetSession calls per second", 1, 100000);
  flags.Duration("round", &config.round, "length of each measured round");
  flags.Int("rounds", &config.rounds, "rounds of each path, alternating", 1, 100);
  flags.Int("samples", &config.samples, "SendMessage samples", 1, 100000);
  flags.Int("store_pid", &config.store_pid, "parley-store's pid, for CPU per call (0: none)", 0,
            1 << 30);
  flags.Int("postgres_pid", &config.postgres_pid,
            "the postmaster's pid, for CPU per call with its backends (0: none)", 0, 1 << 30);
  flags.Int("gateway_pid", &config.gateway_pid, "parley-gateway's pid (0: none)", 0, 1 << 30);
  flags.Int("redis_pid", &config.redis_pid, "redis-server's pid (0: none)", 0, 1 << 30);
  flags.Int("search_steps", &config.search_steps,
            "1 s probes per path in the highest-sustained-rate search (0: no search)", 0, 20);
  flags.Duration("sustain_p99", &config.sustain_p99,
                 "the p99 a rate must keep to count as sustained in that search");
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());
  return parley::bench::Main(config);
}
