// turns_bench: parley-session's turn scheduling under load, three replicas over one
// parley-store, measured in one run against the store's own claim ceiling:
//
//   raw       `claimers` threads call ClaimNextTurn + CompleteTurn straight against
//             parley-store (no turn work, no replica running) until `raw_sessions` x
//             `raw_turns` queued turns are done: claims_per_s_raw, the ceiling.
//   sustained `replicas` parley-session processes (started here, so the benchmark can
//             kill one) run scripted turns of 20 events each (TurnStarted, 16 words,
//             Usage, TurnCompleted, TurnSealed; calibrated on a first turn) over
//             `sessions` sessions, every session kept busy (two turns in flight: one
//             running, one queued behind it, the next submitted as soon as a turn is
//             sealed): turns_per_s, sealed turns over the measured window.
//   latency   half the sustained rate, open loop, each submit to an idle session:
//             enqueue-to-claim (SubmitMessage returned -> the turn's start_time, set by
//             the claim) and claim-to-first-event (start_time -> the first TextDelta's
//             Event.time), p50/p99. One machine, one clock.
//   failover  with the half-rate load still on, probe turns that stall (no output) run
//             on every replica; the replica owning the most probes is killed -9, and
//             failover_s is the time from the kill to the first event another replica
//             publishes for a probe the dead one owned (its TurnStarted attempt 2).
//
// Events are read the way a gateway reads them: one Redis connection subscribed to every
// session's channel. Every submit carries an idempotency key, so a submit cut off by the
// kill is retried on another replica without a duplicate turn.
//
//   turns_bench --store_addr=127.0.0.1:7073 --redis_url=redis://127.0.0.1:6379
//               --session_binary=build/session-svc/parley-session --work_dir=/tmp/x
//   ... RESULT name=turns turns_per_s=... claims_per_s_raw=... turn_ratio=...
//       claim_p50_ms=... claim_p99_ms=... first_event_p99_ms=... failover_s=... lease_ttl_s=...
#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "bench/turn_driver.h"
#include "common/config.h"
#include "common/proto_time.h"
#include "common/redis.h"
#include "parley/router/v1/router.grpc.pb.h"
#include "parley/store/v1/store.grpc.pb.h"

namespace {

using parley::bench::Call;
using parley::bench::Channel;
using parley::bench::CreateSessions;
using parley::bench::CreateTenant;
using parley::bench::Listener;
using parley::bench::Load;
using parley::bench::Percentile;
using parley::bench::ProcessCpu;
using parley::bench::Replica;
using parley::bench::RouterStub;
using parley::bench::RunOnThreads;
using parley::bench::StartReplica;
using parley::bench::StoreStub;
using parley::bench::TurnRecord;
using parley::bench::WaitFor;

namespace store_pb = ::parley::store::v1;
namespace router_pb = ::parley::router::v1;
namespace v1 = ::parley::v1;

constexpr char kTenant[] = "bench";
constexpr char kRawTenant[] = "bench-raw";
constexpr int kTargetEventsPerTurn = 20;

struct Options {
  std::string store_addr;
  std::string redis_url = "redis://127.0.0.1:6379";
  std::string session_binary;
  std::string work_dir;
  int64_t replicas = 3;
  int64_t turn_slots = 16;
  absl::Duration lease_ttl = absl::Seconds(5);
  int64_t sessions = 200;
  absl::Duration warmup = absl::Seconds(3);
  absl::Duration duration = absl::Seconds(10);
  absl::Duration latency_duration = absl::Seconds(10);
  int64_t submitters = 12;
  int64_t claimers = 8;
  int64_t raw_sessions = 200;
  int64_t raw_turns = 20;
  int64_t probes = 12;
  int64_t store_pid = 0;  // For CPU accounting only; 0: not reported.
  int64_t redis_pid = 0;
};

// ---- gRPC plumbing ----

// ---- CPU accounting: where the two cores went during the sustained window ----

// Busy CPU time of the whole machine so far (every core, everything but idle and iowait).
absl::Duration MachineBusyCpu() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  int64_t user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  return absl::Seconds(static_cast<double>(user + nice + system + irq + softirq + steal) /
                       sysconf(_SC_CLK_TCK));
}

