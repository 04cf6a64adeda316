// fanout_bench: one gateway's fan-out under many concurrent subscribers — StreamEvents
// calls, or (--mux_streams=N) subscriptions carried by N Subscribe streams.
//
//   fanout_bench --gateway_addr=127.0.0.1:7070 --gateway_pid=1234 --store_addr=127.0.0.1:7073
//       --redis_url=redis://127.0.0.1:6379 --api_key=pk_bench --tenant=bench
//       --subscribers=10000 --sessions=1000 --rate=2000 --duration=20s
//   ... RESULT name=fanout subscribers=10000 delivered_per_s=... p99_ms=... rss_per_sub_kib=...
//
// The run, in order:
//   1. creates the tenant and `sessions` sessions through store-svc, and takes every
//      session's lease (epoch 1) with `publishers` EventPublishers, as session-svc would;
//   2. reads the gateway's RSS, then opens `subscribers` streams (subscriber k watches
//      session k % sessions) as ClientReadReactors spread over `channels` connections
//      — no thread per stream; with --mux_streams=N, N Subscribe streams instead
//      (ClientBidiReactors), subscriber k a subscription of stream k % N, each
//      subscription checking its own order;
//   3. publishes one warm-up event per session and waits until every stream has
//      received it (so every stream is live), lets the gateway settle, reads its RSS
//      again: (after - before) / subscribers is the memory one idle stream costs;
//   4. publishes at `rate` events/s in aggregate for `duration` (each publisher thread
//      has its own Redis connection and a share of the sessions; event.time is the
//      moment of publishing) and measures every delivery: latency = receive time -
//      event.time (one machine, one realtime clock), the delivered rate, and the CPU of
//      the gateway (utime+stime from /proc, per thread too), of Redis and of this
//      process over the same wall time;
//   5. searches (`search_steps` short runs) for the highest rate the gateway keeps up
//      with — everything delivered, p99 <= `target_p99` (50 ms): doubling or halving
//      the rate until that is bracketed, then bisecting, and halving on past the steps
//      while nothing was kept up with; the highest delivered rate it kept up with is
//      max_sustained_per_s. Optionally before the run a light-load phase
//      (--floor_deliveries_per_s: its p99 is the machine's floor) and after the search a
//      phase at half the highest rate kept up with (--half_rate).
// Each event's turn_id names its phase, so a late delivery is never counted in the
// wrong phase. Every stream also checks that its seqs arrive in order without gaps.
//
// `bare_result` is this tool's own --json_result line from a run against
// bench/bare_stream_server (gRPC and a Redis PSUBSCRIBE, nothing else): the ceiling for
// a gRPC fan-out on this machine; ratio_vs_bare = max_sustained_per_s / the bare one's.
//
// `cluster_result` is this tool's own --json_result line from a run of the same workload
// against a gateway on a six-node Redis Cluster (PARLEY_BENCH_REDIS=cluster):
// cluster_ratio = its max_sustained_per_s / this run's (the single server's).
//
// `mux_result`, `mux_bare_result` and `mux_peer_result` are the JSON lines of the
// multiplexed workload against the gateway, the bare server and Socket.IO (loadgen.js
// --sockets); their figures go into the RESULT line as mux_*, with the gateway's CPU
// per 1,000 deliveries (gateway_cpu_us_per_1k) and the load generator's.
//
// `peer_result` is the JSON line of bench/socketio/loadgen.js for the same workload;
// its numbers go into the RESULT line. ratio_vs_peer = max_sustained_per_s / the peer's
// (what each delivers within the target p99); ratio_at_rate = delivered_per_s / the
// peer's at the same offered rate.
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/events/publisher.h"
#include "common/proto_time.h"
#include "common/redis.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "parley/v1/parley.grpc.pb.h"

namespace {

using parley::v1::StreamEventsResponse;

struct BenchConfig {
  std::string gateway_addr;
  std::string store_addr;
  std::string redis_url = "redis://127.0.0.1:6379";
  std::string redis_key_prefix;
  std::string api_key;
  std::string tenant = "bench";
  int64_t gateway_pid = 0;
  int64_t redis_pid = 0;
  int64_t subscribers = 10000;
  int64_t sessions = 1000;
  int64_t channels = 48;
  // 0: each subscriber is a StreamEvents call; N: subscribers are subscriptions carried
  // by N Subscribe streams (subscriber k on stream k % N).
  int64_t mux_streams = 0;
  int64_t publishers = 4;
  int64_t rate = 2000;  // Events/s published, in aggregate.
  absl::Duration duration = absl::Seconds(20);
  int64_t text_bytes = 32;
  int64_t publish_wait_replicas = -1;  // -1: the publisher's default (WAIT 1 on a cluster).
  int64_t search_steps = 0;
  absl::Duration search_step_duration = absl::Seconds(5);
  absl::Duration target_p99 = absl::Milliseconds(50);
  // Before the run: a light-load phase at this many deliveries/s, whose p99 is the
  // floor of publish-to-receipt latency on this machine (0: none).
  int64_t floor_deliveries_per_s = 0;
  // After the search: a phase at half the highest rate kept up with, for its p99.
  bool half_rate = false;
  // --json_result lines of the multiplexed workload: Parley, bare gRPC, Socket.IO.
  std::string mux_result;
  std::string mux_bare_result;
  std::string mux_peer_result;
  absl::Duration warmup_timeout = absl::Seconds(90);
  std::string peer_result;
  std::string bare_result;     // bare_stream_server's JSON line from a run of this tool.
  std::string json_result;     // Where to write this run's JSON line (empty: nowhere).
  std::string cluster_result;  // The same workload's JSON line on a Redis Cluster.
  std::string label = "parley";
};

// ---------------------------------------------------------------------------------
// Latency histogram: lock-free, fixed buckets (5 us to 10 ms, 0.5 ms to 1 s, 10 ms
// beyond), so recording costs one relaxed atomic add on any callback thread.

class LatencyHistogram {
 public:
  void Record(int64_t us) {
    buckets_[Bucket(std::max<int64_t>(us, 0))].fetch_add(1, std::memory_order_relaxed);
  }

  int64_t Count() const {
    int64_t total = 0;
    for (const auto& bucket : buckets_) total += bucket.load(std::memory_order_relaxed);
    return total;
  }

  // The upper bound of the bucket holding quantile `q`, in milliseconds.
  double QuantileMs(double q) const {
    const int64_t total = Count();
    if (total == 0) return 0;
    const int64_t rank = std::max<int64_t>(1, static_cast<int64_t>(q * static_cast<double>(total)));
    int64_t seen = 0;
    for (size_t i = 0; i < buckets_.size(); ++i) {
      seen += buckets_[i].load(std::memory_order_relaxed);
      if (seen >= rank) return static_cast<double>(UpperBoundUs(i)) / 1000.0;
    }
    return static_cast<double>(UpperBoundUs(buckets_.size() - 1)) / 1000.0;
  }

