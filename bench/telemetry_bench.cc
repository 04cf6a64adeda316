// telemetry_bench: what tracing costs a turn. Three stacks run side by side, each a
// parley-store and a parley-session with a database and Redis key prefix of their own,
// differing only in the OTEL_* variables both services read:
//
//   off    OTEL_SDK_DISABLED=true
//   on     parentbased_traceidratio 1.0, exported over OTLP/HTTP to a real receiver
//   1pct   parentbased_traceidratio 0.01, likewise
//
// Each stack runs scripted turns (the turns bench's: 16 words, no delay) at the same
// fixed rate over `sessions` sessions of its own (new ones every round). A round starts
// the three stacks, warms up, then measures every process's CPU (utime + stime from
// /proc/<pid>/stat) over one shared window and divides each stack's by the turns it
// sealed in it; then the load drains and the services stop with SIGTERM, so nothing
// carries over. The receiver decodes every export strictly: a traced mode that exported
// no spans, or a body that does not decode, fails the run.
//
// Why side by side and at a fixed rate: run one after the other, a mode's CPU per turn
// moved by 5-15% from one round to the next on this machine (with the turn rate, the
// age of the sessions, and whatever else the host was doing), several times the few
// percent this bench looks for. Stacks that share the window share those disturbances,
// so one round's on/off ratio holds the tracing cost and little else.
//
// Two figures: overhead_pct from each mode's CPU and turns summed over all rounds (the
// goal's), and the median (nearest rank, bench_util's Percentile) over rounds of each
// round's on/off ratio.
//
//   telemetry_bench --store_binary=build/store-svc/parley-store
//                   --session_binary=build/session-svc/parley-session
//                   --database_urls=postgresql://.../off,postgresql://.../on,postgresql://.../1pct
//                   --redis_url=redis://... --work_dir=/tmp/x
//   ... RESULT name=telemetry cpu_off_ms=... cpu_on_ms=... cpu_1pct_ms=... overhead_pct=...
#include <algorithm>
#include <deque>
#include <functional>
#include <iostream>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
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
using parley::bench::Percentile;
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
  std::string database_urls;  // One per mode, comma-separated: off, on, 1pct.
  std::string redis_url;
  std::string work_dir;
  int64_t sessions = 50;
  int64_t submitters = 8;
  int64_t turn_slots = 32;
  int64_t turn_rate = 40;  // Per stack.
  int64_t rounds = 10;
  int64_t words = 16;
  absl::Duration warmup = absl::Seconds(2);
  absl::Duration duration = absl::Seconds(8);
};

struct Mode {
  std::string name;
  std::vector<std::string> env;  // Beyond the OTEL_SERVICE_NAME each service gets.
  std::string database_url;
  std::string key_prefix() const { return absl::StrCat("tb-", name, ":"); }
  // Summed over the mode's rounds.
  absl::Duration store_cpu;
  absl::Duration session_cpu;
  int64_t turns = 0;        // Sealed in the measured windows.
  int64_t round_turns = 0;  // Sealed in whole rounds (warm-up and drain too), as spans are.
  size_t spans = 0;         // Received from its rounds.

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

// The mode's environment for `service`; the resource attribute tells the receiver which
// stack a span came from.
std::vector<std::string> ServiceEnv(const Mode& mode, const char* service) {
  std::vector<std::string> env = mode.env;
  env.push_back(absl::StrCat("OTEL_SERVICE_NAME=", service));
  env.push_back(absl::StrCat("OTEL_RESOURCE_ATTRIBUTES=parley.bench.mode=", mode.name));
  env.push_back(absl::StrCat("PARLEY_REDIS_KEY_PREFIX=", mode.key_prefix()));
  return env;
}

absl::StatusOr<std::unique_ptr<ServiceProcess>> StartStore(const Options& o, const Mode& mode,
                                                           int round) {
  return ServiceProcess::Start(
      "parley-store", o.store_binary,
      {"--grpc_addr=127.0.0.1:0", "--admin_addr=127.0.0.1:0", "--database_url=" + mode.database_url,
       "--redis_url=" + o.redis_url, "--persister=true"},
      ServiceEnv(mode, "parley-store"),
      absl::StrCat(o.work_dir, "/parley-store-", mode.name, "-", round, ".log"));
}

// Hands sessions whose last turn sealed back to the load at a fixed rate, so every
// stack runs the same number of turns per second. Closed-loop load (a new turn as soon
// as one sealed) ran 100 to 170 turns/s from round to round on this machine, and CPU
// per turn followed the rate (4.7 ms at 170/s, 6.7 ms at 100/s).
class Pacer {
 public:
  Pacer(int64_t per_second, std::function<void(const std::string&)> submit)
      : interval_(absl::Seconds(1) / per_second), submit_(std::move(submit)) {}
  ~Pacer() { Stop(); }

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    if (thread_.joinable()) thread_.join();
  }
  // `session` may take its next turn.
  void Ready(const std::string& session) {
    absl::MutexLock lock(&mu_);
    ready_.push_back(session);
  }