// ---- Replica metrics: the store calls behind each turn ----

// GET /metrics from 127.0.0.1:port; "" on any failure.
std::string FetchMetrics(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string body;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[65536];
      ssize_t n;
      while ((n = ::read(fd, buffer, sizeof(buffer))) > 0) body.append(buffer, n);
    }
  }
  ::close(fd);
  return body;
}

// Counter totals by name (client RPCs as "rpc <method>"), summed over label sets.
std::map<std::string, double> CallCounters(const std::string& metrics) {
  static const std::regex kClient(
      R"re(^parley_grpc_client_handled_total\{[^}]*method="([^"]+)"[^}]*\} ([0-9.e+]+))re");
  static const std::regex kPlain(
      R"re(^(parley_session_(?:empty_)?claims_total)(?:\{\})? ([0-9.e+]+))re");
  std::map<std::string, double> totals;
  std::istringstream lines(metrics);
  std::string line;
  std::smatch match;
  while (std::getline(lines, line)) {
    if (std::regex_search(line, match, kClient)) {
      totals["rpc " + match[1].str()] += std::stod(match[2].str());
    } else if (std::regex_search(line, match, kPlain)) {
      totals[match[1].str()] += std::stod(match[2].str());
    }
  }
  return totals;
}

// ---- Raw claims: the store's ceiling ----

absl::StatusOr<double> MeasureRawClaims(const Options& o,
                                        std::vector<std::unique_ptr<StoreStub>>& stubs) {
  if (absl::Status s = CreateTenant(*stubs[0], kRawTenant); !s.ok()) return s;
  auto sessions = CreateSessions(stubs, kRawTenant, o.raw_sessions);
  if (!sessions.ok()) return sessions.status();
  const int threads = static_cast<int>(stubs.size());
  absl::Status enqueued = RunOnThreads(threads, [&](int t) -> absl::Status {
    for (int64_t i = t; i < o.raw_sessions; i += threads) {
      for (int64_t n = 0; n < o.raw_turns; ++n) {
        store_pb::EnqueueTurnRequest request;
        request.set_tenant_id(kRawTenant);
        request.mutable_request()->set_session_id((*sessions)[i]);
        request.mutable_request()->add_content()->set_text("raw");
        store_pb::EnqueueTurnResponse response;
        if (absl::Status s = Call(*stubs[t], &StoreStub::EnqueueTurn, request, &response);
            !s.ok()) {
          return s;
        }
      }
    }
    return absl::OkStatus();
  });
  if (!enqueued.ok()) return enqueued;

  const int64_t total = o.raw_sessions * o.raw_turns;
  std::atomic<int64_t> done{0};
  const absl::Time start = absl::Now();
  absl::Status claimed = RunOnThreads(static_cast<int>(o.claimers), [&](int t) -> absl::Status {
    StoreStub& stub = *stubs[t % stubs.size()];
    const std::string owner = absl::StrCat("turns-bench/raw-", t);
    while (done.load() < total) {
      if (absl::Now() - start > absl::Minutes(2)) return absl::DeadlineExceededError("raw claims");
      store_pb::ClaimNextTurnRequest claim;
      claim.set_owner(owner);
      claim.set_lease_ttl_ms(60000);
      store_pb::ClaimNextTurnResponse claimed;
      if (absl::Status s = Call(stub, &StoreStub::ClaimNextTurn, claim, &claimed); !s.ok()) {
        return s;
      }
      // Empty while the other claimers hold the sessions' running turns.
      if (!claimed.has_turn()) continue;
      store_pb::CompleteTurnRequest complete;
      complete.set_tenant_id(kRawTenant);
      complete.set_turn_id(claimed.turn().id());
      complete.set_owner(owner);
      complete.set_lease_epoch(claimed.lease_epoch());
      complete.set_status(v1::TURN_STATUS_SUCCEEDED);
      complete.set_finish_reason(v1::FINISH_REASON_STOP);
      store_pb::CompleteTurnResponse completed;
      if (absl::Status s = Call(stub, &StoreStub::CompleteTurn, complete, &completed); !s.ok()) {
        return s;
      }
      ++done;
    }
    return absl::OkStatus();
  });
  if (!claimed.ok()) return claimed;
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::cout << absl::StrFormat(
      "raw:       %d claims + completes in %.3f s by %d threads: %.0f claims/s\n", total, seconds,
      o.claimers, total / seconds);
  return total / seconds;
}

