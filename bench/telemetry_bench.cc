// telemetry_bench: what tracing costs a turn. parley-store and one parley-session run
// scripted turns (the turns bench's: 16 words, no delay) over `sessions` sessions kept
// busy, in three modes that differ only in the OTEL_* variables both services read:
//
//   off    OTEL_SDK_DISABLED=true
//   on     parentbased_traceidratio 1.0, exported over OTLP/HTTP to a real receiver
//   1pct   parentbased_traceidratio 0.01, likewise
//
// Rounds alternate the modes (the order rotates every round so drift is spread evenly).
// A round starts both services with the mode's environment, warms up, then measures the
// two processes' CPU (utime + stime from /proc/<pid>/stat) over a window and divides by
// the turns sealed in it; between rounds the load drains and the services stop with
// SIGTERM, so nothing carries over. The receiver decodes every export strictly: a
// traced mode that exported no spans, or a body that does not decode, fails the run.
//
//   telemetry_bench --store_binary=build/store-svc/parley-store
//                   --session_binary=build/session-svc/parley-session
//                   --database_url=postgresql://... --redis_url=redis://... --work_dir=/tmp/x
//   ... RESULT name=telemetry cpu_off_ms=... cpu_on_ms=... cpu_1pct_ms=... overhead_pct=...
#include <iostream>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "bench/turn_driver.h"
#include "common/config.h"
#include "tests/telemetry/otlp_receiver.h"

namespace {

using parley::bench::CreateSessions;
using parley::bench::CreateTenant;
using parley::bench::Listener;
using parley::bench::Load;
using parley::bench::ProcessCpu;
using parley::bench::Replica;
using parley::bench::ServiceProcess;
using parley::bench::StoreStub;

constexpr char kTenant[] = "bench";
constexpr absl::Duration kDrainTimeout = absl::Seconds(60);
constexpr absl::Duration kStopGrace = absl::Seconds(15);

struct Options {
  std::string store_binary;
  std::string session_binary;
  std::string database_url;
  std::string redis_url;
  std::string work_dir;
  int64_t sessions = 50;
  int64_t submitters = 8;
  int64_t turn_slots = 32;
  int64_t rounds = 3;
  int64_t words = 16;
  absl::Duration warmup = absl::Seconds(2);
  absl::Duration duration = absl::Seconds(6);
};

struct Mode {
  std::string name;
  std::vector<std::string> env;  // Beyond the OTEL_SERVICE_NAME each service gets.
  // Summed over the mode's rounds.
  absl::Duration store_cpu;
  absl::Duration session_cpu;
  int64_t turns = 0;
  size_t spans = 0;  // Received from its rounds.