 private:
  void Run() {
    absl::Time next = absl::Now();
    while (true) {
      std::string session;
      {
        absl::MutexLock lock(&mu_);
        auto due = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !ready_.empty(); };
        mu_.Await(absl::Condition(&due));
        if (stop_) return;
        session = std::move(ready_.front());
        ready_.pop_front();
      }
      // Turns owed while no session was ready are not made up in a burst.
      next = std::max(next, absl::Now() - interval_);
      absl::SleepFor(next - absl::Now());
      next += interval_;
      submit_(session);
    }
  }

  const absl::Duration interval_;
  const std::function<void(const std::string&)> submit_;
  absl::Mutex mu_;
  std::deque<std::string> ready_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// `count` new sessions of the bench's tenant, made through the store at `target`.
absl::StatusOr<std::vector<std::string>> NewSessions(const std::string& target, int64_t count) {
  std::vector<std::unique_ptr<StoreStub>> stubs;
  for (int i = 0; i < 4; ++i) {
    stubs.push_back(
        parley::bench::store_pb::StoreService::NewStub(parley::bench::Channel(target, i + 1)));
  }
  return CreateSessions(stubs, kTenant, count);
}

// One mode's services and load in a round.
struct Stack {
  Mode* mode = nullptr;
  std::unique_ptr<ServiceProcess> store;
  std::vector<std::unique_ptr<Replica>> replicas;
  std::unique_ptr<Listener> listener;
  std::unique_ptr<Load> load;
  std::unique_ptr<Pacer> pacer;
  absl::Duration store_cpu, session_cpu;  // At the window's start, then over it.
  int64_t sealed = 0;

  // Stops the load (the pacer feeds it, the listener's thread calls both) and then the
  // services; SIGTERM flushes the exporters' queues, so every span reaches the receiver.
  ~Stack() {
    if (pacer) pacer->Stop();
    if (listener) listener->Stop();
    if (load) load->Stop();
    for (auto& replica : replicas) replica->Stop(kStopGrace);
    if (store) store->Stop(kStopGrace);
  }
};

absl::Status StartStack(const Options& o, Mode& mode, int round, Stack& stack) {
  stack.mode = &mode;
  auto store = StartStore(o, mode, round);
  if (!store.ok()) return store.status();
  stack.store = *std::move(store);
  auto sessions = NewSessions(stack.store->target(), o.sessions);
  if (!sessions.ok()) return sessions.status();
  auto replica = parley::bench::StartReplica(
      {.session_binary = o.session_binary,
       .work_dir = o.work_dir,
       .store_addr = stack.store->target(),
       .redis_url = o.redis_url,
       .turn_slots = o.turn_slots,
       .log_name = absl::StrCat("parley-session-", mode.name, "-", round),
       .env = ServiceEnv(mode, "parley-session")},
      0);
  if (!replica.ok()) return replica.status();
  stack.replicas.push_back(*std::move(replica));

  auto endpoint = parley::ParseRedisUrl(o.redis_url);
  if (!endpoint.ok()) return endpoint.status();
  const std::string text = absl::StrCat("@words ", o.words, "\n@delay_ms 0");
  stack.listener = std::make_unique<Listener>(*endpoint, *sessions, mode.key_prefix());
  stack.load = std::make_unique<Load>(o.submitters, kTenant, stack.replicas, *stack.listener);
  Load& load = *stack.load;
  stack.pacer = std::make_unique<Pacer>(
      o.turn_rate, [&load, text](const std::string& session) { load.Enqueue(session, text); });
  Pacer& pacer = *stack.pacer;
  absl::Status started = stack.listener->Start([&load, &pacer](const std::string& session) {
    load.Sealed(session);
    pacer.Ready(session);
  });
  if (!started.ok()) return started;
  load.Start();
  for (const std::string& session : *sessions) pacer.Ready(session);
  pacer.Start();
  return absl::OkStatus();
}