// What the store says about sessions whose submitted turns were not all seen sealed.
std::string DescribeStuck(StoreStub& store, Load& load, const std::vector<std::string>& sessions,
                          Listener& listener) {
  std::string out;
  int shown = 0;
  for (const std::string& session : sessions) {
    const int64_t outstanding = load.Outstanding(session);
    if (outstanding == 0 || shown++ >= 5) continue;
    absl::StrAppend(&out, "\n  session ", session, ": ", outstanding, " not seen sealed;");
    store_pb::ListTurnsRequest request;
    request.set_tenant_id(kTenant);
    request.set_session_id(session);
    request.set_page_size(1000);
    store_pb::ListTurnsResponse response;
    if (!Call(store, &StoreStub::ListTurns, request, &response).ok()) continue;
    int shown_turns = 0;
    for (const v1::Turn& turn : response.turns()) {
      bool sealed = false;
      listener.With([&](auto& turns) {
        auto it = turns.find(turn.id());
        sealed = it != turns.end() && it->second.sealed != absl::Time();
      });
      if (sealed && turn.status() == v1::TURN_STATUS_SUCCEEDED) continue;
      if (shown_turns++ >= 4) break;
      absl::StrAppend(&out, "\n    turn ", turn.id(), " ", v1::TurnStatus_Name(turn.status()),
                      " attempt ", turn.attempt(), " seqs ", turn.first_seq(), "..",
                      turn.last_seq(), sealed ? " (seal seen)" : " (no seal seen)");
    }
  }
  return out;
}

// ---- The run ----

struct Results {
  double claims_per_s_raw = 0;
  double turns_per_s = 0;
  int events_per_turn = 0;
  double claim_p50_ms = 0, claim_p99_ms = 0;
  double first_event_p50_ms = 0, first_event_p99_ms = 0;
  int64_t latency_turns = 0;
  int64_t claimed_before_ack = 0;
  double failover_s = -1;
};

