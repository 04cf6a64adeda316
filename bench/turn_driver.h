// The turn driver the benchmarks share: parley-session replicas started as child
// processes, fixtures made through parley-store, a Redis listener that follows every
// turn's events, and a load of SubmitMessage clients fed from a queue.
//
//   ReplicaOptions options{...};
//   auto replica = Replica::Start(options, 0);
//   Listener listener(endpoint, sessions);
//   Load load(submitters, tenant, replicas, listener);
//   listener.Start([&](const std::string& session) { load.Sealed(session); });
//   load.Start();
//   load.Enqueue(session, "@words 16\n@delay_ms 0");
#pragma once

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/proto_time.h"
#include "common/redis.h"
#include "parley/router/v1/router.grpc.pb.h"
#include "parley/store/v1/store.grpc.pb.h"

extern char** environ;

namespace parley::bench {

namespace store_pb = ::parley::store::v1;
namespace router_pb = ::parley::router::v1;
using StoreStub = store_pb::StoreService::Stub;
using RouterStub = router_pb::SessionRouter::Stub;

inline constexpr absl::Duration kCallTimeout = absl::Seconds(30);

// ---- gRPC plumbing ----

template <typename Stub, typename Request, typename Response>
using Method = grpc::Status (Stub::*)(grpc::ClientContext*, const Request&, Response*);

template <typename Stub, typename Request, typename Response>
inline absl::Status Call(Stub& stub, Method<Stub, Request, Response> method, const Request& request,
                         Response* response) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
  grpc::Status status = (stub.*method)(&context, request, response);
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

inline std::shared_ptr<grpc::Channel> Channel(const std::string& addr, int channel_id) {
  grpc::ChannelArguments args;
  args.SetInt("grpc.channel_id", channel_id);  // A connection per client thread.
  return grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
}

// Runs body(i) on `count` threads; returns the first error.
inline absl::Status RunOnThreads(int count, const std::function<absl::Status(int)>& body) {
  absl::Mutex mu;
  absl::Status first_error;
  std::vector<std::thread> threads;
  for (int i = 0; i < count; ++i) {
    threads.emplace_back([&, i] {
      absl::Status s = body(i);
      absl::MutexLock lock(&mu);
      if (!s.ok() && first_error.ok()) first_error = s;
    });
  }
  for (auto& thread : threads) thread.join();
  return first_error;
}

// ---- Replicas: parley-session processes owned by the benchmark ----

struct ReplicaOptions {
  std::string session_binary;
  std::string work_dir;  // Each replica logs to <work_dir>/<log_name>-<index>.log.
  std::string store_addr;
  std::string redis_url;
  int64_t turn_slots = 16;
  absl::Duration lease_ttl = absl::Seconds(5);
  std::string log_name = "parley-session";
  // NAME=value pairs added to (or replacing in) the benchmark's own environment.
  std::vector<std::string> env;
};

// The benchmark's environment with `overrides` (NAME=value) put in.
inline std::vector<std::string> EnvironmentWith(const std::vector<std::string>& overrides) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const absl::string_view entry(*e);
    bool replaced = false;
    for (const std::string& o : overrides) {
      const size_t eq = o.find('=');
      if (absl::StartsWith(entry, absl::string_view(o).substr(0, eq + 1))) replaced = true;
    }
    if (!replaced) env.emplace_back(entry);
  }
  env.insert(env.end(), overrides.begin(), overrides.end());
  return env;
}

