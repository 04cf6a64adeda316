// store_bench: parley-store's three hot paths, measured through its gRPC API on a
// throwaway database, each against the limit or goal it answers to, in one run:
//
//   append  AppendEvents batches of 1000 TextDelta events (~100 bytes of text each) from
//           `append_threads` clients, each on its own sessions. The limit is psql's \copy
//           of the same number of rows of the same shape (same columns, same payload
//           sizes, other session ids) into the same table, as `append_threads`
//           concurrent psql processes, timed in the same run.
//   list    ListMessages (limit 50; latest, before- and after-cursors at random messages)
//           on a 10,000-message session, one call at a time, in a database holding at
//           least 1M events.
//   claims  `claimers` concurrent workers call ClaimNextTurn until it comes back empty,
//           draining one queued turn from each of `claim_sessions` sessions. A turn
//           handed out twice (or never) is an error.
//
//   store_bench --store_addr=127.0.0.1:7073 --work_dir=/tmp/x
//               --database_url=postgresql://postgres@127.0.0.1:5432/parley
//   ... RESULT name=store append_eps=... copy_eps=... append_ratio=... list_p50_ms=...
//       list_p99_ms=... claims_per_s=...
//
// Fixtures that are not measured (the bulk of the 1M events, the 10k messages) are
// written with SQL straight into the database: through the RPC they would take longer
// than the whole benchmark. Everything measured goes through the RPC, except the COPY,
// which is the point.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <pqxx/pqxx>
#include <thread>

#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/config.h"
#include "common/ids.h"
#include "common/proto_time.h"
#include "parley/store/v1/store.grpc.pb.h"

extern char** environ;

namespace {

namespace store_pb = ::parley::store::v1;
namespace v1 = ::parley::v1;
using Stub = store_pb::StoreService::Stub;

constexpr char kTenant[] = "bench";
constexpr absl::Duration kCallTimeout = absl::Seconds(30);
constexpr absl::Duration kPhaseTimeout = absl::Seconds(120);

struct Options {
  std::string store_addr;
  std::string database_url;
  std::string psql = "psql";
  std::string work_dir;
  int64_t append_events = 300000;
  int64_t append_threads = 4;
  int64_t append_sessions = 16;
  int64_t batch_size = 1000;
  int64_t total_events = 1000000;
  int64_t list_messages = 10000;
  int64_t list_calls = 2000;
  int64_t list_limit = 50;
  int64_t claim_sessions = 4000;
  int64_t claimers = 8;
};

// ---- gRPC plumbing ----

std::unique_ptr<Stub> Connect(const std::string& addr, int channel_id) {
  grpc::ChannelArguments args;
  args.SetInt("grpc.channel_id", channel_id);  // A connection per client thread.
  return store_pb::StoreService::NewStub(
      grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args));
}

template <typename Request, typename Response>
using Method = grpc::Status (Stub::*)(grpc::ClientContext*, const Request&, Response*);

template <typename Request, typename Response>
absl::Status Call(Stub& stub, Method<Request, Response> method, const Request& request,
                  Response* response) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  grpc::Status status = (stub.*method)(&context, request, response);
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// Opens `count` channels (ids from `first_channel_id`: channels with equal ids share a
// connection) and makes one call on each, so that connection setup is not part of any
// measurement.
absl::StatusOr<std::vector<std::unique_ptr<Stub>>> ConnectWarm(const std::string& addr, int count,
                                                               int first_channel_id) {
  std::vector<std::unique_ptr<Stub>> stubs;
  for (int i = 0; i < count; ++i) {
    stubs.push_back(Connect(addr, first_channel_id + i));
    store_pb::GetTenantRequest request;
    request.set_tenant_id(kTenant);
    store_pb::GetTenantResponse response;
    if (absl::Status s = Call(*stubs.back(), &Stub::GetTenant, request, &response); !s.ok()) {
      return s;
    }
  }
  return stubs;
}

// Runs body(i, stub) on one thread per stub; returns the first error any of them saw.
absl::Status RunOnThreads(std::vector<std::unique_ptr<Stub>>& stubs,
                          const std::function<absl::Status(int, Stub&)>& body) {
  absl::Mutex mu;
  absl::Status first_error;
  std::vector<std::thread> threads;
  for (size_t i = 0; i < stubs.size(); ++i) {
    threads.emplace_back([&, i] {
      absl::Status s = body(static_cast<int>(i), *stubs[i]);
      absl::MutexLock lock(&mu);
      if (!s.ok() && first_error.ok()) first_error = s;
    });
  }
  for (auto& thread : threads) thread.join();
  return first_error;
}

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  return sorted[std::min(sorted.size() - 1, static_cast<size_t>(q * sorted.size()))];
}

