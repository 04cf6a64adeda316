// runtime_bench: the agent loop's own costs, each against a ceiling measured in the
// same run.
//
//   loop   `turns` concurrent scripted turns on one parley-session (started by
//          scripts/bench with enough slots), each streaming `words` text deltas as fast
//          as it can: deltas_per_s over the window from the first turn's start to the
//          last one's end, and session-svc CPU per delta (its /proc CPU time over the
//          same window).
//   raw    the same Redis appends + publishes (EventPublisher's fenced script, one
//          TextDelta per call) from `raw_threads` threads of this process, one session
//          each: raw_redis_per_s, the ceiling. delta_ratio = deltas_per_s / raw.
//   sse    SseParser over a recorded-like OpenAI chat-completions stream fed in 16 KiB
//          pieces, against a plain line split of the same bytes: sse_mb_per_s, sse_ratio.
//   first  `first_turns` turns one after another on a session whose provider is an
//          OpenAI-compatible fake served by this process on `fake_port` (scripts/bench
//          configures parley-session with it): from the moment the fake writes the first
//          byte of its answer to the moment the first TextDelta reaches a subscriber of
//          the session's Redis channel (what the gateway subscribes to), p50 and p99.
//
//   runtime_bench --store_addr=... --session_addr=... --session_pid=... --redis_url=...
//   ... RESULT name=runtime deltas_per_s=... raw_redis_per_s=... delta_ratio=...
//       cpu_us_per_delta=... sse_mb_per_s=... sse_ratio=...
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/events/publisher.h"
#include "common/proto_time.h"
#include "common/redis.h"
#include "parley/router/v1/router.grpc.pb.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "session-svc/model/sse.h"
#include "tests/runtime/fake_model_server.h"

namespace {

using parley::bench::Percentile;
using parley::bench::ProcessCpu;

namespace store_pb = ::parley::store::v1;
namespace router_pb = ::parley::router::v1;
namespace v1 = ::parley::v1;

constexpr char kTenant[] = "bench";

struct Options {
  std::string store_addr;
  std::string session_addr;
  int64_t session_pid = 0;
  std::string redis_url = "redis://127.0.0.1:6379";
  int64_t turns = 200;
  int64_t words = 1000;
  int64_t raw_threads = 8;
  int64_t raw_events = 20000;  // Per thread.
  int64_t sse_chunks = 200000;
  int64_t fake_port = 0;
  int64_t first_turns = 200;
};

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

template <typename Call>
absl::Status WithDeadline(Call call) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  return FromGrpc(call(&context));
}

struct LoopResult {
  double deltas_per_s = 0;
  double cpu_us_per_delta = 0;
};