// A service binary run as a child process, logging to a file; Start returns once it
// logs "serving" (with the ports it bound, as every Parley service does).
class ServiceProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ServiceProcess>> Start(std::string name,
                                                               const std::string& binary,
                                                               std::vector<std::string> args,
                                                               const std::vector<std::string>& env,
                                                               std::string log_path) {
    auto process = std::unique_ptr<ServiceProcess>(new ServiceProcess());
    process->name_ = std::move(name);
    process->log_path_ = std::move(log_path);
    args.insert(args.begin(), binary);
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    std::vector<std::string> environment = EnvironmentWith(env);
    std::vector<char*> envp;
    for (std::string& entry : environment) envp.push_back(entry.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, process->log_path_.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    const int rc =
        posix_spawn(&process->pid_, binary.c_str(), &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) return absl::InternalError(absl::StrCat("spawn ", binary, ": ", rc));
    if (absl::Status s = process->WaitUntilServing(); !s.ok()) return s;
    return process;
  }

  // The benchmark is over: nothing to drain.
  ~ServiceProcess() {
    if (pid_ > 0 && !exited_) Kill();
  }

  // SIGKILL; returns once the process is gone.
  void Kill() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    exited_ = true;
  }

  // SIGTERM (the service drains and flushes what it buffers, spans included); SIGKILL if
  // it is still running after `grace`. Returns once the process is gone.
  void Stop(absl::Duration grace) {
    if (pid_ <= 0 || exited_) return;
    ::kill(pid_, SIGTERM);
    const absl::Time deadline = absl::Now() + grace;
    while (!Exited() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
    if (!exited_) Kill();
  }

  const std::string& target() const { return target_; }
  // The worker id of a replica.
  const std::string& worker_id() const { return name_; }
  pid_t pid() const { return pid_; }
  int admin_port() const { return admin_port_; }

 private:
  ServiceProcess() = default;

  bool Exited() {
    if (!exited_ && ::waitpid(pid_, nullptr, WNOHANG) == pid_) exited_ = true;
    return exited_;
  }

  absl::Status WaitUntilServing() {
    static const std::regex kServing(
        R"("msg":"serving".*"grpc_port":([0-9]+),"admin_port":([0-9]+))");
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline) {
      std::ifstream in(log_path_);
      std::stringstream log;
      log << in.rdbuf();
      std::string text = log.str();
      std::smatch match;
      if (std::regex_search(text, match, kServing)) {
        target_ = absl::StrCat("127.0.0.1:", match[1].str());
        admin_port_ = std::stoi(match[2].str());
        return absl::OkStatus();
      }
      if (Exited()) return absl::InternalError(absl::StrCat(name_, " exited:\n", text));
      absl::SleepFor(absl::Milliseconds(20));
    }
    return absl::DeadlineExceededError(absl::StrCat(name_, " never logged \"serving\""));
  }

  pid_t pid_ = 0;
  bool exited_ = false;
  std::string name_;
  std::string log_path_;
  std::string target_;
  int admin_port_ = 0;
};

using Replica = ServiceProcess;

// A parley-session replica, worker id bench-replica-<index>.
inline absl::StatusOr<std::unique_ptr<Replica>> StartReplica(const ReplicaOptions& o, int index) {
  std::string worker_id = absl::StrCat("bench-replica-", index);
  std::vector<std::string> args = {"--grpc_addr=127.0.0.1:0",
                                   "--admin_addr=127.0.0.1:0",
                                   "--store_addr=" + o.store_addr,
                                   "--redis_url=" + o.redis_url,
                                   absl::StrCat("--turn_slots=", o.turn_slots),
                                   "--lease_ttl=" + absl::FormatDuration(o.lease_ttl),
                                   "--worker_id=" + worker_id};
  return ServiceProcess::Start(std::move(worker_id), o.session_binary, std::move(args), o.env,
                               absl::StrCat(o.work_dir, "/", o.log_name, "-", index, ".log"));
}

// ---- Fixtures through the store ----

inline absl::Status CreateTenant(StoreStub& stub, const std::string& tenant) {
  store_pb::CreateTenantRequest request;
  request.set_tenant_id(tenant);
  store_pb::CreateTenantResponse response;
  return Call(stub, &StoreStub::CreateTenant, request, &response);
}