// ---- Fixtures through the RPC ----

absl::Status CreateTenant(Stub& stub) {
  store_pb::CreateTenantRequest request;
  request.set_tenant_id(kTenant);
  request.set_name("store bench");
  store_pb::CreateTenantResponse response;
  return Call(stub, &Stub::CreateTenant, request, &response);
}

// Creates `count` sessions spread over the stubs' threads; returns them in order.
absl::StatusOr<std::vector<v1::Session>> CreateSessions(std::vector<std::unique_ptr<Stub>>& stubs,
                                                        int64_t count) {
  std::vector<v1::Session> sessions(count);
  const int threads = static_cast<int>(stubs.size());
  absl::Status status = RunOnThreads(stubs, [&](int t, Stub& stub) -> absl::Status {
    for (int64_t i = t; i < count; i += threads) {
      store_pb::CreateSessionRequest request;
      request.set_tenant_id(kTenant);
      request.mutable_request()->set_title(absl::StrCat("bench ", i));
      store_pb::CreateSessionResponse response;
      if (absl::Status s = Call(stub, &Stub::CreateSession, request, &response); !s.ok()) return s;
      sessions[i] = response.session();
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return sessions;
}

// ---- Append: AppendEvents vs psql \copy ----

// One AppendEvents call's worth of events: `batch_size` events of `session` from
// `first_seq` on.
struct Batch {
  int session = 0;
  int64_t first_seq = 1;
};

// Deals batches round-robin over the sessions, and each session to one thread, so that
// every session's seqs arrive in order and contiguous.
std::vector<std::vector<Batch>> PlanBatches(const Options& o) {
  std::vector<std::vector<Batch>> plan(o.append_threads);
  std::vector<int64_t> next_seq(o.append_sessions, 1);
  for (int64_t b = 0; b < o.append_events / o.batch_size; ++b) {
    const int session = static_cast<int>(b % o.append_sessions);
    plan[session % o.append_threads].push_back({session, next_seq[session]});
    next_seq[session] += o.batch_size;
  }
  return plan;
}

// A session's events share a turn, like the deltas of one long answer.
struct EventStream {
  std::string session_id;
  std::string turn_id;
  int64_t epoch = 1;
};

v1::Event TextDeltaEvent(const EventStream& stream, int64_t seq, absl::Time time) {
  static constexpr char kText[] =
      "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor "
      "jugs, twice.";
  v1::Event event;
  event.set_session_id(stream.session_id);
  event.set_seq(static_cast<uint64_t>(seq));
  event.set_epoch(static_cast<uint64_t>(stream.epoch));
  event.set_turn_id(stream.turn_id);
  *event.mutable_time() = parley::ToTimestamp(time);
  event.mutable_text_delta()->set_text(absl::StrFormat("%06d %s", seq % 1000000, kText));
  return event;
}

std::vector<EventStream> StreamsOf(const std::vector<v1::Session>& sessions) {
  std::vector<EventStream> streams;
  for (const v1::Session& s : sessions) {
    streams.push_back({s.id(), parley::NewId("turn"), static_cast<int64_t>(s.epoch())});
  }
  return streams;
}

// `count` events, rows or claims in `seconds` of wall time.
struct Throughput {
  int64_t count = 0;
  double seconds = 0;
  double per_s() const { return seconds > 0 ? count / seconds : 0; }
};

absl::StatusOr<Throughput> MeasureAppend(const Options& o,
                                         std::vector<std::unique_ptr<Stub>>& stubs,
                                         const std::vector<EventStream>& streams,
                                         const std::vector<std::vector<Batch>>& plan,
                                         absl::Time event_time) {
  std::vector<int64_t> appended(stubs.size(), 0);
  const absl::Time start = absl::Now();
  absl::Status status = RunOnThreads(stubs, [&](int t, Stub& stub) -> absl::Status {
    for (const Batch& batch : plan[t]) {
      if (absl::Now() - start > kPhaseTimeout) return absl::DeadlineExceededError("append phase");
      const EventStream& stream = streams[batch.session];
      store_pb::AppendEventsRequest request;
      request.set_tenant_id(kTenant);
      request.set_session_id(stream.session_id);
      for (int64_t seq = batch.first_seq; seq < batch.first_seq + o.batch_size; ++seq) {
        *request.add_events() = TextDeltaEvent(stream, seq, event_time);
      }
      store_pb::AppendEventsResponse response;
      if (absl::Status s = Call(stub, &Stub::AppendEvents, request, &response); !s.ok()) return s;
      if (response.appended() != static_cast<uint32_t>(o.batch_size)) {
        return absl::InternalError(absl::StrCat("AppendEvents stored ", response.appended(), " of ",
                                                o.batch_size, " events"));
      }
      appended[t] += response.appended();
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  Throughput result;
  result.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  for (int64_t n : appended) result.count += n;
  return result;
}

// Writes, for each appender thread, the rows it stored, but for `streams` (other sessions
// with ids of the same length), in COPY text format: bytea as \x hex, its backslash
// escaped. Returns the paths, one file per thread.
absl::StatusOr<std::vector<std::string>> WriteCopyFiles(const Options& o,
                                                        const std::vector<EventStream>& streams,
                                                        const std::vector<std::vector<Batch>>& plan,
                                                        absl::Time event_time) {
  std::vector<std::string> paths;
  for (size_t t = 0; t < plan.size(); ++t) {
    paths.push_back(absl::StrCat(o.work_dir, "/store_bench_events.", t, ".copy"));
    std::ofstream out(paths.back(), std::ios::binary | std::ios::trunc);
    for (const Batch& batch : plan[t]) {
      const EventStream& stream = streams[batch.session];
      for (int64_t seq = batch.first_seq; seq < batch.first_seq + o.batch_size; ++seq) {
        const std::string payload = TextDeltaEvent(stream, seq, event_time).SerializeAsString();
        out << stream.session_id << '\t' << seq << '\t' << kTenant << '\t' << stream.epoch << '\t'
            << stream.turn_id << "\t\\\\x" << absl::BytesToHexString(payload) << '\n';
      }
    }
    out.close();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", paths.back()));
  }
  return paths;
}

// A child process whose stdout and stderr go to `output_path`.
struct Child {
  pid_t pid = 0;
  std::string program;
  std::string output_path;
};

absl::StatusOr<Child> Spawn(const std::vector<std::string>& argv, const std::string& output_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, output_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  Child child{.program = argv[0], .output_path = output_path};
  const int spawned = posix_spawnp(&child.pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) return absl::InternalError(absl::StrCat("cannot run ", argv[0]));
  return child;
}

// Waits for `child` until `deadline`, then kills it. OK when it exited with status 0.
absl::Status Wait(const Child& child, absl::Time deadline) {
  int wait_status = 0;
  while (waitpid(child.pid, &wait_status, WNOHANG) == 0) {
    if (absl::Now() > deadline) {
      kill(child.pid, SIGKILL);
      waitpid(child.pid, &wait_status, 0);
      return absl::DeadlineExceededError(absl::StrCat(child.program, " did not finish"));
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  if (!WIFEXITED(wait_status) || WEXITSTATUS(wait_status) != 0) {
    std::ifstream log(child.output_path);
    std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    return absl::InternalError(absl::StrCat(child.program, " failed: ", text));
  }
  return absl::OkStatus();
}

// psql's \timing line, "Time: 1234.567 ms (00:01.235)", in seconds.
absl::StatusOr<double> ParsePsqlTiming(const std::string& output_path) {
  std::ifstream in(output_path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Time: ", 0) != 0) continue;
    std::string number = line.substr(6, line.find(' ', 6) - 6);
    double ms = 0;
    if (absl::SimpleAtod(number, &ms)) return ms / 1000;
  }
  return absl::InternalError(absl::StrCat("no \\timing line in ", output_path));
}

// One psql \copy per file, all at once: the appenders' concurrency, so that the limit
// gets as many Postgres backends (and cores) as the RPC path did. psql streams a file to
// COPY FROM STDIN without looking at the rows, so this is what Postgres itself can take.
// The time is the longest psql \timing of a \copy (connection setup excluded); the wall
// time from the first spawn to the last exit is reported alongside.
absl::StatusOr<Throughput> MeasureCopy(const Options& o, const std::vector<std::string>& paths,
                                       int64_t rows) {
  const absl::Time start = absl::Now();
  std::vector<Child> children;
  absl::Status status;
  for (const std::string& path : paths) {
    absl::StatusOr<Child> child = Spawn(
        {o.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", o.database_url, "-c", "\\timing on",
         "-c",
         absl::StrCat("\\copy events (session_id, seq, tenant_id, epoch, turn_id, payload) FROM '",
                      path, "'")},
        path + ".out");
    if (!child.ok()) {
      status = child.status();
      break;
    }
    children.push_back(*child);
  }
  for (const Child& child : children) {
    absl::Status waited = Wait(child, start + kPhaseTimeout);
    if (status.ok()) status = waited;
  }
  const double wall_s = absl::ToDoubleSeconds(absl::Now() - start);
  if (!status.ok()) return status;
  double longest_s = 0;
  for (const Child& child : children) {
    absl::StatusOr<double> seconds = ParsePsqlTiming(child.output_path);
    if (!seconds.ok()) return seconds.status();
    longest_s = std::max(longest_s, *seconds);
  }
  std::cout << absl::StrFormat(
      "copy:    %d psql \\copy streams, longest %.3f s (wall time with psql start-up %.3f s)\n",
      children.size(), longest_s, wall_s);
  return Throughput{.count = rows, .seconds = longest_s};
}

// ---- List: ListMessages on a 10k-message session ----

// Ids of the real length, unique per session: "msg_" + 16 characters of the session's
// ULID + the position in 10 digits.
std::string ListMessageId(const std::string& session_id, int64_t position) {
  return absl::StrFormat("msg_%s%010d", session_id.substr(4, 16), position);
}

// Fills the events table up to `total_events` and gives `session_id` `messages` messages,
// in SQL (not measured).
void LoadListFixture(pqxx::connection& db, const Options& o, const std::string& session_id,
                     const std::string& sample_payload) {
  pqxx::work tx(db);
  const int64_t existing = tx.exec1("SELECT count(*) FROM events")[0].as<int64_t>();
  const int64_t missing = std::max<int64_t>(0, o.total_events - existing);
  // 1000 events per session, ids of the real length.
  tx.exec_params(
      "INSERT INTO events (session_id, seq, tenant_id, epoch, turn_id, payload) "
      "SELECT 'ses_B' || lpad((g / 1000)::text, 25, '0'), g % 1000 + 1, $1, 1, "
      "'turn_B' || lpad((g / 100)::text, 25, '0'), $2 FROM generate_series(0, $3 - 1) g",
      kTenant, pqxx::binarystring(sample_payload), missing);
  tx.exec_params(
      "INSERT INTO messages (session_id, position, id, tenant_id, role, parts) "
      "SELECT $1, g, 'msg_' || substr($1, 5, 16) || lpad(g::text, 10, '0'), $2, CASE WHEN g % 2 = "
      "1 THEN 1 ELSE 2 END, "
      "jsonb_build_object('parts', jsonb_build_array(jsonb_build_object('text', "
      "'message ' || g || ': ' || repeat('lorem ipsum ', 15)))) "
      "FROM generate_series(1, $3) g",
      session_id, kTenant, o.list_messages);
  tx.exec_params("UPDATE sessions SET message_count = $2 WHERE id = $1", session_id,
                 o.list_messages);
  tx.commit();
  // What autovacuum would do after the load anyway; done now so that it does not do it
  // in the middle of a measurement.
  pqxx::nontransaction vacuum(db);
  vacuum.exec("VACUUM (ANALYZE) events, messages, sessions");
  std::cout << absl::StrFormat("list:    fixture: %d events in the database, %d messages in %s\n",
                               existing + missing, o.list_messages, session_id);
}

// The kinds of page a chat client reads: the newest, older ones, newer ones.
enum Page { kLatest, kBefore, kAfter, kPageKinds };
constexpr const char* kPageNames[kPageKinds] = {"latest", "before", "after"};

struct Latency {
  std::vector<double> sorted_ms;
  double p50() const { return Percentile(sorted_ms, 0.50); }
  double p99() const { return Percentile(sorted_ms, 0.99); }
};

// One call: a random kind of page. Checks the page has the size the cursor implies.
absl::Status ListOnce(Stub& stub, const Options& o, const std::string& session_id,
                      absl::BitGen& random, Page* page, double* ms) {
  store_pb::ListMessagesRequest request;
  request.set_tenant_id(kTenant);
  v1::ListMessagesRequest& r = *request.mutable_request();
  r.set_session_id(session_id);
  r.set_limit(static_cast<uint32_t>(o.list_limit));
  const int64_t n = o.list_messages;
  const int64_t position = absl::Uniform<int64_t>(absl::IntervalClosed, random, 1, n);
  int64_t expected = std::min(o.list_limit, n);
  *page = static_cast<Page>(absl::Uniform(random, 0, static_cast<int>(kPageKinds)));
  switch (*page) {
    case kLatest:
      r.set_latest(true);
      break;
    case kBefore:
      r.set_before_message_id(ListMessageId(session_id, position));
      expected = std::min(o.list_limit, position - 1);
      break;
    default:
      r.set_after_message_id(ListMessageId(session_id, position));
      expected = std::min(o.list_limit, n - position);
      break;
  }
  store_pb::ListMessagesResponse response;
  const absl::Time before = absl::Now();
  absl::Status status = Call(stub, &Stub::ListMessages, request, &response);
  *ms = absl::ToDoubleMilliseconds(absl::Now() - before);
  if (!status.ok()) return status;
  if (response.messages_size() != expected) {
    return absl::InternalError(absl::StrCat("ListMessages returned ", response.messages_size(),
                                            " messages, expected ", expected));
  }
  return absl::OkStatus();
}

// Calls one at a time; returns the latency of all calls and, for diagnosis, per kind.
absl::StatusOr<std::vector<Latency>> MeasureList(Stub& stub, const Options& o,
                                                 const std::string& session_id) {
  absl::BitGen random;
  Page page = kLatest;
  double ms = 0;
  for (int i = 0; i < 100; ++i) {  // Warm-up: plans, caches, the connection pool.
    if (absl::Status s = ListOnce(stub, o, session_id, random, &page, &ms); !s.ok()) return s;
  }
  Latency all;
  std::vector<Latency> by_page(kPageKinds);
  const absl::Time deadline = absl::Now() + kPhaseTimeout;
  for (int64_t i = 0; i < o.list_calls && absl::Now() < deadline; ++i) {
    if (absl::Status s = ListOnce(stub, o, session_id, random, &page, &ms); !s.ok()) return s;
    all.sorted_ms.push_back(ms);
    by_page[page].sorted_ms.push_back(ms);
  }
  by_page.insert(by_page.begin(), std::move(all));
  for (Latency& latency : by_page) std::sort(latency.sorted_ms.begin(), latency.sorted_ms.end());
  return by_page;
}

// ---- Claims: ClaimNextTurn from concurrent workers ----

// Enqueues one turn in each session; returns the turn ids.
absl::StatusOr<std::vector<std::string>> EnqueueTurns(std::vector<std::unique_ptr<Stub>>& stubs,
                                                      const std::vector<v1::Session>& sessions) {
  std::vector<std::string> turn_ids(sessions.size());
  const size_t threads = stubs.size();
  absl::Status status = RunOnThreads(stubs, [&](int t, Stub& stub) -> absl::Status {
    for (size_t i = t; i < sessions.size(); i += threads) {
      store_pb::EnqueueTurnRequest request;
      request.set_tenant_id(kTenant);
      request.mutable_request()->set_session_id(sessions[i].id());
      request.mutable_request()->add_content()->set_text("hello");
      store_pb::EnqueueTurnResponse response;
      if (absl::Status s = Call(stub, &Stub::EnqueueTurn, request, &response); !s.ok()) return s;
      turn_ids[i] = response.turn().id();
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return turn_ids;
}

// Each worker claims until the queue answers empty (bounded by the number of turns and
// by time); every claimed id is returned, duplicates included, for the caller to check.
absl::StatusOr<Throughput> MeasureClaims(std::vector<std::unique_ptr<Stub>>& stubs, int64_t turns,
                                         std::vector<std::string>* claimed) {
  std::vector<std::vector<std::string>> per_worker(stubs.size());
  const absl::Time start = absl::Now();
  absl::Status status = RunOnThreads(stubs, [&](int t, Stub& stub) -> absl::Status {
    store_pb::ClaimNextTurnRequest request;
    request.set_owner(absl::StrCat("store-bench/claimer-", t));
    request.set_lease_ttl_ms(60000);
    for (int64_t i = 0; i <= turns; ++i) {
      if (absl::Now() - start > kPhaseTimeout) return absl::DeadlineExceededError("claim phase");
      store_pb::ClaimNextTurnResponse response;
      if (absl::Status s = Call(stub, &Stub::ClaimNextTurn, request, &response); !s.ok()) return s;
      if (!response.has_turn()) return absl::OkStatus();
      per_worker[t].push_back(response.turn().id());
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  Throughput result;
  result.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  for (auto& ids : per_worker) claimed->insert(claimed->end(), ids.begin(), ids.end());
  result.count = static_cast<int64_t>(claimed->size());
  return result;
}

// Every enqueued turn claimed exactly once.
absl::Status CheckClaims(std::vector<std::string> enqueued, std::vector<std::string> claimed) {
  std::sort(claimed.begin(), claimed.end());
  auto duplicate = std::adjacent_find(claimed.begin(), claimed.end());
  if (duplicate != claimed.end()) {
    return absl::InternalError(absl::StrCat("turn ", *duplicate, " was claimed twice"));
  }
  std::sort(enqueued.begin(), enqueued.end());
  if (claimed != enqueued) {
    return absl::InternalError(absl::StrCat(claimed.size(), " turns claimed, ", enqueued.size(),
                                            " enqueued: the claimed set differs"));
  }
  return absl::OkStatus();
}

// ---- The run ----

struct Results {
  Throughput append;
  Throughput copy;
  Latency list;
  Throughput claims;
};

absl::StatusOr<Results> Run(const Options& o) {
  Results results;
  pqxx::connection db(o.database_url);
  if (absl::Status s = CreateTenant(*Connect(o.store_addr, 0)); !s.ok()) return s;
  auto workers = ConnectWarm(o.store_addr, static_cast<int>(o.claimers), 1);
  if (!workers.ok()) return workers.status();

  // Append, then the same rows by \copy.
  auto sessions = CreateSessions(*workers, 2 * o.append_sessions);
  if (!sessions.ok()) return sessions.status();
  const std::vector<EventStream> streams =
      StreamsOf({sessions->begin(), sessions->begin() + o.append_sessions});
  const std::vector<EventStream> copy_streams =
      StreamsOf({sessions->begin() + o.append_sessions, sessions->end()});
  const std::vector<std::vector<Batch>> plan = PlanBatches(o);
  const absl::Time event_time = absl::Now();
  auto appenders = ConnectWarm(o.store_addr, static_cast<int>(o.append_threads), 1000);
  if (!appenders.ok()) return appenders.status();
  auto append = MeasureAppend(o, *appenders, streams, plan, event_time);
  if (!append.ok()) return append.status();
  results.append = *append;
  std::cout << absl::StrFormat(
      "append:  %d events in %.3f s through AppendEvents (%d threads, batches of %d, %d "
      "sessions): %.0f events/s\n",
      append->count, append->seconds, o.append_threads, o.batch_size, o.append_sessions,
      append->per_s());

  auto copy_paths = WriteCopyFiles(o, copy_streams, plan, event_time);
  if (!copy_paths.ok()) return copy_paths.status();
  auto copy = MeasureCopy(o, *copy_paths, append->count);
  for (const std::string& path : *copy_paths) std::remove(path.c_str());
  if (!copy.ok()) return copy.status();
  results.copy = *copy;
  std::cout << absl::StrFormat("copy:    %d rows in %.3f s: %.0f rows/s\n", copy->count,
                               copy->seconds, copy->per_s());

  // List.
  auto list_session = CreateSessions(*workers, 1);
  if (!list_session.ok()) return list_session.status();
  const std::string list_session_id = (*list_session)[0].id();
  const absl::Time load_start = absl::Now();
  LoadListFixture(db, o, list_session_id,
                  TextDeltaEvent(streams[0], 1, event_time).SerializeAsString());
  std::cout << absl::StrFormat("list:    fixture loaded in %.1f s (not measured)\n",
                               absl::ToDoubleSeconds(absl::Now() - load_start));
  auto list = MeasureList(*(*workers)[0], o, list_session_id);
  if (!list.ok()) return list.status();
  results.list = (*list)[0];
  std::cout << absl::StrFormat(
      "list:    %d ListMessages calls (limit %d): p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
      results.list.sorted_ms.size(), o.list_limit, results.list.p50(), results.list.p99(),
      results.list.sorted_ms.empty() ? 0.0 : results.list.sorted_ms.back());
  for (int page = 0; page < kPageKinds; ++page) {
    const Latency& latency = (*list)[page + 1];
    std::cout << absl::StrFormat("list:      %-6s %4d calls: p50 %.2f ms, p99 %.2f ms\n",
                                 kPageNames[page], latency.sorted_ms.size(), latency.p50(),
                                 latency.p99());
  }

  // Claims.
  auto claim_sessions = CreateSessions(*workers, o.claim_sessions);
  if (!claim_sessions.ok()) return claim_sessions.status();
  auto enqueued = EnqueueTurns(*workers, *claim_sessions);
  if (!enqueued.ok()) return enqueued.status();
  std::vector<std::string> claimed;
  auto claims = MeasureClaims(*workers, o.claim_sessions, &claimed);
  if (!claims.ok()) return claims.status();
  results.claims = *claims;
  std::cout << absl::StrFormat("claims:  %d turns claimed in %.3f s by %d workers: %.0f claims/s\n",
                               claims->count, claims->seconds, o.claimers, claims->per_s());
  if (absl::Status s = CheckClaims(*enqueued, claimed); !s.ok()) return s;
  return results;
}

std::string Goal(bool met) { return met ? "met" : "MISSED"; }

}  // namespace

int main(int argc, char** argv) {
  // As in ServiceHost: Debian's Abseil leaves mutex deadlock detection on, and gRPC's
  // client locks would spend the cores the measured server needs on it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  Options o;
  parley::Flags flags("store_bench",
                      "parley-store append, list and claim paths vs the raw Postgres COPY.");
  flags.HostPort("store_addr", &o.store_addr, "the parley-store to measure");
  flags.String("database_url", &o.database_url, "its database, for fixtures and the COPY limit",
               parley::ValidateNonEmpty);
  flags.String("psql", &o.psql, "psql binary that runs the \\copy limit");
  flags.String("work_dir", &o.work_dir, "directory for the COPY files (deleted after use)",
               parley::ValidateNonEmpty);
  flags.Int("append_events", &o.append_events, "events appended (and copied)", 1000, 10000000);
  flags.Int("append_threads", &o.append_threads, "concurrent AppendEvents clients", 1, 64);
  flags.Int("append_sessions", &o.append_sessions, "sessions the appends go to", 1, 1000);
  flags.Int("batch_size", &o.batch_size, "events per AppendEvents call", 1, 10000);
  flags.Int("total_events", &o.total_events, "events in the database during the list phase", 0,
            100000000);
  flags.Int("list_messages", &o.list_messages, "messages in the listed session", 100, 1000000);
  flags.Int("list_calls", &o.list_calls, "ListMessages calls measured", 1, 1000000);
  flags.Int("list_limit", &o.list_limit, "messages per ListMessages page", 1, 1000);
  flags.Int("claim_sessions", &o.claim_sessions, "sessions with one queued turn each", 1, 1000000);
  flags.Int("claimers", &o.claimers, "concurrent ClaimNextTurn workers", 1, 256);
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());
  if (o.store_addr.empty()) {
    std::cerr << "store_bench: --store_addr is required\n";
    return 2;
  }

  absl::StatusOr<Results> results = [&]() -> absl::StatusOr<Results> {
    try {
      return Run(o);
    } catch (const std::exception& e) {  // libpqxx reports with exceptions.
      return absl::InternalError(e.what());
    }
  }();
  if (!results.ok()) {
    std::cerr << "store_bench: " << results.status() << "\n";
    return 1;
  }
  const Results& r = *results;
  const double ratio = r.copy.per_s() > 0 ? r.append.per_s() / r.copy.per_s() : 0;
  std::cout << absl::StrFormat(
      "goals:   append >= 100000 events/s: %s; append >= 50%% of copy: %s; list p99 <= 5 ms: "
      "%s; claims >= 2000/s: %s\n",
      Goal(r.append.per_s() >= 100000), Goal(ratio >= 0.5), Goal(r.list.p99() <= 5),
      Goal(r.claims.per_s() >= 2000));
  std::cout << absl::StrFormat(
      "RESULT name=store append_eps=%.0f copy_eps=%.0f append_ratio=%.3f list_p50_ms=%.2f "
      "list_p99_ms=%.2f claims_per_s=%.0f\n",
      r.append.per_s(), r.copy.per_s(), ratio, r.list.p50(), r.list.p99(), r.claims.per_s());
  return 0;
}