absl::StatusOr<LoopResult> MeasureLoop(const Options& o) {
  auto store = store_pb::StoreService::NewStub(
      grpc::CreateChannel(o.store_addr, grpc::InsecureChannelCredentials()));
  auto router = router_pb::SessionRouter::NewStub(
      grpc::CreateChannel(o.session_addr, grpc::InsecureChannelCredentials()));
  store_pb::CreateTenantRequest tenant;
  tenant.set_tenant_id(kTenant);
  store_pb::CreateTenantResponse created_tenant;
  absl::Status status = WithDeadline(
      [&](grpc::ClientContext* c) { return store->CreateTenant(c, tenant, &created_tenant); });
  if (!status.ok()) return status;
  std::vector<std::string> sessions;
  for (int64_t i = 0; i < o.turns; ++i) {
    store_pb::CreateSessionRequest request;
    request.set_tenant_id(kTenant);
    store_pb::CreateSessionResponse response;
    status = WithDeadline(
        [&](grpc::ClientContext* c) { return store->CreateSession(c, request, &response); });
    if (!status.ok()) return status;
    sessions.push_back(response.session().id());
  }
  // Submit every turn, as fast as possible, from a few threads.
  std::vector<std::string> turns(sessions.size());
  const absl::Duration cpu_before = ProcessCpu(o.session_pid);
  std::vector<std::thread> submitters;
  std::atomic<bool> failed{false};
  for (int t = 0; t < 4; ++t) {
    submitters.emplace_back([&, t] {
      for (size_t i = t; i < sessions.size(); i += 4) {
        router_pb::SubmitMessageRequest request;
        request.set_tenant_id(kTenant);
        request.mutable_request()->set_session_id(sessions[i]);
        request.mutable_request()->add_content()->set_text(absl::StrCat("@words ", o.words));
        v1::SendMessageResponse response;
        if (!WithDeadline([&](grpc::ClientContext* c) {
               return router->SubmitMessage(c, request, &response);
             }).ok()) {
          failed = true;
        }
        turns[i] = response.turn().id();
      }
    });
  }
  for (std::thread& t : submitters) t.join();
  if (failed) return absl::UnavailableError("a submit failed");
  // Wait for every turn to end; the window is first start to last end.
  absl::Time first_start = absl::InfiniteFuture(), last_end = absl::InfinitePast();
  for (size_t i = 0; i < turns.size(); ++i) {
    for (const absl::Time deadline = absl::Now() + absl::Minutes(5);;) {
      store_pb::GetTurnRequest request;
      request.set_tenant_id(kTenant);
      request.set_session_id(sessions[i]);
      request.set_turn_id(turns[i]);
      store_pb::GetTurnResponse response;
      status = WithDeadline(
          [&](grpc::ClientContext* c) { return store->GetTurn(c, request, &response); });
      if (!status.ok()) return status;
      const v1::Turn& turn = response.turn();
      if (turn.status() == v1::TURN_STATUS_SUCCEEDED) {
        first_start = std::min(first_start, parley::FromTimestamp(turn.start_time()));
        last_end = std::max(last_end, parley::FromTimestamp(turn.end_time()));
        break;
      }
      if (turn.status() == v1::TURN_STATUS_FAILED || turn.status() == v1::TURN_STATUS_CANCELLED) {
        return absl::InternalError(
            absl::StrCat("turn ", turn.id(), " did not succeed: ", turn.error().message()));
      }
      if (absl::Now() > deadline) return absl::DeadlineExceededError("turns did not finish");
      absl::SleepFor(absl::Milliseconds(20));
    }
  }
  const absl::Duration cpu = ProcessCpu(o.session_pid) - cpu_before;
  const double deltas = static_cast<double>(o.turns * o.words);
  LoopResult result;
  result.deltas_per_s = deltas / absl::ToDoubleSeconds(last_end - first_start);
  result.cpu_us_per_delta = absl::ToDoubleMicroseconds(cpu) / deltas;
  return result;
}