inline absl::StatusOr<std::vector<std::string>> CreateSessions(
    std::vector<std::unique_ptr<StoreStub>>& stubs, const std::string& tenant, int64_t count) {
  std::vector<std::string> sessions(count);
  const int threads = static_cast<int>(stubs.size());
  absl::Status status = RunOnThreads(threads, [&](int t) -> absl::Status {
    for (int64_t i = t; i < count; i += threads) {
      store_pb::CreateSessionRequest request;
      request.set_tenant_id(tenant);
      store_pb::CreateSessionResponse response;
      if (absl::Status s = Call(*stubs[t], &StoreStub::CreateSession, request, &response);
          !s.ok()) {
        return s;
      }
      sessions[i] = response.session().id();
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return sessions;
}

// ---- What the event stream says about each turn ----

struct TurnRecord {
  std::string session;
  absl::Time submitted;          // SubmitMessage returned.
  absl::Time started;            // The first TurnStarted's Event.time.
  absl::Time first_text;         // The first TextDelta's Event.time.
  absl::Time sealed;             // TurnSealed seen by the listener (local clock).
  uint32_t last_attempt = 0;     // Of the newest TurnStarted.
  absl::Time last_attempt_time;  // Its Event.time.
  int events = 0;                // Durable events of the turn.
};

// Subscribes to every session's channel and keeps a TurnRecord per turn; calls
// `on_sealed(session)` for every TurnSealed.
class Listener {
 public:
  // `key_prefix`: the services' --redis_key_prefix.
  Listener(parley::RedisEndpoint endpoint, std::vector<std::string> sessions,
           std::string key_prefix = "")
      : endpoint_(std::move(endpoint)),
        sessions_(std::move(sessions)),
        key_prefix_(std::move(key_prefix)) {}
  ~Listener() { Stop(); }

  absl::Status Start(std::function<void(const std::string&)> on_sealed) {
    on_sealed_ = std::move(on_sealed);
    auto connection = parley::RedisConnection::Connect(endpoint_, absl::Seconds(5));
    if (!connection.ok()) return connection.status();
    redis_ = *std::move(connection);
    parley::RedisKeys keys(key_prefix_);
    std::vector<std::string> subscribe = {"SUBSCRIBE"};
    for (const std::string& session : sessions_) subscribe.push_back(keys.EventChannel(session));
    // The first confirmation comes back here, the others through the reader.
    if (auto reply = redis_->Command(subscribe); !reply.ok()) return reply.status();
    thread_ = std::thread([this] { Read(); });
    return absl::OkStatus();
  }

  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  // Runs `f` on the records under the lock.
  void With(const std::function<void(absl::flat_hash_map<std::string, TurnRecord>&)>& f) {
    absl::MutexLock lock(&mu_);
    f(turns_);
  }

  int64_t sealed() const { return sealed_.load(); }
  absl::Status error() {
    absl::MutexLock lock(&mu_);
    return error_;
  }

 private:
  void Read() {
    while (!stop_) {
      absl::StatusOr<parley::RedisReply> reply = redis_->ReadReplyFor(absl::Milliseconds(100));
      if (!reply.ok()) {
        if (absl::IsDeadlineExceeded(reply.status())) continue;
        absl::MutexLock lock(&mu_);
        error_ = reply.status();
        return;
      }
      const redisReply* r = reply->get();
      if (r->type != REDIS_REPLY_ARRAY || r->elements != 3) continue;
      if (parley::ReplyString(r->element[0]) != "message") continue;
      ::parley::v1::Event event;
      if (!event.ParseFromString(parley::ReplyString(r->element[2]))) continue;
      Record(event);
    }
  }

  void Record(const ::parley::v1::Event& event) {
    if (event.turn_id().empty() || event.transient()) return;
    bool sealed = false;
    {
      absl::MutexLock lock(&mu_);
      TurnRecord& turn = turns_[event.turn_id()];
      turn.session = event.session_id();
      ++turn.events;
      const absl::Time time = parley::FromTimestamp(event.time());
      if (event.has_turn_started()) {
        if (turn.started == absl::Time()) turn.started = time;
        turn.last_attempt = event.turn_started().attempt();
        turn.last_attempt_time = time;
      }
      if (event.has_text_delta() && turn.first_text == absl::Time()) turn.first_text = time;
      if (event.has_turn_sealed()) {
        turn.sealed = absl::Now();
        sealed = true;
      }
    }
    if (sealed) {
      ++sealed_;
      on_sealed_(event.session_id());
    }
  }

  const parley::RedisEndpoint endpoint_;
  const std::vector<std::string> sessions_;
  const std::string key_prefix_;
  std::unique_ptr<parley::RedisConnection> redis_;
  std::function<void(const std::string&)> on_sealed_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> sealed_{0};
  std::thread thread_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, TurnRecord> turns_ ABSL_GUARDED_BY(mu_);
  absl::Status error_ ABSL_GUARDED_BY(mu_);
};

// ---- Load: submitters fed from a queue of sessions to submit to ----

class Load {
 public:
  Load(int64_t submitters, std::string tenant, std::vector<std::unique_ptr<Replica>>& replicas,
       Listener& listener)
      : submitters_(submitters),
        tenant_(std::move(tenant)),
        replicas_(replicas),
        listener_(listener) {
    for (size_t r = 0; r < replicas.size(); ++r) {
      for (int64_t t = 0; t < submitters; ++t) {
        routers_[r].push_back(
            router_pb::SessionRouter::NewStub(Channel(replicas[r]->target(), 1000 + r * 100 + t)));
      }
    }
    dead_.assign(replicas.size(), false);
  }
  ~Load() { Stop(); }

  void Start() {
    for (int64_t t = 0; t < submitters_; ++t) threads_.emplace_back([this, t] { Submit(t); });
  }
  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    for (auto& thread : threads_) thread.join();
    threads_.clear();
  }

  void Enqueue(const std::string& session, const std::string& text) {
    absl::MutexLock lock(&mu_);
    queue_.push_back({session, text});
    ++outstanding_[session];
  }
  void Sealed(const std::string& session) {
    absl::MutexLock lock(&mu_);
    if (auto it = outstanding_.find(session); it != outstanding_.end() && it->second > 0) {
      --it->second;
    }
  }
  int64_t Outstanding(const std::string& session) {
    absl::MutexLock lock(&mu_);
    auto it = outstanding_.find(session);
    return it == outstanding_.end() ? 0 : it->second;
  }
  int64_t TotalOutstanding() {
    absl::MutexLock lock(&mu_);
    int64_t total = 0;
    for (const auto& [session, n] : outstanding_) total += n;
    return total;
  }
  void MarkDead(int replica) {
    absl::MutexLock lock(&mu_);
    dead_[replica] = true;
  }
  int64_t errors() const { return errors_.load(); }

 private:
  struct Job {
    std::string session;
    std::string text;
  };

  void Submit(int64_t t) {
    uint64_t n = 0;
    while (true) {
      Job job;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](Load* load) { return load->stop_ || !load->queue_.empty(); }, this));
        if (stop_) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      const std::string key = absl::StrCat("l", instance_, "-t", t, "-", n++);
      bool submitted = false;
      for (int attempt = 0; attempt < 10 && !submitted; ++attempt) {
        int replica = static_cast<int>((t + attempt + n) % replicas_.size());
        {
          absl::MutexLock lock(&mu_);
          while (dead_[replica]) replica = (replica + 1) % static_cast<int>(replicas_.size());
        }
        router_pb::SubmitMessageRequest request;
        request.set_tenant_id(tenant_);
        request.mutable_request()->set_session_id(job.session);
        request.mutable_request()->add_content()->set_text(job.text);
        request.mutable_request()->set_idempotency_key(key);
        ::parley::v1::SendMessageResponse response;
        absl::Status s =
            Call(*routers_[replica][t], &RouterStub::SubmitMessage, request, &response);
        if (!s.ok()) {
          ++errors_;
          continue;
        }
        const absl::Time now = absl::Now();
        listener_.With([&](auto& turns) {
          TurnRecord& turn = turns[response.turn().id()];
          turn.session = job.session;
          turn.submitted = now;
        });
        submitted = true;
      }
      if (!submitted) Sealed(job.session);  // Nothing will ever seal it.
    }
  }

  // Idempotency keys must not repeat across the loads of one run (a benchmark that
  // runs rounds submits to the same sessions again): a repeated key returns the old turn.
  static inline std::atomic<int64_t> instances_{0};
  const int64_t instance_ = instances_++;
  const int64_t submitters_;
  const std::string tenant_;
  std::vector<std::unique_ptr<Replica>>& replicas_;
  Listener& listener_;
  std::map<size_t, std::vector<std::unique_ptr<RouterStub>>> routers_;
  std::vector<std::thread> threads_;
  std::atomic<int64_t> errors_{0};
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int64_t> outstanding_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> dead_ ABSL_GUARDED_BY(mu_);
};

inline bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

}  // namespace parley::bench