// One round: the three stacks side by side. Adds each stack's CPU and turns to its
// mode's totals and returns each mode's CPU per turn in ms, in the order of `modes`.
absl::StatusOr<std::vector<double>> RunRound(const Options& o, std::vector<Mode>& modes,
                                             int round) {
  std::vector<std::unique_ptr<Stack>> stacks;
  for (size_t i = 0; i < modes.size(); ++i) {
    // The start order rotates every round.
    Mode& mode = modes[(i + static_cast<size_t>(round)) % modes.size()];
    stacks.push_back(std::make_unique<Stack>());
    if (absl::Status s = StartStack(o, mode, round, *stacks.back()); !s.ok()) return s;
  }
  absl::SleepFor(o.warmup);

  for (auto& stack : stacks) {
    stack->store_cpu = ProcessCpu(stack->store->pid());
    stack->session_cpu = ProcessCpu(stack->replicas[0]->pid());
    stack->sealed = stack->listener->sealed();
  }
  absl::SleepFor(o.duration);
  for (auto& stack : stacks) {
    stack->store_cpu = ProcessCpu(stack->store->pid()) - stack->store_cpu;
    stack->session_cpu = ProcessCpu(stack->replicas[0]->pid()) - stack->session_cpu;
    stack->sealed = stack->listener->sealed() - stack->sealed;
  }

  // Drain, so no turn is cut short while a stack stops.
  for (auto& stack : stacks) stack->pacer->Stop();
  for (auto& stack : stacks) {
    Load& load = *stack->load;
    if (!parley::bench::WaitFor([&] { return load.TotalOutstanding() == 0; }, kDrainTimeout)) {
      return absl::DeadlineExceededError(absl::StrCat(stack->mode->name, " round ", round, ": ",
                                                      load.TotalOutstanding(),
                                                      " turns never sealed"));
    }
    if (absl::Status s = stack->listener->error(); !s.ok()) return s;
    if (load.errors() > 0) {
      return absl::InternalError(absl::StrCat(load.errors(), " SubmitMessage calls failed"));
    }
    stack->mode->round_turns += stack->listener->sealed();
    if (stack->sealed == 0) {
      return absl::InternalError(absl::StrCat(stack->mode->name, ": no turn sealed"));
    }
  }

  std::vector<double> cpu_per_turn_ms(modes.size());
  for (auto& stack : stacks) {
    Mode& mode = *stack->mode;
    mode.store_cpu += stack->store_cpu;
    mode.session_cpu += stack->session_cpu;
    mode.turns += stack->sealed;
    const double ms =
        absl::ToDoubleMilliseconds(stack->store_cpu + stack->session_cpu) / stack->sealed;
    cpu_per_turn_ms[static_cast<size_t>(&mode - modes.data())] = ms;
    std::cout << absl::StrFormat(
        "round %d %-4s: %5d turns in %s, %.3f ms CPU per turn (parley-session %.3f, "
        "parley-store %.3f)\n",
        round, mode.name, stack->sealed, absl::FormatDuration(o.duration), ms,
        absl::ToDoubleMilliseconds(stack->session_cpu) / stack->sealed,
        absl::ToDoubleMilliseconds(stack->store_cpu) / stack->sealed);
  }
  return cpu_per_turn_ms;  // The stacks stop as they go out of scope.
}