absl::StatusOr<double> MeasureRawRedis(const Options& o) {
  absl::StatusOr<parley::RedisEndpoint> endpoint = parley::ParseRedisUrl(o.redis_url);
  if (!endpoint.ok()) return endpoint.status();
  std::atomic<int64_t> published{0};
  absl::Mutex mu;
  absl::Status first_error;
  std::vector<std::thread> threads;
  const absl::Time start = absl::Now();
  for (int64_t t = 0; t < o.raw_threads; ++t) {
    threads.emplace_back([&, t] {
      auto fail = [&](absl::Status s) {
        absl::MutexLock lock(&mu);
        if (first_error.ok()) first_error = s;
      };
      absl::StatusOr<std::unique_ptr<parley::RedisConnection>> redis =
          parley::RedisConnection::Connect(*endpoint, absl::Seconds(5));
      if (!redis.ok()) return fail(redis.status());
      parley::EventPublisher publisher(**redis, {}, parley::RealClock::Get());
      const std::string session = absl::StrCat("ses_raw_", t);
      absl::StatusOr<uint64_t> last = publisher.AcquireLease(session, "raw", 1, 0);
      if (!last.ok()) return fail(last.status());
      v1::Event event;
      event.set_session_id(session);
      event.set_turn_id("turn_raw");
      event.set_epoch(1);
      for (int64_t i = 0; i < o.raw_events; ++i) {
        event.set_seq(*last + 1 + static_cast<uint64_t>(i));
        event.mutable_text_delta()->set_text(absl::StrCat(" w", i));
        if (absl::Status s = publisher.Publish(event, 1); !s.ok()) return fail(s);
        published.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  if (!first_error.ok()) return first_error;
  return static_cast<double>(published.load()) / absl::ToDoubleSeconds(absl::Now() - start);
}

struct SseResult {
  double mb_per_s = 0;
  double ratio = 0;
};

SseResult MeasureSse(const Options& o) {
  // A stream shaped like OpenAI's: one chunk object per token, blank-line separated.
  std::string stream;
  for (int64_t i = 0; i < o.sse_chunks; ++i) {
    absl::StrAppend(&stream,
                    "data: {\"id\":\"chatcmpl-9Xq2bench\",\"object\":\"chat.completion.chunk\","
                    "\"created\":1733400000,\"model\":\"gpt-4o-mini-2024-07-18\","
                    "\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{\"index\":0,"
                    "\"delta\":{\"content\":\" token",
                    i % 1000, "\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
  }
  stream += "data: [DONE]\n\n";
  constexpr size_t kPiece = 16 << 10;
  auto best_of = [&](const std::function<size_t()>& run) {
    double best = 1e100;
    size_t count = 0;
    for (int round = 0; round < 5; ++round) {
      const absl::Time start = absl::Now();
      count = run();
      best = std::min(best, absl::ToDoubleSeconds(absl::Now() - start));
    }
    if (count == 0) std::cerr << "nothing parsed\n";
    return best;
  };
  const double sse_s = best_of([&] {
    size_t events = 0, bytes = 0;
    parley::session::model::SseParser parser([&](const parley::session::model::SseEvent& e) {
      ++events;
      bytes += e.data.size();
      return true;
    });
    for (size_t at = 0; at < stream.size(); at += kPiece) {
      (void)parser.Feed(absl::string_view(stream).substr(at, kPiece));
    }
    return events + (bytes > 0 ? 0 : 1);
  });
  const double split_s = best_of([&] {
    // The plain reader: split on LF, carrying a partial line between pieces.
    size_t lines = 0, bytes = 0;
    std::string carry;
    for (size_t at = 0; at < stream.size(); at += kPiece) {
      absl::string_view piece = absl::string_view(stream).substr(at, kPiece);
      while (!piece.empty()) {
        const char* lf = static_cast<const char*>(std::memchr(piece.data(), '\n', piece.size()));
        if (lf == nullptr) {
          carry.append(piece.data(), piece.size());
          break;
        }
        const size_t n = static_cast<size_t>(lf - piece.data());
        carry.append(piece.data(), n);
        bytes += carry.size();
        ++lines;
        carry.clear();
        piece.remove_prefix(n + 1);
      }
    }
    return lines + (bytes > 0 ? 0 : 1);
  });
  SseResult result;
  const double mb = static_cast<double>(stream.size()) / (1 << 20);
  result.mb_per_s = mb / sse_s;
  result.ratio = split_s / sse_s;
  std::cerr << absl::StrFormat("sse: %.1f MB, parser %.1f MB/s, line split %.1f MB/s\n", mb,
                               result.mb_per_s, mb / split_s);
  return result;
}

struct FirstDelta {
  double p50_ms = 0;
  double p99_ms = 0;
};

absl::StatusOr<FirstDelta> MeasureFirstDelta(const Options& o) {
  auto server = parley::testing::FakeModelServer::Start(static_cast<int>(o.fake_port));
  if (!server.ok()) return server.status();
  auto store = store_pb::StoreService::NewStub(
      grpc::CreateChannel(o.store_addr, grpc::InsecureChannelCredentials()));
  auto router = router_pb::SessionRouter::NewStub(
      grpc::CreateChannel(o.session_addr, grpc::InsecureChannelCredentials()));
  store_pb::CreateSessionRequest create;
  create.set_tenant_id(kTenant);
  create.mutable_request()->mutable_agent_config()->set_provider("fake");
  store_pb::CreateSessionResponse created;
  absl::Status status = WithDeadline(
      [&](grpc::ClientContext* c) { return store->CreateSession(c, create, &created); });
  if (!status.ok()) return status;
  const std::string session = created.session().id();
  absl::StatusOr<parley::RedisEndpoint> endpoint = parley::ParseRedisUrl(o.redis_url);
  if (!endpoint.ok()) return endpoint.status();
  auto redis = parley::RedisConnection::Connect(*endpoint, absl::Seconds(5));
  if (!redis.ok()) return redis.status();
  parley::RedisKeys keys;
  if (auto sub = (*redis)->Command({"SUBSCRIBE", keys.EventChannel(session)}); !sub.ok()) {
    return sub.status();
  }
  const std::string chunk =
      "data: {\"object\":\"chat.completion.chunk\",\"model\":\"fake\",\"choices\":[{\"index\":0,"
      "\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n";
  const std::string finish =
      "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
      "data: [DONE]\n\n";
  std::vector<double> latencies_ms;
  for (int64_t i = 0; i < o.first_turns; ++i) {
    (*server)->Enqueue({.chunks = {chunk, finish}});
    router_pb::SubmitMessageRequest request;
    request.set_tenant_id(kTenant);
    request.mutable_request()->set_session_id(session);
    request.mutable_request()->add_content()->set_text("hi");
    v1::SendMessageResponse sent;
    status = WithDeadline(
        [&](grpc::ClientContext* c) { return router->SubmitMessage(c, request, &sent); });
    if (!status.ok()) return status;
    std::optional<absl::Time> first_delta;
    for (const absl::Time deadline = absl::Now() + absl::Seconds(30);;) {
      if (absl::Now() > deadline) return absl::DeadlineExceededError("no TurnSealed");
      absl::StatusOr<parley::RedisReply> reply = (*redis)->ReadReplyFor(absl::Milliseconds(100));
      if (!reply.ok()) {
        if (absl::IsDeadlineExceeded(reply.status())) continue;
        return reply.status();
      }
      const absl::Time now = absl::Now();
      const redisReply* r = reply->get();
      if (r->type != REDIS_REPLY_ARRAY || r->elements != 3) continue;
      v1::Event event;
      if (!event.ParseFromString(parley::ReplyString(r->element[2]))) continue;
      if (event.turn_id() != sent.turn().id()) continue;
      if (event.has_text_delta() && !first_delta) first_delta = now;
      if (event.has_turn_completed() &&
          event.turn_completed().status() != v1::TURN_STATUS_SUCCEEDED) {
        return absl::InternalError(
            absl::StrCat("a turn failed: ", event.turn_completed().error().message()));
      }
      if (event.has_turn_sealed()) break;
    }
    std::vector<absl::Time> sent_times = (*server)->first_chunk_times();
    if (!first_delta || sent_times.size() != static_cast<size_t>(i + 1)) {
      return absl::InternalError("the fake provider and the stream disagree");
    }
    latencies_ms.push_back(absl::ToDoubleMilliseconds(*first_delta - sent_times.back()));
  }
  return FirstDelta{.p50_ms = Percentile(latencies_ms, 0.5),
                    .p99_ms = Percentile(latencies_ms, 0.99)};
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  parley::Flags flags("runtime_bench", "The agent loop's throughput and SSE parsing.");
  flags.HostPort("store_addr", &o.store_addr, "parley-store");
  flags.HostPort("session_addr", &o.session_addr, "parley-session");
  flags.Int("session_pid", &o.session_pid, "its pid, for CPU accounting", 1, 1 << 30);
  flags.String("redis_url", &o.redis_url, "the Redis parley-session publishes to");
  flags.Int("turns", &o.turns, "concurrent turns", 1, 100000);
  flags.Int("words", &o.words, "text deltas per turn", 1, 100000);
  flags.Int("raw_threads", &o.raw_threads, "threads of the raw Redis ceiling", 1, 256);
  flags.Int("raw_events", &o.raw_events, "events per raw thread", 1, 10000000);
  flags.Int("sse_chunks", &o.sse_chunks, "chunks of the recorded stream", 1, 10000000);
  flags.Int("fake_port", &o.fake_port,
            "port of the fake OpenAI-compatible provider parley-session is configured with "
            "as \"fake\"; 0 skips the first-delta phase",
            0, 65535);
  flags.Int("first_turns", &o.first_turns, "turns of the first-delta phase", 1, 100000);
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());

  SseResult sse = MeasureSse(o);
  absl::StatusOr<double> raw = MeasureRawRedis(o);
  if (!raw.ok()) {
    std::cerr << "raw redis: " << raw.status() << "\n";
    return 1;
  }
  std::cerr << absl::StrFormat("raw: %.0f appends+publishes/s from %d threads\n", *raw,
                               o.raw_threads);
  absl::StatusOr<LoopResult> loop = MeasureLoop(o);
  if (!loop.ok()) {
    std::cerr << "loop: " << loop.status() << "\n";
    return 1;
  }
  FirstDelta first;
  if (o.fake_port > 0) {
    absl::StatusOr<FirstDelta> measured = MeasureFirstDelta(o);
    if (!measured.ok()) {
      std::cerr << "first delta: " << measured.status() << "\n";
      return 1;
    }
    first = *measured;
  }
  std::cout << absl::StrFormat(
      "RESULT name=runtime deltas_per_s=%.0f raw_redis_per_s=%.0f delta_ratio=%.2f "
      "cpu_us_per_delta=%.1f sse_mb_per_s=%.1f sse_ratio=%.2f first_delta_p50_ms=%.2f "
      "first_delta_p99_ms=%.2f turns=%d words=%d\n",
      loop->deltas_per_s, *raw, loop->deltas_per_s / *raw, loop->cpu_us_per_delta, sse.mb_per_s,
      sse.ratio, first.p50_ms, first.p99_ms, o.turns, o.words);
  return 0;
}