 private:
  static constexpr int64_t kFine = 2000;    // 5 us each, up to 10 ms.
  static constexpr int64_t kMedium = 1980;  // 0.5 ms each, up to 1 s.
  static constexpr int64_t kCoarse = 1000;  // 10 ms each, up to 11 s.

  static size_t Bucket(int64_t us) {
    if (us < 10'000) return static_cast<size_t>(us / 5);
    if (us < 1'000'000) return static_cast<size_t>(kFine + (us - 10'000) / 500);
    return static_cast<size_t>(kFine + kMedium +
                               std::min<int64_t>((us - 1'000'000) / 10'000, kCoarse - 1));
  }
  static int64_t UpperBoundUs(size_t i) {
    const auto n = static_cast<int64_t>(i);
    if (n < kFine) return (n + 1) * 5;
    if (n < kFine + kMedium) return 10'000 + (n - kFine + 1) * 500;
    return 1'000'000 + (n - kFine - kMedium + 1) * 10'000;
  }

  std::array<std::atomic<int64_t>, kFine + kMedium + kCoarse> buckets_{};
};

// What one phase (warm-up, the measured run, a search step) saw.
struct PhaseStats {
  std::atomic<int64_t> delivered{0};            // Every delivery of this phase's events.
  std::atomic<int64_t> delivered_in_window{0};  // ... received before the phase ended.
  std::atomic<int64_t> window_end_unix_us{INT64_MAX};
  LatencyHistogram latency;
};

constexpr int kMaxPhases = 32;

struct Recorder {
  std::array<PhaseStats, kMaxPhases> phases;
  std::atomic<int64_t> warm_streams{0};  // Streams that received the warm-up event.
  std::atomic<int64_t> order_errors{0};  // A seq out of order or a gap.
  std::atomic<int64_t> streams_done{0};
  absl::Mutex mu;
  std::map<std::string, int64_t> done_codes ABSL_GUARDED_BY(mu);  // Why streams ended.
};

// One delivery of `event` to a subscriber whose previous seq was `last_seq`: its order,
// its phase, its latency. Called on gRPC's callback threads.
void RecordDelivery(Recorder& recorder, uint64_t& last_seq, const parley::v1::Event& event) {
  const int64_t now_us = absl::ToUnixMicros(absl::Now());
  if (last_seq != 0 && event.seq() != last_seq + 1) {
    recorder.order_errors.fetch_add(1, std::memory_order_relaxed);
  }
  last_seq = event.seq();
  int phase = 0;
  if (event.turn_id().size() < 2 || !absl::SimpleAtoi(event.turn_id().substr(1), &phase) ||
      phase < 0 || phase >= kMaxPhases) {
    return;
  }
  if (phase == 0) {
    recorder.warm_streams.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  PhaseStats& stats = recorder.phases[phase];
  const int64_t sent_us = absl::ToUnixMicros(parley::FromTimestamp(event.time()));
  stats.latency.Record(now_us - sent_us);
  stats.delivered.fetch_add(1, std::memory_order_relaxed);
  if (now_us <= stats.window_end_unix_us.load(std::memory_order_relaxed)) {
    stats.delivered_in_window.fetch_add(1, std::memory_order_relaxed);
  }
}

void RecordEnd(Recorder& recorder, const std::string& why, int64_t subscribers) {
  {
    absl::MutexLock lock(&recorder.mu);
    recorder.done_codes[why] += subscribers;
  }
  recorder.streams_done.fetch_add(subscribers);
}

// ---------------------------------------------------------------------------------
// One subscriber: a StreamEvents call read by a reactor on gRPC's callback threads.

class Subscriber final : public grpc::ClientReadReactor<StreamEventsResponse> {
 public:
  Subscriber(Recorder& recorder, const std::string& api_key, const std::string& session_id)
      : recorder_(recorder) {
    context_.AddMetadata("authorization", "Bearer " + api_key);
    request_.set_session_id(session_id);
    request_.set_after_seq(0);
  }

  void Start(parley::v1::SessionService::Stub& stub) {
    stub.async()->StreamEvents(&context_, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  void Cancel() { context_.TryCancel(); }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows.
    if (response_.has_event()) RecordDelivery(recorder_, last_seq_, response_.event());
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    RecordEnd(recorder_, absl::StrCat(status.error_code(), ":", status.error_message()), 1);
  }

 private:
  Recorder& recorder_;
  grpc::ClientContext context_;
  parley::v1::StreamEventsRequest request_;
  StreamEventsResponse response_;
  uint64_t last_seq_ = 0;  // Callbacks of one reactor never overlap.
};

// ---------------------------------------------------------------------------------
// Many subscribers over one Subscribe stream: subscription i watches sessions[i] and is
// named by its index; the adds go out one write at a time, then the stream only reads.

class MuxSubscriber final
    : public grpc::ClientBidiReactor<parley::v1::SubscribeRequest, parley::v1::SubscribeResponse> {
 public:
  MuxSubscriber(Recorder& recorder, const std::string& api_key, std::vector<std::string> sessions)
      : recorder_(recorder), sessions_(std::move(sessions)), last_seq_(sessions_.size(), 0) {
    context_.AddMetadata("authorization", "Bearer " + api_key);
  }

  void Start(parley::v1::SessionService::Stub& stub) {
    stub.async()->Subscribe(&context_, this);
    StartRead(&response_);
    WriteNextAdd();
    StartCall();
  }

  void Cancel() { context_.TryCancel(); }

  void OnWriteDone(bool ok) override {
    if (ok) WriteNextAdd();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows.
    for (const parley::v1::Delivery& delivery : response_.deliveries()) {
      size_t index = 0;
      if (!absl::SimpleAtoi(delivery.subscription_id(), &index) || index >= sessions_.size()) {
        continue;
      }
      if (delivery.has_event()) RecordDelivery(recorder_, last_seq_[index], delivery.event());
      if (delivery.has_ended()) {
        ++ended_;
        RecordEnd(recorder_, absl::StrCat(delivery.ended().code(), ":", delivery.ended().message()),
                  1);
      }
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    RecordEnd(recorder_, absl::StrCat("stream ", status.error_code(), ":", status.error_message()),
              static_cast<int64_t>(sessions_.size()) - ended_);
  }

 private:
  void WriteNextAdd() {
    if (next_add_ == sessions_.size()) return;
    request_.Clear();
    request_.mutable_add()->set_subscription_id(absl::StrCat(next_add_));
    request_.mutable_add()->mutable_request()->set_session_id(sessions_[next_add_]);
    request_.mutable_add()->mutable_request()->set_after_seq(0);
    ++next_add_;
    StartWrite(&request_);
  }

  Recorder& recorder_;
  grpc::ClientContext context_;
  const std::vector<std::string> sessions_;
  std::vector<uint64_t> last_seq_;  // Per subscription; callbacks of one reactor never overlap.
  size_t next_add_ = 0;             // Only OnWriteDone and Start touch it, never at once.
  int64_t ended_ = 0;
  parley::v1::SubscribeRequest request_;
  parley::v1::SubscribeResponse response_;
};

// ---------------------------------------------------------------------------------
// Publishers: each thread owns a Redis connection, an EventPublisher and the sessions
// i with i % publishers == its index, and publishes round-robin over them.

class PublisherThread {
 public:
  PublisherThread(std::unique_ptr<parley::RedisConnection> redis,
                  const parley::PublisherOptions& options, std::vector<std::string> sessions,
                  std::string text)
      : redis_(std::move(redis)),
        publisher_(*redis_, options, parley::RealClock::Get()),
        sessions_(std::move(sessions)),
        last_seq_(sessions_.size(), 0),
        text_(std::move(text)) {}

  absl::Status AcquireLeases(const std::string& owner) {
    for (size_t i = 0; i < sessions_.size(); ++i) {
      absl::StatusOr<uint64_t> last = publisher_.AcquireLease(sessions_[i], owner, 1);
      if (!last.ok()) return last.status();
      last_seq_[i] = *last;
    }
    return absl::OkStatus();
  }

  // One event on every session.
  absl::Status PublishRound(int phase) {
    for (size_t i = 0; i < sessions_.size(); ++i) {
      if (absl::Status status = PublishOne(i, phase); !status.ok()) return status;
    }
    return absl::OkStatus();
  }

  // `events_per_s` events/s until `until`; returns how many were published. When
  // Redis cannot keep up the thread publishes back to back (the achieved rate shows).
  absl::StatusOr<int64_t> PublishPaced(int phase, double events_per_s, absl::Time until) {
    const absl::Time start = absl::Now();
    const absl::Duration interval = absl::Seconds(1.0 / events_per_s);
    int64_t published = 0;
    size_t next_session = 0;
    for (;;) {
      const absl::Time due = start + interval * published;
      if (due >= until) break;
      const absl::Time now = absl::Now();
      if (now >= until) break;
      if (due > now) absl::SleepFor(due - now);
      if (absl::Status status = PublishOne(next_session, phase); !status.ok()) return status;
      next_session = (next_session + 1) % sessions_.size();
      ++published;
    }
    return published;
  }

 private:
  absl::Status PublishOne(size_t i, int phase) {
    parley::v1::Event event;
    event.set_session_id(sessions_[i]);
    event.set_seq(last_seq_[i] + 1);
    event.set_epoch(1);
    event.set_turn_id(absl::StrCat("p", phase));
    event.mutable_text_delta()->set_text(text_);
    *event.mutable_time() = parley::ToTimestamp(absl::Now());
    absl::Status status = publisher_.Publish(event, 1);
    if (status.ok()) ++last_seq_[i];
    return status;
  }

  std::unique_ptr<parley::RedisConnection> redis_;
  parley::EventPublisher publisher_;
  std::vector<std::string> sessions_;
  std::vector<uint64_t> last_seq_;
  std::string text_;
};

// ---------------------------------------------------------------------------------
// /proc readings.

int64_t RssKib(int64_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    int64_t kib = 0;
    if (line.rfind("VmRSS:", 0) == 0 &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::StripSuffix(line.substr(6), "kB")),
                         &kib)) {
      return kib;
    }
  }
  return 0;
}

// utime + stime in clock ticks from a /proc stat file (fields 14 and 15).
int64_t CpuTicks(const std::string& stat_path) {
  std::ifstream file(stat_path);
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream fields(text.substr(paren + 2));
  std::string field;
  int64_t utime = 0, stime = 0;
  for (int index = 3; fields >> field; ++index) {
    if (index == 14) (void)absl::SimpleAtoi(field, &utime);
    if (index == 15) {
      (void)absl::SimpleAtoi(field, &stime);
      break;
    }
  }
  return utime + stime;
}

int64_t ProcessTicks(int64_t pid) {
  if (pid <= 0) return 0;
  return CpuTicks(absl::StrCat("/proc/", pid, "/stat"));
}

// Per-thread CPU ticks of a process, by tid, with the thread's name.
struct ThreadTicks {
  std::string name;
  int64_t ticks = 0;
};
std::map<int64_t, ThreadTicks> ThreadTicksOf(int64_t pid) {
  std::map<int64_t, ThreadTicks> threads;
  if (pid <= 0) return threads;
  const std::string task_dir = absl::StrCat("/proc/", pid, "/task");
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(task_dir, error)) {
    int64_t tid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &tid)) continue;
    std::ifstream comm(entry.path() / "comm");
    std::string name;
    std::getline(comm, name);
    if (tid == pid) name = "main";
    threads[tid] = {name, CpuTicks((entry.path() / "stat").string())};
  }
  return threads;
}

// "name(tid) 61%, ..." for the busiest threads between two readings.
std::string BusiestThreads(const std::map<int64_t, ThreadTicks>& before,
                           const std::map<int64_t, ThreadTicks>& after, double wall_s, int top) {
  const double ticks_per_s = static_cast<double>(sysconf(_SC_CLK_TCK));
  std::vector<std::pair<double, std::string>> busy;
  for (const auto& [tid, reading] : after) {
    auto it = before.find(tid);
    const int64_t delta = reading.ticks - (it == before.end() ? 0 : it->second.ticks);
    if (delta <= 0) continue;
    busy.emplace_back(100.0 * delta / ticks_per_s / wall_s,
                      absl::StrCat(reading.name, "(", tid, ")"));
  }
  std::sort(busy.rbegin(), busy.rend());
  std::vector<std::string> parts;
  for (int i = 0; i < static_cast<int>(busy.size()) && i < top; ++i) {
    parts.push_back(absl::StrFormat("%s %.0f%%", busy[i].second, busy[i].first));
  }
  return parts.empty() ? "-" : absl::StrJoin(parts, ", ");
}

// The whole machine's busy and stolen (by the hypervisor) clock ticks, from /proc/stat:
// what else ran during a phase shows as machine CPU beyond the processes measured.
struct MachineTicks {
  int64_t busy = 0;
  int64_t steal = 0;
};
MachineTicks ReadMachineTicks() {
  std::ifstream file("/proc/stat");
  std::string cpu;
  int64_t user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  file >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  return {.busy = user + nice + system + irq + softirq, .steal = steal};
}

// CPU use of a process over a wall interval, in cores.
class CpuMeter {
 public:
  explicit CpuMeter(int64_t pid) : pid_(pid), start_ticks_(ProcessTicks(pid)) {}
  double Cores(double wall_s) const {
    if (pid_ <= 0 || wall_s <= 0) return 0;
    return static_cast<double>(ProcessTicks(pid_) - start_ticks_) /
           static_cast<double>(sysconf(_SC_CLK_TCK)) / wall_s;
  }

 private:
  int64_t pid_;
  int64_t start_ticks_;
};

// ---------------------------------------------------------------------------------
// The run.

struct PhaseResult {
  double rate = 0;  // Offered, events/s.
  double wall_s = 0;
  int64_t published = 0;
  int64_t expected = 0;  // Deliveries owed: published x subscribers of each session.
  int64_t delivered = 0;
  int64_t delivered_in_window = 0;
  double p50_ms = 0, p99_ms = 0, p999_ms = 0, max_ms = 0;
  double gateway_cpu = 0, redis_cpu = 0, client_cpu = 0;
  double machine_cpu = 0, steal_cpu = 0;  // All processes; what the hypervisor took.
  std::string gateway_threads;

  double delivered_per_s() const { return wall_s > 0 ? delivered_in_window / wall_s : 0; }
  double published_per_s() const { return wall_s > 0 ? published / wall_s : 0; }
  double delivered_ratio() const {
    return expected > 0 ? static_cast<double>(delivered) / expected : 0;
  }
};

class FanoutBench {
 public:
  explicit FanoutBench(BenchConfig config) : config_(std::move(config)) {}

  absl::Status Setup();
  absl::Status OpenSubscribers();
  absl::Status WarmUp();
  absl::StatusOr<PhaseResult> RunPhase(int phase, double rate, absl::Duration duration);
  void Close();

  int64_t rss_before_kib() const { return rss_before_kib_; }
  int64_t rss_idle_kib() const { return rss_idle_kib_; }
  int64_t live_subscribers() const { return live_subscribers_; }
  Recorder& recorder() { return recorder_; }

 private:
  absl::Status CreateSessions();

  const BenchConfig config_;
  Recorder recorder_;
  std::vector<std::string> sessions_;
  std::vector<std::unique_ptr<PublisherThread>> publishers_;
  std::vector<std::unique_ptr<parley::v1::SessionService::Stub>> stubs_;
  std::vector<std::unique_ptr<Subscriber>> subscribers_;
  std::vector<std::unique_ptr<MuxSubscriber>> mux_subscribers_;
  int64_t rss_before_kib_ = 0;
  int64_t rss_idle_kib_ = 0;
  int64_t live_subscribers_ = 0;
};

absl::Status FanoutBench::CreateSessions() {
  auto store = parley::store::v1::StoreService::NewStub(
      grpc::CreateChannel(config_.store_addr, grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    parley::store::v1::CreateTenantRequest request;
    request.set_tenant_id(config_.tenant);
    parley::store::v1::CreateTenantResponse response;
    grpc::Status status = store->CreateTenant(&context, request, &response);
    if (!status.ok() && status.error_code() != grpc::StatusCode::ALREADY_EXISTS) {
      return absl::UnavailableError("CreateTenant: " + status.error_message());
    }
  }
  sessions_.resize(config_.sessions);
  constexpr int kThreads = 4;
  std::atomic<int> failures{0};
  std::string first_error;
  absl::Mutex error_mu;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int64_t i = t; i < config_.sessions; i += kThreads) {
        grpc::ClientContext context;
        context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
        parley::store::v1::CreateSessionRequest request;
        request.set_tenant_id(config_.tenant);
        parley::store::v1::CreateSessionResponse response;
        grpc::Status status = store->CreateSession(&context, request, &response);
        if (!status.ok()) {
          failures.fetch_add(1);
          absl::MutexLock lock(&error_mu);
          if (first_error.empty()) first_error = status.error_message();
          return;
        }
        sessions_[i] = response.session().id();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  if (failures.load() > 0) return absl::UnavailableError("CreateSession: " + first_error);
  return absl::OkStatus();
}

absl::Status FanoutBench::Setup() {
  if (absl::Status status = CreateSessions(); !status.ok()) return status;
  absl::StatusOr<parley::RedisEndpoint> endpoint = parley::ParseRedisUrl(config_.redis_url);
  if (!endpoint.ok()) return endpoint.status();
  const std::string text(static_cast<size_t>(config_.text_bytes), 'x');
  const parley::PublisherOptions options{
      .key_prefix = config_.redis_key_prefix,
      .wait_replicas = config_.publish_wait_replicas < 0
                           ? std::nullopt
                           : std::optional<int>(config_.publish_wait_replicas)};
  for (int64_t p = 0; p < config_.publishers; ++p) {
    std::vector<std::string> mine;
    for (int64_t i = p; i < config_.sessions; i += config_.publishers) mine.push_back(sessions_[i]);
    absl::StatusOr<std::unique_ptr<parley::RedisConnection>> redis =
        parley::RedisConnection::Connect(*endpoint, absl::Seconds(2));
    if (!redis.ok()) return redis.status();
    publishers_.push_back(
        std::make_unique<PublisherThread>(*std::move(redis), options, std::move(mine), text));
    if (absl::Status status = publishers_.back()->AcquireLeases(absl::StrCat("bench-", p));
        !status.ok()) {
      return status;
    }
  }
  return absl::OkStatus();
}

absl::Status FanoutBench::OpenSubscribers() {
  rss_before_kib_ = RssKib(config_.gateway_pid);
  for (int64_t c = 0; c < config_.channels; ++c) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.channel_id", static_cast<int>(c));  // A connection per channel.
    stubs_.push_back(parley::v1::SessionService::NewStub(
        grpc::CreateCustomChannel(config_.gateway_addr, grpc::InsecureChannelCredentials(), args)));
  }
  if (config_.mux_streams > 0) {
    std::vector<std::vector<std::string>> watched(config_.mux_streams);
    for (int64_t k = 0; k < config_.subscribers; ++k) {
      watched[k % config_.mux_streams].push_back(sessions_[k % config_.sessions]);
    }
    for (int64_t m = 0; m < config_.mux_streams; ++m) {
      mux_subscribers_.push_back(
          std::make_unique<MuxSubscriber>(recorder_, config_.api_key, std::move(watched[m])));
      mux_subscribers_.back()->Start(*stubs_[m % config_.channels]);
    }
    return absl::OkStatus();
  }
  subscribers_.reserve(config_.subscribers);
  for (int64_t k = 0; k < config_.subscribers; ++k) {
    subscribers_.push_back(
        std::make_unique<Subscriber>(recorder_, config_.api_key, sessions_[k % config_.sessions]));
    subscribers_.back()->Start(*stubs_[k % config_.channels]);
  }
  return absl::OkStatus();
}

absl::Status FanoutBench::WarmUp() {
  // One event per session: a stream has it once it is live (or has read it from the
  // hot window while getting there), so all of them having it means all are live.
  for (auto& publisher : publishers_) {
    if (absl::Status status = publisher->PublishRound(0); !status.ok()) return status;
  }
  const absl::Time deadline = absl::Now() + config_.warmup_timeout;
  int64_t last_report = 0;
  absl::Time last_progress = absl::Now();
  while (absl::Now() < deadline) {
    const int64_t warm = recorder_.warm_streams.load();
    const int64_t done = recorder_.streams_done.load();
    if (warm + done >= config_.subscribers) break;
    if (warm != last_report) {
      last_report = warm;
      last_progress = absl::Now();
    }
    if (absl::Now() - last_progress > absl::Seconds(5)) {
      std::cerr << absl::StrFormat("fanout_bench: warm-up: %d of %d streams live, %d ended\n", warm,
                                   config_.subscribers, done);
      last_progress = absl::Now();
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  live_subscribers_ = recorder_.warm_streams.load();
  // Let the gateway finish writing and free what the warm-up left behind.
  absl::SleepFor(absl::Seconds(2));
  rss_idle_kib_ = RssKib(config_.gateway_pid);
  if (live_subscribers_ == 0) return absl::UnavailableError("no stream became live");
  return absl::OkStatus();
}

absl::StatusOr<PhaseResult> FanoutBench::RunPhase(int phase, double rate, absl::Duration duration) {
  PhaseStats& stats = recorder_.phases[phase];
  PhaseResult result;
  result.rate = rate;
  const absl::Time start = absl::Now();
  const absl::Time until = start + duration;
  stats.window_end_unix_us.store(absl::ToUnixMicros(until));
  const auto gateway_threads_before = ThreadTicksOf(config_.gateway_pid);
  const MachineTicks machine_before = ReadMachineTicks();
  CpuMeter gateway_cpu(config_.gateway_pid), redis_cpu(config_.redis_pid),
      client_cpu(static_cast<int64_t>(getpid()));

  std::vector<absl::StatusOr<int64_t>> published(publishers_.size(), int64_t{0});
  std::vector<std::thread> threads;
  const double per_thread = rate / static_cast<double>(publishers_.size());
  for (size_t p = 0; p < publishers_.size(); ++p) {
    threads.emplace_back(
        [&, p] { published[p] = publishers_[p]->PublishPaced(phase, per_thread, until); });
  }
  for (auto& thread : threads) thread.join();
  const double wall_s = absl::ToDoubleSeconds(absl::Now() - start);
  result.wall_s = absl::ToDoubleSeconds(duration);
  result.gateway_cpu = gateway_cpu.Cores(wall_s);
  result.redis_cpu = redis_cpu.Cores(wall_s);
  result.client_cpu = client_cpu.Cores(wall_s);
  const MachineTicks machine_after = ReadMachineTicks();
  const double ticks_per_s = static_cast<double>(sysconf(_SC_CLK_TCK));
  result.machine_cpu =
      static_cast<double>(machine_after.busy - machine_before.busy) / ticks_per_s / wall_s;
  result.steal_cpu =
      static_cast<double>(machine_after.steal - machine_before.steal) / ticks_per_s / wall_s;
  result.gateway_threads =
      BusiestThreads(gateway_threads_before, ThreadTicksOf(config_.gateway_pid), wall_s, 6);
  for (auto& count : published) {
    if (!count.ok()) return count.status();
    result.published += *count;
  }
  result.expected = result.published * live_subscribers_ / config_.sessions;

  // Stragglers: wait for what is still queued (bounded), so that they count in the
  // latencies and do not spill into the next phase.
  const absl::Time drain_deadline = absl::Now() + absl::Seconds(10);
  int64_t seen = -1;
  absl::Time last_progress = absl::Now();
  while (absl::Now() < drain_deadline && stats.delivered.load() < result.expected &&
         absl::Now() - last_progress < absl::Seconds(1)) {
    if (const int64_t now_delivered = stats.delivered.load(); now_delivered != seen) {
      seen = now_delivered;
      last_progress = absl::Now();
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  result.delivered = stats.delivered.load();
  result.delivered_in_window = stats.delivered_in_window.load();
  result.p50_ms = stats.latency.QuantileMs(0.50);
  result.p99_ms = stats.latency.QuantileMs(0.99);
  result.p999_ms = stats.latency.QuantileMs(0.999);
  result.max_ms = stats.latency.QuantileMs(1.0);
  return result;
}

void FanoutBench::Close() {
  for (auto& subscriber : subscribers_) subscriber->Cancel();
  for (auto& subscriber : mux_subscribers_) subscriber->Cancel();
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  while (absl::Now() < deadline && recorder_.streams_done.load() < config_.subscribers) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (recorder_.streams_done.load() < config_.subscribers) {
    // Reactors gRPC still holds must not be freed under it; the process exits next.
    for (auto& subscriber : subscribers_) (void)subscriber.release();
    for (auto& subscriber : mux_subscribers_) (void)subscriber.release();
  }
}

std::string Describe(const PhaseResult& r) {
  return absl::StrFormat(
      "rate %.0f ev/s: published %.0f/s, delivered %.0f/s (%.2f%% of %d owed), "
      "latency p50 %.2f p99 %.2f p999 %.2f max %.1f ms; CPU gateway %.2f, redis %.2f, "
      "bench %.2f, whole machine %.2f (+%.2f stolen) cores\n  gateway threads: %s\n",
      r.rate, r.published_per_s(), r.delivered_per_s(), 100 * r.delivered_ratio(), r.expected,
      r.p50_ms, r.p99_ms, r.p999_ms, r.max_ms, r.gateway_cpu, r.redis_cpu, r.client_cpu,
      r.machine_cpu, r.steal_cpu, r.gateway_threads);
}

// The peer's JSON line: {"delivered_per_s": ..., "p99_ms": ..., ...}.
absl::StatusOr<google::protobuf::Struct> ReadPeer(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError("cannot read " + path);
  std::string line, last;
  while (std::getline(file, line)) {
    if (!line.empty() && line[0] == '{') last = line;
  }
  google::protobuf::Struct peer;
  if (last.empty() || !google::protobuf::util::JsonStringToMessage(last, &peer).ok()) {
    return absl::InvalidArgumentError(path + " holds no JSON result line");
  }
  return peer;
}

double PeerNumber(const google::protobuf::Struct& peer, const std::string& key) {
  auto it = peer.fields().find(key);
  return it == peer.fields().end() ? 0 : it->second.number_value();
}

// " cluster_…" figures for the RESULT line from a run on a Redis Cluster; "" without one.
std::string ClusterText(const std::string& cluster_result, double best_sustained,
                        double delivered_per_s) {
  if (cluster_result.empty()) return "";
  absl::StatusOr<google::protobuf::Struct> cluster = ReadPeer(cluster_result);
  if (!cluster.ok()) {
    std::cerr << "fanout_bench: cluster: " << cluster.status() << "\n";
    return " cluster_max_sustained_per_s=na cluster_ratio=na";
  }
  const double cluster_sustained = PeerNumber(*cluster, "max_sustained_per_s");
  const double cluster_delivered = PeerNumber(*cluster, "delivered_per_s");
  return absl::StrFormat(
      " cluster_delivered_per_s=%.0f cluster_p50_ms=%.2f cluster_p99_ms=%.2f "
      "cluster_gateway_cpu=%.2f cluster_max_sustained_per_s=%.0f cluster_ratio_at_rate=%.2f "
      "cluster_ratio=%.2f",
      cluster_delivered, PeerNumber(*cluster, "p50_ms"), PeerNumber(*cluster, "p99_ms"),
      PeerNumber(*cluster, "server_cpu"), cluster_sustained,
      delivered_per_s > 0 ? cluster_delivered / delivered_per_s : 0.0,
      best_sustained > 0 ? cluster_sustained / best_sustained : 0.0);
}

// Prints why streams ended (status code and message, with counts); returns how many did.
int64_t PrintEndedStreams(Recorder& recorder, const std::string& label, std::ostream& out) {
  absl::MutexLock lock(&recorder.mu);
  int64_t ended = 0;
  for (const auto& [code, count] : recorder.done_codes) {
    ended += count;
    out << label << ": " << count << " streams ended during the run: " << code << "\n";
  }
  return ended;
}

}  // namespace

int main(int argc, char** argv) {
  BenchConfig config;
  parley::Flags flags("fanout_bench",
                      "StreamEvents fan-out: deliveries/s, latency, memory per subscriber.");
  flags.HostPort("gateway_addr", &config.gateway_addr, "the gateway to measure");
  flags.HostPort("store_addr", &config.store_addr, "store-svc, to create the sessions");
  flags.String("redis_url", &config.redis_url, "the gateway's Redis", parley::ValidateRedisUrl);
  flags.String("redis_key_prefix", &config.redis_key_prefix, "the gateway's Redis key prefix");
  flags.String("api_key", &config.api_key, "the gateway's bootstrap API key",
               parley::ValidateNonEmpty);
  flags.String("tenant", &config.tenant, "the gateway's bootstrap tenant",
               parley::ValidateNonEmpty);
  flags.Int("gateway_pid", &config.gateway_pid, "gateway process, for RSS and CPU", 0, 1 << 30);
  flags.Int("redis_pid", &config.redis_pid, "redis-server process, for CPU (0: not measured)", 0,
            1 << 30);
  flags.Int("subscribers", &config.subscribers, "concurrent StreamEvents streams", 1, 1000000);
  flags.Int("sessions", &config.sessions, "sessions the streams watch", 1, 100000);
  flags.Int("channels", &config.channels, "client connections the streams share", 1, 1024);
  flags.Int("mux_streams", &config.mux_streams,
            "0: one StreamEvents call per subscriber; N: the subscribers as subscriptions "
            "over N Subscribe streams",
            0, 1024);
  flags.Int("publishers", &config.publishers,
            "publisher threads, each with its own Redis "
            "connection",
            1, 64);
  flags.Int("rate", &config.rate, "events/s published in aggregate", 1, 10000000);
  flags.Duration("duration", &config.duration, "length of the measured run");
  flags.Int("text_bytes", &config.text_bytes, "text per event (a text delta)", 0, 1 << 20);
  flags.Int("publish_wait_replicas", &config.publish_wait_replicas,
            "replicas each publish waits for (WAIT), as session-svc's --redis_wait_replicas; "
            "-1 = the publisher's default (1 on a Redis Cluster, 0 on a single server)",
            -1, 16);
  flags.Int("search_steps", &config.search_steps,
            "after the run: up to this many short runs at doubling rates", 0, 10);
  flags.Duration("search_step_duration", &config.search_step_duration, "length of a search step");
  flags.Duration("target_p99", &config.target_p99, "the p99 a search step must stay within");
  flags.Duration("warmup_timeout", &config.warmup_timeout, "longest wait for streams to go live");
  flags.String("peer_result", &config.peer_result,
               "file with bench/socketio/loadgen.js's JSON result line (empty: no peer)");
  flags.String("bare_result", &config.bare_result,
               "file with the --json_result line of a run against bench/bare_stream_server "
               "(empty: no ceiling)");
  flags.String("json_result", &config.json_result, "write this run's JSON result line here");
  flags.String("cluster_result", &config.cluster_result,
               "file with the --json_result line of this workload on a Redis Cluster (empty: "
               "no cluster figures)");
  flags.String("label", &config.label, "names the server in progress lines");
  flags.Int("floor_deliveries_per_s", &config.floor_deliveries_per_s,
            "before the run, a light-load phase at this many deliveries/s whose p99 is "
            "reported as floor_p99_ms (0: none)",
            0, 1000000);
  flags.Bool("half_rate", &config.half_rate,
             "after the search, a phase at half the highest rate kept up with (its p99)");
  flags.String("mux_result", &config.mux_result,
               "--json_result of the multiplexed workload against the gateway (empty: none)");
  flags.String("mux_bare_result", &config.mux_bare_result,
               "--json_result of the multiplexed workload against bare_stream_server");
  flags.String("mux_peer_result", &config.mux_peer_result,
               "loadgen.js --sockets JSON line of the multiplexed workload on Socket.IO");
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());
  // Debian's Abseil is built without NDEBUG, so every Mutex acquisition would also update
  // a global lock graph; the load generator must not pay for that.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  if (config.gateway_addr.empty() || config.store_addr.empty()) {
    std::cerr << "fanout_bench: --gateway_addr and --store_addr are required\n";
    return 2;
  }
  config.sessions = std::min(config.sessions, config.subscribers);

  FanoutBench bench(config);
  const absl::Time started = absl::Now();
  if (absl::Status status = bench.Setup(); !status.ok()) {
    std::cerr << "fanout_bench: setup: " << status << "\n";
    return 1;
  }
  (void)bench.OpenSubscribers();
  if (absl::Status status = bench.WarmUp(); !status.ok()) {
    std::cerr << "fanout_bench: warm-up: " << status << "\n";
    PrintEndedStreams(bench.recorder(), config.label, std::cerr);
    bench.Close();
    return 1;
  }
  const double per_sub_kib =
      static_cast<double>(bench.rss_idle_kib() - bench.rss_before_kib()) / config.subscribers;
  std::cout << absl::StrFormat(
                   "%s: %d of %d streams live over %d sessions and %d connections after %.1f "
                   "s; gateway "
                   "RSS %d KiB before, %d KiB idle with them: %.2f KiB per subscriber\n",
                   config.label, bench.live_subscribers(), config.subscribers, config.sessions,
                   config.channels, absl::ToDoubleSeconds(absl::Now() - started),
                   bench.rss_before_kib(), bench.rss_idle_kib(), per_sub_kib)
            << std::flush;

  int next_phase = 1;
  double floor_p99_ms = 0;
  if (config.floor_deliveries_per_s > 0) {
    // Deliveries/s = events/s x live subscribers / sessions.
    const double floor_rate = static_cast<double>(config.floor_deliveries_per_s) *
                              static_cast<double>(config.sessions) /
                              static_cast<double>(std::max<int64_t>(bench.live_subscribers(), 1));
    absl::StatusOr<PhaseResult> floor =
        bench.RunPhase(next_phase++, floor_rate, config.search_step_duration);
    if (floor.ok()) {
      floor_p99_ms = floor->p99_ms;
      std::cout << config.label << " floor: " << Describe(*floor) << std::flush;
    }
  }
  absl::StatusOr<PhaseResult> main_run =
      bench.RunPhase(next_phase++, static_cast<double>(config.rate), config.duration);
  if (!main_run.ok()) {
    std::cerr << "fanout_bench: publishing: " << main_run.status() << "\n";
    bench.Close();
    return 1;
  }
  std::cout << config.label << ": " << Describe(*main_run) << std::flush;

  // Search: bracket the highest rate the gateway keeps up with (everything delivered, p99
  // within the target) — doubling while it keeps up, halving while it does not — then
  // bisect the bracket; the highest rate kept up with is max_sustained_per_s. While
  // nothing was kept up with, halving goes on past search_steps (up to 8 more), so a slow
  // machine still yields a rate to compare. Same rule in bench/socketio/loadgen.js.
  const double target_p99_ms = absl::ToDoubleMilliseconds(config.target_p99);
  auto sustained = [&](const PhaseResult& r) {
    return r.delivered_ratio() >= 0.99 && r.published_per_s() >= 0.95 * r.rate &&
           r.p99_ms <= target_p99_ms;
  };
  const bool main_sustained = sustained(*main_run);
  double best_sustained = main_sustained ? main_run->delivered_per_s() : 0;
  const double main_rate = static_cast<double>(config.rate);
  double kept_up = main_sustained ? main_rate : 0;      // Highest rate kept up with so far.
  double fell_behind = main_sustained ? 0 : main_rate;  // Lowest rate that was too much; 0: none.
  for (int step = 0;
       (step < config.search_steps || (kept_up == 0 && step < config.search_steps + 8)) &&
       next_phase + 1 < kMaxPhases;
       ++step) {
    double rate = (kept_up + fell_behind) / 2;
    if (fell_behind == 0) rate = kept_up * 2;
    if (kept_up == 0) rate = fell_behind / 2;
    if (rate < 1) break;
    absl::StatusOr<PhaseResult> r = bench.RunPhase(next_phase++, rate, config.search_step_duration);
    if (!r.ok()) break;
    std::cout << config.label << " search: " << Describe(*r) << std::flush;
    if (sustained(*r)) {
      best_sustained = std::max(best_sustained, r->delivered_per_s());
      kept_up = rate;
    } else {
      fell_behind = rate;
    }
  }
  double half_rate_p99_ms = 0;
  if (config.half_rate && kept_up > 0) {
    absl::StatusOr<PhaseResult> half =
        bench.RunPhase(next_phase++, kept_up / 2, config.search_step_duration);
    if (half.ok()) {
      half_rate_p99_ms = half->p99_ms;
      std::cout << config.label << " half rate: " << Describe(*half) << std::flush;
    }
  }

  const int64_t ended_early = PrintEndedStreams(bench.recorder(), config.label, std::cout);
  const int64_t order_errors = bench.recorder().order_errors.load();
  bench.Close();

  const PhaseResult& r = *main_run;
  // CPU per 1,000 deliveries of the main run, in microseconds.
  auto us_per_1k = [&](double cores) {
    return r.delivered_per_s() > 0 ? cores * 1e9 / r.delivered_per_s() : 0;
  };
  if (!config.json_result.empty()) {
    std::ofstream(config.json_result) << absl::StrFormat(
        "{\"delivered_per_s\": %.1f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"p999_ms\": %.3f, "
        "\"rss_per_sub_kib\": %.3f, \"server_cpu\": %.3f, \"max_sustained_per_s\": %.1f, "
        "\"floor_p99_ms\": %.3f, \"half_rate_p99_ms\": %.3f, \"server_cpu_us_per_1k\": %.1f, "
        "\"redis_cpu_us_per_1k\": %.1f, \"loadgen_cpu_us_per_1k\": %.1f, \"loadgen_cpu\": %.3f, "
        "\"machine_cpu\": %.3f, \"order_errors\": %d, \"ended\": %d}\n",
        r.delivered_per_s(), r.p50_ms, r.p99_ms, r.p999_ms, per_sub_kib, r.gateway_cpu,
        best_sustained, floor_p99_ms, half_rate_p99_ms, us_per_1k(r.gateway_cpu),
        us_per_1k(r.redis_cpu), us_per_1k(r.client_cpu), r.client_cpu, r.machine_cpu, order_errors,
        ended_early);
  }

  // ratio_vs_peer compares what each system delivers within the target p99 (the
  // highest rate its search kept up with); ratio_at_rate compares the delivered rates
  // at the same offered rate. "na" only where a side kept up with no rate at all.
  auto ratio = [](double ours, double theirs) {
    return ours > 0 && theirs > 0 ? absl::StrFormat("%.2f", ours / theirs) : std::string("na");
  };
  auto read = [](const std::string& path,
                 const char* what) -> std::optional<google::protobuf::Struct> {
    if (path.empty()) return std::nullopt;
    absl::StatusOr<google::protobuf::Struct> json = ReadPeer(path);
    if (json.ok()) return *std::move(json);
    std::cerr << "fanout_bench: " << what << ": " << json.status() << "\n";
    return std::nullopt;
  };
  std::string peer_text =
      "peer_delivered_per_s=na peer_p50_ms=na peer_p99_ms=na peer_p999_ms=na "
      "peer_max_sustained_per_s=na ratio_at_rate=na ratio_vs_peer=na";
  if (auto peer = read(config.peer_result, "peer")) {
    const double peer_rate = PeerNumber(*peer, "delivered_per_s");
    const double peer_sustained = PeerNumber(*peer, "max_sustained_per_s");
    peer_text = absl::StrFormat(
        "peer_delivered_per_s=%.0f peer_p50_ms=%.2f peer_p99_ms=%.2f peer_p999_ms=%.2f "
        "peer_rss_per_sub_kib=%.2f peer_server_cpu=%.2f peer_max_sustained_per_s=%.0f "
        "ratio_at_rate=%s ratio_vs_peer=%s",
        peer_rate, PeerNumber(*peer, "p50_ms"), PeerNumber(*peer, "p99_ms"),
        PeerNumber(*peer, "p999_ms"), PeerNumber(*peer, "rss_per_sub_kib"),
        PeerNumber(*peer, "server_cpu"), peer_sustained, ratio(r.delivered_per_s(), peer_rate),
        ratio(best_sustained, peer_sustained));
  }
  // The ceiling: the same workload through bare gRPC (bench/bare_stream_server).
  // ratio_vs_bare = what Parley keeps up with / what bare gRPC keeps up with. Its light
  // load p99 is the machine's floor.
  std::string bare_text =
      "bare_delivered_per_s=na bare_p99_ms=na bare_rss_per_sub_kib=na bare_server_cpu=na "
      "bare_max_sustained_per_s=na ratio_vs_bare=na floor_p99_ms=na";
  if (auto bare = read(config.bare_result, "bare")) {
    const double bare_sustained = PeerNumber(*bare, "max_sustained_per_s");
    bare_text = absl::StrFormat(
        "bare_delivered_per_s=%.0f bare_p99_ms=%.2f bare_rss_per_sub_kib=%.2f "
        "bare_server_cpu=%.2f bare_max_sustained_per_s=%.0f ratio_vs_bare=%s floor_p99_ms=%.2f",
        PeerNumber(*bare, "delivered_per_s"), PeerNumber(*bare, "p99_ms"),
        PeerNumber(*bare, "rss_per_sub_kib"), PeerNumber(*bare, "server_cpu"), bare_sustained,
        ratio(best_sustained, bare_sustained), PeerNumber(*bare, "floor_p99_ms"));
  }
  // The multiplexed workload, run before this one: Parley's Subscribe, its bare gRPC
  // ceiling and Socket.IO over as many sockets.
  std::string mux_text;
  if (auto mux = read(config.mux_result, "mux")) {
    const double mux_sustained = PeerNumber(*mux, "max_sustained_per_s");
    auto mux_bare = read(config.mux_bare_result, "mux bare");
    auto mux_peer = read(config.mux_peer_result, "mux peer");
    const double bare_sustained = mux_bare ? PeerNumber(*mux_bare, "max_sustained_per_s") : 0;
    const double peer_sustained = mux_peer ? PeerNumber(*mux_peer, "max_sustained_per_s") : 0;
    mux_text = absl::StrFormat(
        " mux_delivered_per_s=%.0f mux_p99_ms=%.2f mux_half_rate_p99_ms=%.2f "
        "mux_rss_per_sub_kib=%.3f mux_bare_max_sustained_per_s=%.0f "
        "mux_peer_max_sustained_per_s=%.0f mux_ratio_vs_peer=%s mux_ratio_vs_bare=%s "
        "gateway_cpu_us_per_1k=%.0f mux_redis_cpu_us_per_1k=%.0f mux_loadgen_cpu_us_per_1k=%.0f "
        "mux_loadgen_cpu=%.2f mux_machine_cpu=%.2f mux_order_errors=%.0f mux_ended=%.0f "
        "mux_peer_server_cpu=%.2f mux_bare_server_cpu_us_per_1k=%.0f",
        mux_sustained, PeerNumber(*mux, "p99_ms"), PeerNumber(*mux, "half_rate_p99_ms"),
        PeerNumber(*mux, "rss_per_sub_kib"), bare_sustained, peer_sustained,
        ratio(mux_sustained, peer_sustained), ratio(mux_sustained, bare_sustained),
        PeerNumber(*mux, "server_cpu_us_per_1k"), PeerNumber(*mux, "redis_cpu_us_per_1k"),
        PeerNumber(*mux, "loadgen_cpu_us_per_1k"), PeerNumber(*mux, "loadgen_cpu"),
        PeerNumber(*mux, "machine_cpu"), PeerNumber(*mux, "order_errors"),
        PeerNumber(*mux, "ended"), mux_peer ? PeerNumber(*mux_peer, "server_cpu") : 0,
        mux_bare ? PeerNumber(*mux_bare, "server_cpu_us_per_1k") : 0);
  }
  std::cout << absl::StrFormat(
      "RESULT name=fanout subscribers=%d sessions=%d live=%d rate=%.0f duration_s=%.0f "
      "published_per_s=%.0f delivered_per_s=%.0f delivered_ratio=%.4f p50_ms=%.2f p99_ms=%.2f "
      "p999_ms=%.2f rss_per_sub_kib=%.2f gateway_cpu=%.2f redis_cpu=%.2f bench_cpu=%.2f "
      "machine_cpu=%.2f target_p99_ms=%.0f "
      "ended=%d order_errors=%d max_sustained_per_s=%.0f %s %s%s%s\n",
      config.subscribers, config.sessions, bench.live_subscribers(), r.rate, r.wall_s,
      r.published_per_s(), r.delivered_per_s(), r.delivered_ratio(), r.p50_ms, r.p99_ms, r.p999_ms,
      per_sub_kib, r.gateway_cpu, r.redis_cpu, r.client_cpu, r.machine_cpu, target_p99_ms,
      ended_early, order_errors, best_sustained, peer_text, bare_text, mux_text,
      ClusterText(config.cluster_result, best_sustained, r.delivered_per_s()));
  return 0;
}