absl::StatusOr<Results> Run(const Options& o) {
  Results results;
  std::vector<std::unique_ptr<StoreStub>> stores;
  for (int i = 0; i < std::max<int64_t>(o.claimers, 8); ++i) {
    stores.push_back(store_pb::StoreService::NewStub(Channel(o.store_addr, i + 1)));
  }

  // 1. The ceiling, before any replica runs (a replica would claim these turns too).
  auto raw = MeasureRawClaims(o, stores);
  if (!raw.ok()) return raw.status();
  results.claims_per_s_raw = *raw;

  // 2. Replicas, sessions, the listener.
  if (absl::Status s = CreateTenant(*stores[0], kTenant); !s.ok()) return s;
  auto sessions = CreateSessions(stores, kTenant, o.sessions);
  if (!sessions.ok()) return sessions.status();
  auto probe_sessions = CreateSessions(stores, kTenant, o.probes);
  if (!probe_sessions.ok()) return probe_sessions.status();
  std::vector<std::unique_ptr<Replica>> replicas;
  for (int i = 0; i < o.replicas; ++i) {
    auto replica = StartReplica({.session_binary = o.session_binary,
                                 .work_dir = o.work_dir,
                                 .store_addr = o.store_addr,
                                 .redis_url = o.redis_url,
                                 .turn_slots = o.turn_slots,
                                 .lease_ttl = o.lease_ttl},
                                i);
    if (!replica.ok()) return replica.status();
    replicas.push_back(*std::move(replica));
  }
  auto endpoint = parley::ParseRedisUrl(o.redis_url);
  if (!endpoint.ok()) return endpoint.status();
  std::vector<std::string> watched = *sessions;
  watched.insert(watched.end(), probe_sessions->begin(), probe_sessions->end());
  // The listener calls into the load and the load into the listener: both stop (load
  // first) before either is destroyed, on every return path.
  std::string text;
  std::atomic<bool> refill{false};
  Listener listener(*endpoint, watched);
  auto load = std::make_unique<Load>(o.submitters, kTenant, replicas, listener);
  struct StopBoth {
    Load& load;
    Listener& listener;
    ~StopBoth() {
      load.Stop();
      listener.Stop();
    }
  } stop_both{*load, listener};
  absl::Status started = listener.Start([&](const std::string& session) {
    load->Sealed(session);
    if (refill.load()) load->Enqueue(session, text);
  });
  if (!started.ok()) return started;
  load->Start();

  // 3. Calibrate @words so that a turn is 20 durable events.
  int words = 16;
  for (int round = 0; round < 3; ++round) {
    text = absl::StrCat("@words ", words, "\n@delay_ms 0");
    const int64_t before = listener.sealed();
    load->Enqueue((*sessions)[0], text);
    if (!WaitFor([&] { return listener.sealed() > before; }, absl::Seconds(30))) {
      return absl::DeadlineExceededError("the calibration turn never sealed");
    }
    int events = 0;
    listener.With([&](auto& turns) {
      for (const auto& [id, turn] : turns) {
        if (turn.session == (*sessions)[0] && turn.sealed != absl::Time()) events = turn.events;
      }
    });
    // Every turn of the calibration session but the last was erased below.
    results.events_per_turn = events;
    listener.With([&](auto& turns) { turns.clear(); });
    if (events == kTargetEventsPerTurn) break;
    words += kTargetEventsPerTurn - events;
    if (words < 1) return absl::InternalError("a turn has more than 20 events without words");
  }
  std::cout << absl::StrFormat("turn:      \"@words %d\" makes %d durable events per turn\n", words,
                               results.events_per_turn);

  // 4. Sustained: two turns in flight per session, the next submitted on each seal.
  refill = true;
  for (const std::string& session : *sessions) {
    load->Enqueue(session, text);
    load->Enqueue(session, text);
  }
  absl::SleepFor(o.warmup);
  auto cpu_snapshot = [&] {
    std::vector<absl::Duration> cpu;
    for (const auto& replica : replicas) cpu.push_back(ProcessCpu(replica->pid()));
    cpu.push_back(o.store_pid > 0 ? ProcessCpu(o.store_pid) : absl::ZeroDuration());
    cpu.push_back(o.redis_pid > 0 ? ProcessCpu(o.redis_pid) : absl::ZeroDuration());
    cpu.push_back(ProcessCpu(getpid()));
    cpu.push_back(MachineBusyCpu());
    return cpu;
  };
  auto calls_snapshot = [&] {
    std::map<std::string, double> totals;
    for (const auto& replica : replicas) {
      for (const auto& [name, value] : CallCounters(FetchMetrics(replica->admin_port()))) {
        totals[name] += value;
      }
    }
    return totals;
  };
  const std::map<std::string, double> calls_before = calls_snapshot();
  const std::vector<absl::Duration> cpu_before = cpu_snapshot();
  const int64_t sealed_at_start = listener.sealed();
  const absl::Time window_start = absl::Now();
  absl::SleepFor(o.duration);
  const int64_t sealed_in_window = listener.sealed() - sealed_at_start;
  const absl::Duration window = absl::Now() - window_start;
  const double window_s = absl::ToDoubleSeconds(window);
  const std::vector<absl::Duration> cpu_after = cpu_snapshot();
  std::string cpu_line = "cpu:       cores used in the window:";
  for (size_t i = 0; i < cpu_before.size(); ++i) {
    const double cores = absl::FDivDuration(cpu_after[i] - cpu_before[i], window);
    std::string name = i < replicas.size() ? replicas[i]->worker_id() : "";
    if (i == replicas.size()) name = "parley-store";
    if (i == replicas.size() + 1) name = "redis";
    if (i == replicas.size() + 2) name = "turns_bench";
    if (i == replicas.size() + 3) name = "machine (postgres and all else included)";
    if ((i == replicas.size() && o.store_pid == 0) ||
        (i == replicas.size() + 1 && o.redis_pid == 0)) {
      continue;
    }
    absl::StrAppendFormat(&cpu_line, " %s %.2f;", name, cores);
  }
  std::cout << cpu_line << "\n";
  std::string calls_line = "calls:     per sealed turn, by the replicas:";
  for (const auto& [name, after] : calls_snapshot()) {
    auto before = calls_before.find(name);
    const double delta = after - (before == calls_before.end() ? 0 : before->second);
    if (delta > 0) {
      absl::StrAppendFormat(&calls_line, " %s %.2f;", name,
                            delta / std::max<int64_t>(1, sealed_in_window));
    }
  }
  std::cout << calls_line << "\n";
  results.turns_per_s = sealed_in_window / window_s;
  std::cout << absl::StrFormat(
      "sustained: %d turns sealed in %.1f s over %d sessions, %d replicas x %d slots: "
      "%.0f turns/s (%.0f events/s)\n",
      sealed_in_window, window_s, o.sessions, o.replicas, o.turn_slots, results.turns_per_s,
      results.turns_per_s * results.events_per_turn);
  refill = false;
  if (!WaitFor([&] { return load->TotalOutstanding() == 0; }, absl::Seconds(60))) {
    return absl::DeadlineExceededError(
        absl::StrCat("the sustained phase's turns never all sealed: ",
                     DescribeStuck(*stores[0], *load, *sessions, listener)));
  }
  listener.With([&](auto& turns) { turns.clear(); });

  // 5. Latency at half the sustained rate, open loop, each submit to an idle session.
  const double rate = std::max(1.0, results.turns_per_s / 2);
  std::atomic<bool> pacing{true};
  std::atomic<int64_t> skipped{0};
  std::thread pacer([&] {
    const absl::Duration interval = absl::Seconds(1) / rate;
    absl::Time next = absl::Now();
    size_t cursor = 0;
    while (pacing.load()) {
      next += interval;
      absl::SleepFor(std::max(absl::ZeroDuration(), next - absl::Now()));
      bool sent = false;
      for (size_t tries = 0; tries < sessions->size() && !sent; ++tries) {
        const std::string& session = (*sessions)[cursor++ % sessions->size()];
        if (load->Outstanding(session) == 0) {
          load->Enqueue(session, text);
          sent = true;
        }
      }
      if (!sent) ++skipped;
    }
  });
  absl::SleepFor(o.latency_duration);
  // Snapshot the latency records: what failover adds comes after.
  std::vector<std::string> measured_ids;
  listener.With([&](auto& turns) {
    for (const auto& [id, turn] : turns) {
      if (turn.sealed != absl::Time() && turn.submitted != absl::Time()) measured_ids.push_back(id);
    }
  });

  // 6. Failover, with the half-rate load still on.
  std::vector<std::string> probe_turns(o.probes);
  for (int64_t i = 0; i < o.probes; ++i) {
    router_pb::SubmitMessageRequest request;
    request.set_tenant_id(kTenant);
    request.mutable_request()->set_session_id((*probe_sessions)[i]);
    request.mutable_request()->add_content()->set_text("@stall_ms 600000");
    v1::SendMessageResponse response;
    auto router =
        router_pb::SessionRouter::NewStub(Channel(replicas[i % replicas.size()]->target(), 9));
    if (absl::Status s = Call(*router, &RouterStub::SubmitMessage, request, &response); !s.ok()) {
      return s;
    }
    probe_turns[i] = response.turn().id();
  }
  std::map<std::string, std::vector<std::string>> probes_by_owner;  // worker -> turns
  if (!WaitFor(
          [&] {
            probes_by_owner.clear();
            int owned = 0;
            for (int64_t i = 0; i < o.probes; ++i) {
              store_pb::GetSessionRequest request;
              request.set_tenant_id(kTenant);
              request.set_session_id((*probe_sessions)[i]);
              store_pb::GetSessionResponse response;
              if (!Call(*stores[0], &StoreStub::GetSession, request, &response).ok()) return false;
              if (response.session().current_turn_id() != probe_turns[i]) continue;
              if (response.lease_owner().empty()) continue;
              probes_by_owner[response.lease_owner()].push_back(probe_turns[i]);
              ++owned;
            }
            return owned == o.probes;
          },
          absl::Seconds(30))) {
    return absl::DeadlineExceededError("the probe turns never all ran");
  }
  int victim = -1;
  size_t most = 0;
  for (size_t r = 0; r < replicas.size(); ++r) {
    const size_t owned = probes_by_owner[replicas[r]->worker_id()].size();
    if (owned > most) {
      most = owned;
      victim = static_cast<int>(r);
    }
  }
  if (victim < 0) return absl::InternalError("no replica owns a probe turn");
  const std::vector<std::string>& lost = probes_by_owner[replicas[victim]->worker_id()];
  load->MarkDead(victim);
  const absl::Time killed_at = absl::Now();
  replicas[victim]->Kill();
  absl::Time first_takeover = absl::InfiniteFuture();
  WaitFor(
      [&] {
        listener.With([&](auto& turns) {
          for (const std::string& id : lost) {
            auto it = turns.find(id);
            if (it != turns.end() && it->second.last_attempt >= 2) {
              first_takeover = std::min(first_takeover, it->second.last_attempt_time);
            }
          }
        });
        return first_takeover != absl::InfiniteFuture();
      },
      o.lease_ttl + absl::Seconds(60));
  if (first_takeover != absl::InfiniteFuture()) {
    results.failover_s = absl::ToDoubleSeconds(first_takeover - killed_at);
  }
  std::cout << absl::StrFormat(
      "failover:  killed %s (owner of %d of %d stalled probes) under load; first takeover "
      "event after %.2f s (lease %s)\n",
      replicas[victim]->worker_id(), lost.size(), o.probes, results.failover_s,
      absl::FormatDuration(o.lease_ttl));
  pacing = false;
  pacer.join();
  load->Stop();

  // Claim times are the store's start_time (set by the claim), read back per turn.
  std::vector<double> claim_ms(measured_ids.size(), -1), first_ms(measured_ids.size(), -1);
  std::vector<absl::Time> submitted(measured_ids.size()), first_text(measured_ids.size());
  std::vector<double> started_ms;  // SubmitMessage returned -> TurnStarted's Event.time.
  listener.With([&](auto& turns) {
    for (size_t i = 0; i < measured_ids.size(); ++i) {
      const TurnRecord& turn = turns[measured_ids[i]];
      submitted[i] = turn.submitted;
      first_text[i] = turn.first_text;
      started_ms.push_back(
          std::max(0.0, absl::ToDoubleMilliseconds(turn.started - turn.submitted)));
    }
  });
  std::atomic<int64_t> before_ack{0};
  absl::Status read = RunOnThreads(8, [&](int t) -> absl::Status {
    for (size_t i = t; i < measured_ids.size(); i += 8) {
      store_pb::GetTurnRequest request;
      request.set_tenant_id(kTenant);
      request.set_turn_id(measured_ids[i]);
      store_pb::GetTurnResponse response;
      if (absl::Status s = Call(*stores[t], &StoreStub::GetTurn, request, &response); !s.ok()) {
        return s;
      }
      const absl::Time claimed = parley::FromTimestamp(response.turn().start_time());
      const absl::Duration wait = claimed - submitted[i];
      if (wait < absl::ZeroDuration()) ++before_ack;
      claim_ms[i] = std::max(0.0, absl::ToDoubleMilliseconds(wait));
      first_ms[i] = absl::ToDoubleMilliseconds(first_text[i] - claimed);
    }
    return absl::OkStatus();
  });
  if (!read.ok()) return read;
  results.latency_turns = static_cast<int64_t>(measured_ids.size());
  results.claimed_before_ack = before_ack.load();
  results.claim_p50_ms = Percentile(claim_ms, 0.5);
  results.claim_p99_ms = Percentile(claim_ms, 0.99);
  results.first_event_p50_ms = Percentile(first_ms, 0.5);
  results.first_event_p99_ms = Percentile(first_ms, 0.99);
  std::cout << absl::StrFormat(
      "latency:   %d turns at %.0f turns/s (%d pacer ticks found no idle session): "
      "enqueue->claim p50 %.2f ms p99 %.2f ms (%d claimed before SubmitMessage returned, "
      "counted as 0); claim->first event p50 %.2f ms p99 %.2f ms\n",
      results.latency_turns, rate, skipped.load(), results.claim_p50_ms, results.claim_p99_ms,
      results.claimed_before_ack, results.first_event_p50_ms, results.first_event_p99_ms);
  std::cout << absl::StrFormat(
      "           (enqueue->TurnStarted event, for comparison: p50 %.2f ms p99 %.2f ms)\n",
      Percentile(started_ms, 0.5), Percentile(started_ms, 0.99));
  std::cout << absl::StrFormat("submit errors (retried elsewhere): %d\n", load->errors());
  if (absl::Status s = listener.error(); !s.ok()) return s;
  return results;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  Options o;
  parley::Flags flags("turns_bench",
                      "parley-session turn throughput, latency and failover vs the raw claim "
                      "rate of parley-store.");
  flags.HostPort("store_addr", &o.store_addr, "the parley-store the replicas use");
  flags.String("redis_url", &o.redis_url, "the Redis the replicas use", parley::ValidateRedisUrl);
  flags.String("session_binary", &o.session_binary, "parley-session binary to start",
               parley::ValidateNonEmpty);
  flags.String("work_dir", &o.work_dir, "directory for the replicas' logs",
               parley::ValidateNonEmpty);
  flags.Int("replicas", &o.replicas, "parley-session processes", 2, 16);
  flags.Int("turn_slots", &o.turn_slots, "--turn_slots of each replica", 1, 1024);
  flags.Duration("lease_ttl", &o.lease_ttl, "--lease_ttl of each replica");
  flags.Int("sessions", &o.sessions, "sessions kept busy", 1, 100000);
  flags.Duration("warmup", &o.warmup, "sustained load before the measured window");
  flags.Duration("duration", &o.duration, "measured window of the sustained phase");
  flags.Duration("latency_duration", &o.latency_duration, "length of the half-rate phase");
  flags.Int("submitters", &o.submitters, "concurrent SubmitMessage clients", 1, 256);
  flags.Int("claimers", &o.claimers, "threads of the raw claim phase", 1, 256);
  flags.Int("raw_sessions", &o.raw_sessions, "sessions of the raw claim phase", 1, 100000);
  flags.Int("raw_turns", &o.raw_turns, "queued turns per raw session", 1, 10000);
  flags.Int("probes", &o.probes, "stalled probe turns for the failover phase", 1, 1000);
  flags.Int("store_pid", &o.store_pid, "parley-store's pid, for its CPU use (0: not shown)", 0,
            1 << 30);
  flags.Int("redis_pid", &o.redis_pid, "redis-server's pid, for its CPU use (0: not shown)", 0,
            1 << 30);
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());
  if (o.store_addr.empty()) {
    std::cerr << "turns_bench: --store_addr is required\n";
    return 2;
  }

  absl::StatusOr<Results> results = Run(o);
  if (!results.ok()) {
    std::cerr << "turns_bench: " << results.status() << "\n";
    return 1;
  }
  const Results& r = *results;
  const double ratio = r.claims_per_s_raw > 0 ? r.turns_per_s / r.claims_per_s_raw : 0;
  const double lease_s = absl::ToDoubleSeconds(o.lease_ttl);
  auto goal = [](bool met) { return met ? "met" : "MISSED"; };
  std::cout << absl::StrFormat(
      "goals:     >= 500 turns/s: %s; >= 0.25 x raw claims: %s; enqueue->claim p99 <= 5 ms: "
      "%s; failover <= lease + 2 s: %s\n",
      goal(r.turns_per_s >= 500), goal(ratio >= 0.25), goal(r.claim_p99_ms <= 5),
      goal(r.failover_s >= 0 && r.failover_s <= lease_s + 2));
  std::cout << absl::StrFormat(
      "RESULT name=turns turns_per_s=%.0f claims_per_s_raw=%.0f turn_ratio=%.3f "
      "claim_p50_ms=%.2f claim_p99_ms=%.2f first_event_p99_ms=%.2f failover_s=%.2f "
      "lease_ttl_s=%.0f\n",
      r.turns_per_s, r.claims_per_s_raw, ratio, r.claim_p50_ms, r.claim_p99_ms,
      r.first_event_p99_ms, r.failover_s, lease_s);
  return 0;
}