absl::Status Run(const Options& o) {
  auto receiver = parley::testing::OtlpReceiver::Start();
  if (!receiver.ok()) return receiver.status();
  std::vector<Mode> modes = Modes((*receiver)->endpoint());
  const std::vector<std::string> urls = absl::StrSplit(o.database_urls, ',');
  if (urls.size() != modes.size()) {
    return absl::InvalidArgumentError(absl::StrCat("--database_urls: expected ", modes.size(),
                                                   " URLs (off, on, 1pct), got ", urls.size()));
  }
  for (size_t m = 0; m < modes.size(); ++m) {
    modes[m].database_url = urls[m];
    // The tenant lives in the mode's database: made once, through a first store.
    auto store = StartStore(o, modes[m], -1);
    if (!store.ok()) return store.status();
    auto stub = parley::bench::store_pb::StoreService::NewStub(
        parley::bench::Channel((*store)->target(), 1));
    if (absl::Status s = CreateTenant(*stub, kTenant); !s.ok()) return s;
    (*store)->Stop(kStopGrace);
  }

  // Each round's traced CPU per turn over its "off" stack's, in percent.
  std::vector<double> round_on_pct, round_1pct_pct;
  for (int round = 0; round < o.rounds; ++round) {
    absl::StatusOr<std::vector<double>> cpu = RunRound(o, modes, round);
    if (!cpu.ok()) return cpu.status();
    round_on_pct.push_back(((*cpu)[1] / (*cpu)[0] - 1) * 100);
    round_1pct_pct.push_back(((*cpu)[2] / (*cpu)[0] - 1) * 100);
  }
  for (const parley::testing::ReceivedSpan& span : (*receiver)->spans()) {
    auto mode = span.resource.find("parley.bench.mode");
    for (Mode& m : modes) {
      if (mode != span.resource.end() && mode->second == m.name) ++m.spans;
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
        static_cast<double>(mode.spans) / mode.round_turns);
  }
  const Mode &off = modes[0], &on = modes[1], &pct = modes[2];
  if (off.spans != 0) return absl::InternalError("spans were exported with OTEL_SDK_DISABLED");
  if (on.spans == 0 || pct.spans == 0) {
    return absl::InternalError("a traced mode exported no spans");
  }
  const double overhead = (on.CpuPerTurnMs() / off.CpuPerTurnMs() - 1) * 100;
  std::cout << absl::StrFormat("goal:      100%% sampling <= 3%% more CPU per turn: %s\n",
                               overhead <= 3 ? "met" : "MISSED");
  const auto [low, high] = std::minmax_element(round_on_pct.begin(), round_on_pct.end());
  std::cout << absl::StrFormat(
      "per round: 100%% sampling %+.1f%% (median; from %+.1f%% to %+.1f%%), 1%% sampling "
      "%+.1f%% (median)\n",
      Percentile(round_on_pct, 0.5), *low, *high, Percentile(round_1pct_pct, 0.5));
  std::cout << absl::StrFormat(
      "RESULT name=telemetry cpu_off_ms=%.3f cpu_on_ms=%.3f cpu_1pct_ms=%.3f overhead_pct=%.1f "
      "overhead_round_median_pct=%.1f overhead_1pct_round_median_pct=%.1f "
      "spans_per_turn_on=%.2f spans_per_turn_1pct=%.3f turns_per_mode=%d rounds=%d\n",
      off.CpuPerTurnMs(), on.CpuPerTurnMs(), pct.CpuPerTurnMs(), overhead,
      Percentile(round_on_pct, 0.5), Percentile(round_1pct_pct, 0.5),
      static_cast<double>(on.spans) / on.round_turns,
      static_cast<double>(pct.spans) / pct.round_turns, std::min({off.turns, on.turns, pct.turns}),
      o.rounds);
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
  flags.String("database_urls", &o.database_urls,
               "three migrated Postgres databases, comma-separated: for off, on and 1pct",
               parley::ValidateNonEmpty);
  flags.String("redis_url", &o.redis_url, "the Redis both services use", parley::ValidateRedisUrl);
  flags.String("work_dir", &o.work_dir, "directory for the services' logs",
               parley::ValidateNonEmpty);
  flags.Int("sessions", &o.sessions, "sessions taking turns", 1, 100000);
  flags.Int("submitters", &o.submitters, "concurrent SubmitMessage clients", 1, 256);
  flags.Int("turn_slots", &o.turn_slots, "--turn_slots of parley-session", 1, 1024);
  flags.Int("rounds", &o.rounds, "rounds (each runs the three modes side by side)", 1, 100);
  flags.Int("turn_rate", &o.turn_rate,
            "turns started per second by each stack (the three together stay below what the "
            "machine sustains, so every round runs at this rate)",
            1, 100000);
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