  double CpuPerTurnMs() const {
    return turns == 0 ? 0 : absl::ToDoubleMilliseconds(store_cpu + session_cpu) / turns;
  }
};

std::vector<Mode> Modes(const std::string& endpoint) {
  auto traced = [&](const char* ratio) {
    return std::vector<std::string>{"OTEL_SDK_DISABLED=false",
                                    "OTEL_EXPORTER_OTLP_ENDPOINT=" + endpoint,
                                    "OTEL_TRACES_SAMPLER=parentbased_traceidratio",
                                    absl::StrCat("OTEL_TRACES_SAMPLER_ARG=", ratio)};
  };
  // "off" keeps the endpoint set: the switch measured is the SDK's, not a missing URL.
  return {
      {.name = "off", .env = {"OTEL_SDK_DISABLED=true", "OTEL_EXPORTER_OTLP_ENDPOINT=" + endpoint}},
      {.name = "on", .env = traced("1.0")},
      {.name = "1pct", .env = traced("0.01")}};
}

std::vector<std::string> WithServiceName(std::vector<std::string> env, const char* service) {
  env.push_back(absl::StrCat("OTEL_SERVICE_NAME=", service));
  return env;
}

absl::StatusOr<std::unique_ptr<ServiceProcess>> StartStore(const Options& o, const Mode& mode,
                                                           int round) {
  return ServiceProcess::Start(
      "parley-store", o.store_binary,
      {"--grpc_addr=127.0.0.1:0", "--admin_addr=127.0.0.1:0", "--database_url=" + o.database_url,
       "--redis_url=" + o.redis_url, "--persister=true"},
      WithServiceName(mode.env, "parley-store"),
      absl::StrCat(o.work_dir, "/parley-store-", mode.name, "-", round, ".log"));
}

// One round of `mode`: adds its CPU and turns to the mode's totals.
absl::Status RunRound(const Options& o, Mode& mode, int round,
                      const std::vector<std::string>& sessions) {
  auto store = StartStore(o, mode, round);
  if (!store.ok()) return store.status();
  std::vector<std::unique_ptr<Replica>> replicas;
  auto replica = parley::bench::StartReplica(
      {.session_binary = o.session_binary,
       .work_dir = o.work_dir,
       .store_addr = (*store)->target(),
       .redis_url = o.redis_url,
       .turn_slots = o.turn_slots,
       .log_name = absl::StrCat("parley-session-", mode.name, "-", round),
       .env = WithServiceName(mode.env, "parley-session")},
      0);
  if (!replica.ok()) return replica.status();
  replicas.push_back(*std::move(replica));

  auto endpoint = parley::ParseRedisUrl(o.redis_url);
  if (!endpoint.ok()) return endpoint.status();
  const std::string text = absl::StrCat("@words ", o.words, "\n@delay_ms 0");
  std::atomic<bool> refill{true};
  Listener listener(*endpoint, sessions);
  Load load(o.submitters, kTenant, replicas, listener);
  absl::Status started = listener.Start([&](const std::string& session) {
    load.Sealed(session);
    if (refill.load()) load.Enqueue(session, text);
  });
  if (!started.ok()) return started;
  load.Start();
  // Two turns in flight per session: one running, one queued behind it.
  for (const std::string& session : sessions) {
    load.Enqueue(session, text);
    load.Enqueue(session, text);
  }
  absl::SleepFor(o.warmup);

  const pid_t store_pid = (*store)->pid(), session_pid = replicas[0]->pid();
  const absl::Duration store_before = ProcessCpu(store_pid);
  const absl::Duration session_before = ProcessCpu(session_pid);
  const int64_t sealed_before = listener.sealed();
  absl::SleepFor(o.duration);
  const int64_t sealed = listener.sealed() - sealed_before;
  const absl::Duration store_cpu = ProcessCpu(store_pid) - store_before;
  const absl::Duration session_cpu = ProcessCpu(session_pid) - session_before;

  // Drain, so the next round's services find no turn of this one.
  refill = false;
  if (!parley::bench::WaitFor([&] { return load.TotalOutstanding() == 0; }, kDrainTimeout)) {
    return absl::DeadlineExceededError(absl::StrCat(
        mode.name, " round ", round, ": ", load.TotalOutstanding(), " turns never sealed"));
  }
  load.Stop();
  listener.Stop();
  if (absl::Status s = listener.error(); !s.ok()) return s;
  if (load.errors() > 0) {
    return absl::InternalError(absl::StrCat(load.errors(), " SubmitMessage calls failed"));
  }
  // SIGTERM flushes the exporters' queues, so every span of the round reaches the receiver.
  replicas[0]->Stop(kStopGrace);
  (*store)->Stop(kStopGrace);
  if (sealed == 0) return absl::InternalError(absl::StrCat(mode.name, ": no turn sealed"));

  mode.store_cpu += store_cpu;
  mode.session_cpu += session_cpu;
  mode.turns += sealed;
  std::cout << absl::StrFormat(
      "round %d %-4s: %5d turns in %s, %.3f ms CPU per turn (parley-session %.3f, "
      "parley-store %.3f)\n",
      round, mode.name, sealed, absl::FormatDuration(o.duration),
      absl::ToDoubleMilliseconds(store_cpu + session_cpu) / sealed,
      absl::ToDoubleMilliseconds(session_cpu) / sealed,
      absl::ToDoubleMilliseconds(store_cpu) / sealed);
  return absl::OkStatus();
}

absl::Status Run(const Options& o) {
  auto receiver = parley::testing::OtlpReceiver::Start();
  if (!receiver.ok()) return receiver.status();
  std::vector<Mode> modes = Modes((*receiver)->endpoint());

  // The tenant and its sessions live in Postgres: made once, through a first store.
  std::vector<std::string> sessions;
  {
    auto store = StartStore(o, modes[0], -1);
    if (!store.ok()) return store.status();
    std::vector<std::unique_ptr<StoreStub>> stubs;
    for (int i = 0; i < 4; ++i) {
      stubs.push_back(parley::bench::store_pb::StoreService::NewStub(
          parley::bench::Channel((*store)->target(), i + 1)));
    }
    if (absl::Status s = CreateTenant(*stubs[0], kTenant); !s.ok()) return s;
    auto created = CreateSessions(stubs, kTenant, o.sessions);
    if (!created.ok()) return created.status();
    sessions = *std::move(created);
    (*store)->Stop(kStopGrace);
  }

  size_t spans_seen = 0;
  for (int round = 0; round < o.rounds; ++round) {
    for (size_t i = 0; i < modes.size(); ++i) {
      Mode& mode = modes[(i + round) % modes.size()];
      if (absl::Status s = RunRound(o, mode, round, sessions); !s.ok()) return s;
      const size_t spans = (*receiver)->spans().size();
      mode.spans += spans - spans_seen;
      spans_seen = spans;
    }
  }
  if (auto errors = (*receiver)->decode_errors(); !errors.empty()) {
    return absl::InternalError(
        absl::StrCat("the receiver could not decode an export: ", errors.front()));
  }
  for (const Mode& mode : modes) {
    std::cout << absl::StrFormat(
        "%-4s: %d turns, %.3f ms CPU per turn (parley-session %.3f, parley-store %.3f), "
        "%.2f spans exported per turn\n",
        mode.name, mode.turns, mode.CpuPerTurnMs(),
        absl::ToDoubleMilliseconds(mode.session_cpu) / mode.turns,
        absl::ToDoubleMilliseconds(mode.store_cpu) / mode.turns,
        static_cast<double>(mode.spans) / mode.turns);
  }
  const Mode &off = modes[0], &on = modes[1], &pct = modes[2];
  if (off.spans != 0) return absl::InternalError("spans were exported with OTEL_SDK_DISABLED");
  if (on.spans == 0 || pct.spans == 0) {
    return absl::InternalError("a traced mode exported no spans");
  }
  const double overhead = (on.CpuPerTurnMs() / off.CpuPerTurnMs() - 1) * 100;
  std::cout << absl::StrFormat("goal:      100%% sampling <= 3%% more CPU per turn: %s\n",
                               overhead <= 3 ? "met" : "MISSED");
  std::cout << absl::StrFormat(
      "RESULT name=telemetry cpu_off_ms=%.3f cpu_on_ms=%.3f cpu_1pct_ms=%.3f overhead_pct=%.1f "
      "spans_per_turn_on=%.2f spans_per_turn_1pct=%.3f turns_per_mode=%d\n",
      off.CpuPerTurnMs(), on.CpuPerTurnMs(), pct.CpuPerTurnMs(), overhead,
      static_cast<double>(on.spans) / on.turns, static_cast<double>(pct.spans) / pct.turns,
      std::min({off.turns, on.turns, pct.turns}));
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  Options o;
  parley::Flags flags("telemetry_bench",
                      "CPU per turn with tracing off, at 100% and at 1% sampling.");
  flags.String("store_binary", &o.store_binary, "parley-store binary to start",
               parley::ValidateNonEmpty);
  flags.String("session_binary", &o.session_binary, "parley-session binary to start",
               parley::ValidateNonEmpty);
  flags.String("database_url", &o.database_url, "the migrated Postgres database",
               parley::ValidateNonEmpty);
  flags.String("redis_url", &o.redis_url, "the Redis both services use", parley::ValidateRedisUrl);
  flags.String("work_dir", &o.work_dir, "directory for the services' logs",
               parley::ValidateNonEmpty);
  flags.Int("sessions", &o.sessions, "sessions kept busy", 1, 100000);
  flags.Int("submitters", &o.submitters, "concurrent SubmitMessage clients", 1, 256);
  flags.Int("turn_slots", &o.turn_slots, "--turn_slots of parley-session", 1, 1024);
  flags.Int("rounds", &o.rounds, "rounds of each mode", 1, 100);
  flags.Int("words", &o.words, "text deltas of each scripted turn", 1, 100000);
  flags.Duration("warmup", &o.warmup, "load before each measured window");
  flags.Duration("duration", &o.duration, "measured window of each round");
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());
  if (absl::Status s = Run(o); !s.ok()) {
    std::cerr << "telemetry_bench: " << s << "\n";
    return 1;
  }
  return 0;
}
