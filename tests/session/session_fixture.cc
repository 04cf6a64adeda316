// SessionFixture: see session_fixture.h. Processes are started with the harness
// (tests/harness/services.h); every call has a deadline, so a hung service fails the
// test instead of hanging it.
#include "tests/session/session_fixture.h"

#include <google/protobuf/util/message_differencer.h>
#include <unistd.h>

#include <csignal>
#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/proto_time.h"
#include "common/status.h"

namespace parley::session::testing {
namespace {

using parley::testing::BinaryPath;
using parley::testing::ProcessOptions;
using parley::testing::RunCommand;
using parley::testing::ServiceProcess;

constexpr absl::Duration kCallTimeout = absl::Seconds(20);
constexpr absl::Duration kStartTimeout = absl::Seconds(30);

void SetDeadline(grpc::ClientContext& context) {
  context.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
}

absl::Status FromGrpc(const grpc::Status& status) { return FromGrpcStatus(status); }

std::string Flag(const std::string& name, absl::Duration value) {
  return absl::StrCat("--", name, "=", absl::FormatDuration(value));
}

// The last `bytes` of a process's output, for failure messages.
std::string Tail(const ServiceProcess& process, size_t bytes = 4000) {
  std::string output = process.Output();
  return output.size() > bytes ? "…" + output.substr(output.size() - bytes) : output;
}

}  // namespace

// ---- Cluster ----

void SessionFixture::TearDown() {
  if (HasFailure()) {
    for (size_t i = 0; i < replicas_.size(); ++i) {
      if (replicas_[i] == nullptr) continue;
      std::cerr << "---- " << worker_ids_[i] << " output (tail) ----\n"
                << Tail(*replicas_[i]) << "\n";
    }
    if (store_process_) std::cerr << "---- parley-store (tail) ----\n" << Tail(*store_process_);
  }
  // Replicas first: they must not outlive their store and Redis.
  routers_.clear();
  replicas_.clear();
  for (size_t i = 0; i < sandbox_processes_.size(); ++i) {
    // Session sandboxes outlive a sandbox-svc restart by design: destroy them, on the
    // replica that owns them (each has a stub once it served).
    for (const std::string& tenant : sandbox_tenants_) {
      if (i >= sandbox_stubs_.size()) break;
      grpc::ClientContext context;
      SetDeadline(context);
      sandbox::v1::ListSandboxesRequest list;
      list.set_tenant_id(tenant);
      sandbox::v1::ListSandboxesResponse listed;
      if (!sandbox_stubs_[i]->ListSandboxes(&context, list, &listed).ok()) continue;
      for (const sandbox::v1::Sandbox& sandbox : listed.sandboxes()) {
        grpc::ClientContext destroy_context;
        SetDeadline(destroy_context);
        sandbox::v1::DestroySandboxRequest destroy;
        destroy.set_tenant_id(tenant);
        destroy.set_sandbox_id(sandbox.id());
        sandbox::v1::DestroySandboxResponse destroyed;
        (void)sandbox_stubs_[i]->DestroySandbox(&destroy_context, destroy, &destroyed);
      }
    }
    if (HasFailure()) {
      std::cerr << "---- parley-sandbox " << i << " (tail) ----\n"
                << Tail(*sandbox_processes_[i]) << "\n";
    }
  }
  // A clean stop, so that each parley-sandbox removes its parent cgroups (killed, it
  // left an empty group per controller on the host for every test).
  for (const auto& process : sandbox_processes_) process->Signal(SIGTERM);
  for (const auto& process : sandbox_processes_) (void)process->WaitForExit(absl::Seconds(15));
  // A sandbox whose creation was still in flight when the test ended outlives them.
  if (!sandbox_processes_.empty()) {
    parley::testing::KillSandboxProcesses(sandbox_uid_base_, kSandboxUidsPerTest);
  }
  sandbox_stubs_.clear();
  sandbox_processes_.clear();
  gateway_.reset();
  store_process_.reset();
}

RedisEndpoint SessionFixture::redis_endpoint() const {
  if (redis_cluster_) return redis_cluster_->endpoint();
  return private_redis_ ? private_redis_->endpoint() : shared_redis_->endpoint();
}

void SessionFixture::StartCluster(const ClusterOptions& options) {
  options_ = options;
  auto db = parley::testing::TestDatabase::Create();
  ASSERT_TRUE(db.ok()) << db.status();
  db_ = *std::move(db);
  auto migrate = RunCommand({.binary = BinaryPath("store-svc/parley-store"),
                             .args = {"migrate", "--database_url=" + db_->url()}});
  ASSERT_TRUE(migrate.ok()) << migrate.status();
  ASSERT_EQ(migrate->exit_code, 0) << migrate->output;

  if (options.redis_cluster) {
    auto cluster = parley::testing::PrivateRedisCluster::Start();
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    redis_cluster_ = *std::move(cluster);
    redis_url_ = redis_cluster_->url();
    keys_ = RedisKeys("");
  } else if (options.private_redis) {
    auto redis = parley::testing::PrivateRedis::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    private_redis_ = *std::move(redis);
    redis_url_ = private_redis_->url();
    keys_ = RedisKeys("");
  } else {
    auto redis = parley::testing::TestRedis::Create();
    ASSERT_TRUE(redis.ok()) << redis.status();
    shared_redis_ = *std::move(redis);
    redis_url_ = shared_redis_->url();
    keys_ = shared_redis_->keys();
  }
  auto connection = RedisConnection::Connect(redis_endpoint(), absl::Seconds(5));
  ASSERT_TRUE(connection.ok()) << connection.status();
  redis_connection_ = *std::move(connection);

  // The store persists events from Redis into Postgres, as in production: the
  // recovery paths read back what was trimmed or flushed from there.
  auto store =
      ServiceProcess::Start({.binary = BinaryPath("store-svc/parley-store"),
                             .args = {"--grpc_addr=127.0.0.1:0", "--admin_addr=127.0.0.1:0",
                                      "--database_url=" + db_->url(), "--redis_url=" + redis_url_,
                                      "--redis_key_prefix=" + keys_.prefix()},
                             .env = options.service_env});
  ASSERT_TRUE(store.ok()) << store.status();
  store_process_ = *std::move(store);
  absl::Status serving = store_process_->WaitUntilServing(kStartTimeout);
  ASSERT_TRUE(serving.ok()) << serving << store_process_->Output();
  store_ = store::v1::StoreService::NewStub(
      grpc::CreateChannel(store_process_->grpc_target(), grpc::InsecureChannelCredentials()));

  if (options.sandbox) {
    ASSERT_NO_FATAL_FAILURE(StartSandboxes(options));
  }

  replicas_.resize(options.replicas);
  worker_ids_.resize(options.replicas);
  routers_.resize(options.replicas);
  for (int i = 0; i < options.replicas; ++i) {
    ASSERT_NO_FATAL_FAILURE(StartReplica(i));
  }

  if (options.gateway) {
    std::vector<std::string> args = {"--grpc_addr=127.0.0.1:0",
                                     "--admin_addr=127.0.0.1:0",
                                     "--store_addr=" + store_process_->grpc_target(),
                                     "--session_addr=" + replicas_[0]->grpc_target(),
                                     "--redis_url=" + redis_url_,
                                     "--redis_key_prefix=" + keys_.prefix(),
                                     std::string("--bootstrap_tenant=") + kTenantA};
    for (std::string& arg : SandboxArgs()) args.push_back(std::move(arg));
    args.insert(args.end(), options.gateway_flags.begin(), options.gateway_flags.end());
    std::map<std::string, std::string> env = options.service_env;
    env["PARLEY_BOOTSTRAP_API_KEY"] = kGatewayApiKey;
    auto gateway = ServiceProcess::Start(
        {.binary = BinaryPath("gateway/parley-gateway"), .args = std::move(args), .env = env});
    ASSERT_TRUE(gateway.ok()) << gateway.status();
    gateway_ = *std::move(gateway);
    serving = gateway_->WaitUntilServing(kStartTimeout);
    ASSERT_TRUE(serving.ok()) << serving << gateway_->Output();
  }
}

void SessionFixture::StartSandboxes(const ClusterOptions& options) {
  const int count = std::max(options.sandbox_replicas, 1);
  const int64_t uid_base = sandbox_uid_base_;
  const int64_t uid_count = kSandboxUidsPerTest / count;
  int port = 0;
  if (count > 1) {
    port = parley::testing::FreePort();
    ASSERT_NE(port, 0) << "no free loopback port";
    sandbox_address_template_ = absl::StrCat("127.0.0.{replica}:", port);
  }
  for (int k = 0; k < count; ++k) {
    std::vector<std::string> args = {
        "--admin_addr=127.0.0.1:0",
        absl::StrCat("--state_dir=", parley::testing::TestTempDir(), "/sandbox-state-", k),
        "--sandboxd_path=" + BinaryPath("sandbox-svc/parley-sandboxd"),
        absl::StrCat("--sandbox_uid_base=", uid_base + k * uid_count),
        absl::StrCat("--sandbox_uid_count=", uid_count)};
    if (count == 1) {
      args.push_back("--grpc_addr=127.0.0.1:0");
    } else {
      args.push_back(absl::StrCat("--grpc_addr=127.0.0.", SandboxOrdinal(k), ":", port));
      args.push_back(absl::StrCat("--replica=parley-sandbox-", SandboxOrdinal(k)));
      args.push_back("--replica_address_template=" + sandbox_address_template_);
      args.push_back(absl::StrCat("--max_replicas=", SandboxOrdinal(count - 1) + 1));
    }
    auto sandbox = ServiceProcess::Start({.binary = BinaryPath("sandbox-svc/parley-sandbox"),
                                          .args = std::move(args),
                                          .env = options.service_env});
    ASSERT_TRUE(sandbox.ok()) << sandbox.status();
    sandbox_processes_.push_back(*std::move(sandbox));
    absl::Status serving = sandbox_processes_.back()->WaitUntilServing(kStartTimeout);
    ASSERT_TRUE(serving.ok()) << serving << sandbox_processes_.back()->Output();
    sandbox_stubs_.push_back(sandbox::v1::SandboxManager::NewStub(grpc::CreateChannel(
        sandbox_processes_.back()->grpc_target(), grpc::InsecureChannelCredentials())));
  }
}

std::vector<std::string> SessionFixture::SandboxArgs() const {
  std::vector<std::string> args;
  if (sandbox_processes_.empty()) return args;
  args.push_back("--sandbox_addr=" + sandbox_processes_[0]->grpc_target());
  if (!sandbox_address_template_.empty()) {
    args.push_back("--sandbox_replica_address_template=" + sandbox_address_template_);
  }
  return args;
}

std::vector<std::string> SessionFixture::ReplicaArgs() const {
  std::vector<std::string> args = {
      "--grpc_addr=127.0.0.1:0",
      "--admin_addr=127.0.0.1:0",
      "--store_addr=" + store_process_->grpc_target(),
      "--redis_url=" + redis_url_,
      "--redis_key_prefix=" + keys_.prefix(),
      absl::StrCat("--turn_slots=", options_.turn_slots),
      Flag("lease_ttl", options_.lease_ttl),
      Flag("poll_interval", options_.poll_interval),
      absl::StrCat("--max_attempts=", options_.max_attempts),
      Flag("queued_turn_ttl", options_.queued_turn_ttl),
      absl::StrCat("--max_running_per_tenant=", options_.max_running_per_tenant),
      Flag("scripted_delay", options_.scripted_delay),
      Flag("drain_timeout", options_.drain_timeout)};
  for (std::string& arg : SandboxArgs()) args.push_back(std::move(arg));
  args.insert(args.end(), options_.replica_flags.begin(), options_.replica_flags.end());
  return args;
}

void SessionFixture::StartReplica(int index, const std::vector<std::string>& extra_args) {
  ASSERT_LT(index, static_cast<int>(replicas_.size()));
  worker_ids_[index] = absl::StrCat("replica-", index, "-start-", ++starts_);
  std::vector<std::string> args = ReplicaArgs();
  args.push_back("--worker_id=" + worker_ids_[index]);
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  std::map<std::string, std::string> env = options_.service_env;
  for (const auto& [name, value] : options_.replica_env) env[name] = value;
  auto process = ServiceProcess::Start({.binary = BinaryPath("session-svc/parley-session"),
                                        .args = std::move(args),
                                        .env = std::move(env)});
  ASSERT_TRUE(process.ok()) << process.status();
  replicas_[index] = *std::move(process);
  absl::Status serving = replicas_[index]->WaitUntilServing(kStartTimeout);
  ASSERT_TRUE(serving.ok()) << serving << replicas_[index]->Output();
  routers_[index] = router::v1::SessionRouter::NewStub(
      grpc::CreateChannel(replicas_[index]->grpc_target(), grpc::InsecureChannelCredentials()));
}

int SessionFixture::ReplicaOfWorker(const std::string& worker_id) const {
  for (size_t i = 0; i < worker_ids_.size(); ++i) {
    if (worker_ids_[i] == worker_id) return static_cast<int>(i);
  }
  return -1;
}

// ---- Store fixtures ----

std::string SessionFixture::CreateSession(const std::string& tenant, v1::MultitaskPolicy policy) {
  v1::AgentConfig config;
  config.set_multitask_policy(policy);
  return CreateSessionWith(tenant, config);
}

absl::StatusOr<std::vector<sandbox::v1::Sandbox>> SessionFixture::SessionSandboxes(
    const std::string& tenant, const std::string& session) {
  grpc::ClientContext context;
  SetDeadline(context);
  sandbox::v1::ListSandboxesRequest request;
  request.set_tenant_id(tenant);
  request.set_session_id(session);
  sandbox::v1::ListSandboxesResponse response;
  grpc::Status status = sandboxes().ListSandboxes(&context, request, &response);
  if (!status.ok()) return FromGrpc(status);
  return std::vector<sandbox::v1::Sandbox>(response.sandboxes().begin(),
                                           response.sandboxes().end());
}

std::string SessionFixture::StoredKey(const std::string& tenant,
                                      const std::vector<std::string>& scopes) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  store::v1::CreateApiKeyRequest request;
  request.set_tenant_id(tenant);
  request.set_name("test key");
  for (const std::string& scope : scopes) request.add_scopes(scope);
  store::v1::CreateApiKeyResponse response;
  grpc::Status status = store().CreateApiKey(&context, request, &response);
  EXPECT_TRUE(status.ok()) << Describe(status);
  return response.secret();
}

std::string SessionFixture::CreateSessionWith(const std::string& tenant,
                                              const v1::AgentConfig& config) {
  {
    grpc::ClientContext context;
    SetDeadline(context);
    store::v1::CreateTenantRequest request;
    request.set_tenant_id(tenant);
    store::v1::CreateTenantResponse response;
    grpc::Status status = store_->CreateTenant(&context, request, &response);
    EXPECT_TRUE(status.ok()) << Describe(status);
  }
  grpc::ClientContext context;
  SetDeadline(context);
  store::v1::CreateSessionRequest request;
  request.set_tenant_id(tenant);
  *request.mutable_request()->mutable_agent_config() = config;
  store::v1::CreateSessionResponse response;
  grpc::Status status = store_->CreateSession(&context, request, &response);
  EXPECT_TRUE(status.ok()) << Describe(status);
  return response.session().id();
}

// ---- SessionRouter ----

grpc::Status SessionFixture::Submit(const std::string& tenant, const std::string& session,
                                    const std::string& text, v1::SendMessageResponse* response,
                                    const SubmitOptions& options) {
  const int replica =
      options.replica >= 0 ? options.replica : next_replica_.fetch_add(1) % replica_count();
  grpc::ClientContext context;
  SetDeadline(context);
  router::v1::SubmitMessageRequest request;
  request.set_tenant_id(tenant);
  request.mutable_request()->set_session_id(session);
  request.mutable_request()->add_content()->set_text(text);
  request.mutable_request()->set_idempotency_key(options.idempotency_key);
  request.mutable_request()->set_multitask_policy(options.policy);
  return routers_[replica]->SubmitMessage(&context, request, response);
}

absl::StatusOr<std::string> SessionFixture::SubmitTurn(const std::string& tenant,
                                                       const std::string& session,
                                                       const std::string& text,
                                                       const SubmitOptions& options) {
  v1::SendMessageResponse response;
  grpc::Status status = Submit(tenant, session, text, &response, options);
  if (!status.ok()) return FromGrpc(status);
  if (response.turn().id().empty()) return absl::InternalError("SubmitMessage returned no turn");
  return response.turn().id();
}

grpc::Status SessionFixture::CancelTurn(const std::string& tenant, const std::string& session,
                                        const std::string& turn_id,
                                        v1::CancelTurnResponse* response, int replica) {
  grpc::ClientContext context;
  SetDeadline(context);
  router::v1::CancelTurnRequest request;
  request.set_tenant_id(tenant);
  request.mutable_request()->set_session_id(session);
  request.mutable_request()->set_turn_id(turn_id);
  return routers_[replica]->CancelTurn(&context, request, response);
}

grpc::Status SessionFixture::CloseSession(const std::string& tenant, const std::string& session,
                                          v1::CloseSessionResponse* response, int replica) {
  grpc::ClientContext context;
  SetDeadline(context);
  router::v1::CloseSessionRequest request;
  request.set_tenant_id(tenant);
  request.mutable_request()->set_session_id(session);
  return routers_[replica]->CloseSession(&context, request, response);
}

grpc::Status SessionFixture::GetSessionStatus(const std::string& tenant, const std::string& session,
                                              router::v1::GetSessionStatusResponse* response,
                                              int replica) {
  grpc::ClientContext context;
  SetDeadline(context);
  router::v1::GetSessionStatusRequest request;
  request.set_tenant_id(tenant);
  request.set_session_id(session);
  return routers_[replica]->GetSessionStatus(&context, request, response);
}

// ---- Store reads ----

absl::StatusOr<v1::Turn> SessionFixture::GetTurn(const std::string& tenant,
                                                 const std::string& turn_id) {
  grpc::ClientContext context;
  SetDeadline(context);
  store::v1::GetTurnRequest request;
  request.set_tenant_id(tenant);
  request.set_turn_id(turn_id);
  store::v1::GetTurnResponse response;
  grpc::Status status = store_->GetTurn(&context, request, &response);
  if (!status.ok()) return FromGrpc(status);
  return response.turn();
}

absl::StatusOr<std::vector<v1::Turn>> SessionFixture::ListTurns(const std::string& tenant,
                                                                const std::string& session) {
  std::vector<v1::Turn> turns;
  std::string page_token;
  do {
    grpc::ClientContext context;
    SetDeadline(context);
    store::v1::ListTurnsRequest request;
    request.set_tenant_id(tenant);
    request.set_session_id(session);
    request.set_page_size(1000);
    request.set_page_token(page_token);
    store::v1::ListTurnsResponse response;
    grpc::Status status = store_->ListTurns(&context, request, &response);
    if (!status.ok()) return FromGrpc(status);
    turns.insert(turns.end(), response.turns().begin(), response.turns().end());
    page_token = response.next_page_token();
  } while (!page_token.empty());
  return turns;
}

absl::StatusOr<std::vector<v1::Message>> SessionFixture::ListMessages(const std::string& tenant,
                                                                      const std::string& session) {
  std::vector<v1::Message> messages;
  while (true) {
    grpc::ClientContext context;
    SetDeadline(context);
    store::v1::ListMessagesRequest request;
    request.set_tenant_id(tenant);
    request.mutable_request()->set_session_id(session);
    request.mutable_request()->set_limit(1000);
    if (!messages.empty()) request.mutable_request()->set_after_message_id(messages.back().id());
    store::v1::ListMessagesResponse response;
    grpc::Status status = store_->ListMessages(&context, request, &response);
    if (!status.ok()) return FromGrpc(status);
    messages.insert(messages.end(), response.messages().begin(), response.messages().end());
    if (!response.has_more() || response.messages().empty()) return messages;
  }
}

absl::StatusOr<store::v1::GetSessionResponse> SessionFixture::GetSession(
    const std::string& tenant, const std::string& session) {
  grpc::ClientContext context;
  SetDeadline(context);
  store::v1::GetSessionRequest request;
  request.set_tenant_id(tenant);
  request.set_session_id(session);
  store::v1::GetSessionResponse response;
  grpc::Status status = store_->GetSession(&context, request, &response);
  if (!status.ok()) return FromGrpc(status);
  return response;
}

absl::StatusOr<store::v1::GetLastSeqResponse> SessionFixture::GetLastSeq(
    const std::string& tenant, const std::string& session) {
  grpc::ClientContext context;
  SetDeadline(context);
  store::v1::GetLastSeqRequest request;
  request.set_tenant_id(tenant);
  request.set_session_id(session);
  store::v1::GetLastSeqResponse response;
  grpc::Status status = store_->GetLastSeq(&context, request, &response);
  if (!status.ok()) return FromGrpc(status);
  return response;
}

// ---- Waits ----

absl::StatusOr<v1::Turn> SessionFixture::WaitForTurn(
    const std::string& tenant, const std::string& turn_id,
    const std::function<bool(const v1::Turn&)>& done, const std::string& what,
    absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::StatusOr<v1::Turn> turn;
  while (true) {
    turn = GetTurn(tenant, turn_id);
    if (turn.ok() && done(*turn)) return turn;
    if (absl::Now() > deadline) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "turn ", turn_id, " never ", what, " within ", absl::FormatDuration(timeout),
      "; last seen: ", turn.ok() ? turn->ShortDebugString() : turn.status().ToString()));
}

absl::StatusOr<v1::Turn> SessionFixture::WaitForTurnStatus(const std::string& tenant,
                                                           const std::string& turn_id,
                                                           v1::TurnStatus status,
                                                           absl::Duration timeout) {
  return WaitForTurn(
      tenant, turn_id, [status](const v1::Turn& turn) { return turn.status() == status; },
      absl::StrCat("reached ", v1::TurnStatus_Name(status)), timeout);
}

absl::StatusOr<v1::Turn> SessionFixture::WaitForTurnEnd(const std::string& tenant,
                                                        const std::string& session,
                                                        const std::string& turn_id,
                                                        absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::StatusOr<v1::Turn> turn = WaitForTurn(
      tenant, turn_id, [](const v1::Turn& t) { return IsTerminal(t.status()); },
      "reached a terminal status", timeout);
  if (!turn.ok()) return turn;
  absl::StatusOr<std::vector<v1::Event>> events = WaitForEvents(
      tenant, session,
      [&](const std::vector<v1::Event>& events) { return CountSealed(events, turn_id) > 0; },
      absl::StrCat("a TurnSealed of ", turn_id),
      std::max(deadline - absl::Now(), absl::Seconds(1)));
  if (!events.ok()) return events.status();
  return GetTurn(tenant, turn_id);
}

absl::StatusOr<std::vector<v1::Event>> SessionFixture::WaitForEvents(
    const std::string& tenant, const std::string& session,
    const std::function<bool(const std::vector<v1::Event>&)>& done, const std::string& what,
    absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  // A connection of this call's own: waits may run on any thread.
  auto redis = RedisConnection::Connect(redis_endpoint(), absl::Seconds(5));
  if (!redis.ok()) return redis.status();
  size_t last_count = 0;
  while (true) {
    absl::StatusOr<std::vector<v1::Event>> events = ReadSessionEventsOn(**redis, tenant, session);
    if (!events.ok()) return events.status();
    last_count = events->size();
    if (done(*events)) return events;
    if (absl::Now() > deadline) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat("session ", session, ": never saw ", what,
                                                  " within ", absl::FormatDuration(timeout), " (",
                                                  last_count, " events)"));
}

absl::StatusOr<int> SessionFixture::WaitForOwner(const std::string& tenant,
                                                 const std::string& session,
                                                 const std::string& turn_id,
                                                 absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last_owner;
  while (absl::Now() <= deadline) {
    absl::StatusOr<store::v1::GetSessionResponse> state = GetSession(tenant, session);
    if (!state.ok()) return state.status();
    last_owner = state->lease_owner();
    if (state->session().current_turn_id() == turn_id || turn_id.empty()) {
      const int replica = ReplicaOfWorker(last_owner);
      if (replica >= 0) return replica;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "turn ", turn_id, " never had a known owner; last lease owner: \"", last_owner, "\""));
}

// ---- Events ----

absl::StatusOr<std::vector<v1::Event>> SessionFixture::ReadRedisEvents(RedisConnection& redis,
                                                                       const std::string& session) {
  const std::string key = keys_.EventStream(session);
  std::vector<v1::Event> events;
  std::string start = "-";
  while (true) {
    absl::StatusOr<RedisReply> reply = redis.Command({"XRANGE", key, start, "+", "COUNT", "1000"});
    if (!reply.ok()) return reply.status();
    const redisReply* entries = reply->get();
    if (entries->type != REDIS_REPLY_ARRAY || entries->elements == 0) return events;
    std::string last_id;
    for (size_t i = 0; i < entries->elements; ++i) {
      const redisReply* entry = entries->element[i];
      last_id = ReplyString(entry->element[0]);
      std::vector<std::string> id_parts = absl::StrSplit(last_id, '-');
      uint64_t id_seq = 0, id_sub = 0;
      if (id_parts.size() != 2 || !absl::SimpleAtoi(id_parts[0], &id_seq) ||
          !absl::SimpleAtoi(id_parts[1], &id_sub)) {
        return absl::InternalError(absl::StrCat(key, ": malformed entry id ", last_id));
      }
      const redisReply* payload = StreamEntryField(entry, "e");
      v1::Event event;
      if (payload == nullptr || !event.ParseFromString(ReplyString(payload))) {
        return absl::InternalError(absl::StrCat(key, ": entry ", last_id, " holds no Event"));
      }
      if (event.transient() != (id_sub != 0)) {
        return absl::InternalError(
            absl::StrCat(key, ": entry ", last_id, " has transient = ", event.transient()));
      }
      if (event.transient()) continue;
      if (event.seq() != id_seq || event.session_id() != session) {
        return absl::InternalError(absl::StrCat(key, ": entry ", last_id, " carries seq ",
                                                event.seq(), " of session ", event.session_id()));
      }
      if (!events.empty() && event.seq() != events.back().seq() + 1) {
        return absl::InternalError(absl::StrCat(key, ": seq ", event.seq(), " follows seq ",
                                                events.back().seq(), " (gap or duplicate)"));
      }
      events.push_back(std::move(event));
    }
    start = "(" + last_id;
  }
}

absl::StatusOr<std::vector<v1::Event>> SessionFixture::ReadStoredEvents(const std::string& tenant,
                                                                        const std::string& session,
                                                                        uint64_t after_seq) {
  std::vector<v1::Event> events;
  while (true) {
    grpc::ClientContext context;
    SetDeadline(context);
    store::v1::ReadEventsRequest request;
    request.set_tenant_id(tenant);
    request.set_session_id(session);
    request.set_after_seq(after_seq);
    request.set_limit(10000);
    store::v1::ReadEventsResponse response;
    grpc::Status status = store_->ReadEvents(&context, request, &response);
    if (!status.ok()) return FromGrpc(status);
    for (const v1::Event& event : response.events()) {
      if (event.seq() != after_seq + 1 || event.transient()) {
        return absl::InternalError(absl::StrCat("store: session ", session, " holds seq ",
                                                event.seq(), " after ", after_seq,
                                                event.transient() ? " (transient)" : ""));
      }
      after_seq = event.seq();
      events.push_back(event);
    }
    if (!response.has_more() || response.events().empty()) return events;
  }
}

absl::StatusOr<std::vector<v1::Event>> SessionFixture::ReadSessionEvents(
    const std::string& tenant, const std::string& session) {
  return ReadSessionEventsOn(*redis_connection_, tenant, session);
}

absl::StatusOr<std::vector<v1::Event>> SessionFixture::ReadSessionEventsOn(
    RedisConnection& redis, const std::string& tenant, const std::string& session) {
  // Redis first: the persister trims only what Postgres already holds, so the store
  // read that follows covers whatever the Redis read no longer saw.
  absl::StatusOr<std::vector<v1::Event>> hot = ReadRedisEvents(redis, session);
  if (!hot.ok()) return hot.status();
  absl::StatusOr<std::vector<v1::Event>> events = ReadStoredEvents(tenant, session);
  if (!events.ok()) return events.status();
  for (const v1::Event& event : *hot) {
    if (event.seq() <= events->size()) {
      const v1::Event& stored = (*events)[event.seq() - 1];
      if (!google::protobuf::util::MessageDifferencer::Equals(stored, event)) {
        return absl::InternalError(absl::StrCat(
            "session ", session, " seq ", event.seq(), " differs between Redis (",
            event.ShortDebugString(), ") and Postgres (", stored.ShortDebugString(), ")"));
      }
      continue;
    }
    if (event.seq() != events->size() + 1) {
      return absl::InternalError(absl::StrCat("session ", session, ": gap before seq ", event.seq(),
                                              " (have 1..", events->size(), ")"));
    }
    events->push_back(event);
  }
  return events;
}

// ---- Free helpers ----

bool WaitUntil(const std::function<bool()>& condition, absl::Duration timeout,
               absl::Duration poll) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(poll);
  }
  return true;
}

bool IsTerminal(v1::TurnStatus status) {
  return status == v1::TURN_STATUS_SUCCEEDED || status == v1::TURN_STATUS_FAILED ||
         status == v1::TURN_STATUS_CANCELLED;
}

std::vector<v1::Event> EventsOfTurn(const std::vector<v1::Event>& events,
                                    const std::string& turn_id) {
  std::vector<v1::Event> out;
  for (const v1::Event& event : events) {
    if (event.turn_id() == turn_id) out.push_back(event);
  }
  return out;
}

std::string TextOf(const std::vector<v1::Event>& events, const std::string& turn_id) {
  std::string text;
  for (const v1::Event& event : events) {
    if (event.turn_id() == turn_id && event.has_text_delta()) text += event.text_delta().text();
  }
  return text;
}

int CountTextDeltas(const std::vector<v1::Event>& events, const std::string& turn_id) {
  int count = 0;
  for (const v1::Event& event : events) {
    if (event.turn_id() == turn_id && event.has_text_delta()) ++count;
  }
  return count;
}

std::vector<uint32_t> StartedAttempts(const std::vector<v1::Event>& events,
                                      const std::string& turn_id) {
  std::vector<uint32_t> attempts;
  for (const v1::Event& event : events) {
    if (event.turn_id() == turn_id && event.has_turn_started()) {
      attempts.push_back(event.turn_started().attempt());
    }
  }
  return attempts;
}

int CountSealed(const std::vector<v1::Event>& events, const std::string& turn_id) {
  int count = 0;
  for (const v1::Event& event : events) {
    if (event.has_turn_sealed() && event.turn_sealed().turn_id() == turn_id) ++count;
  }
  return count;
}

const v1::TurnCompleted* CompletedOf(const std::vector<v1::Event>& events,
                                     const std::string& turn_id) {
  for (const v1::Event& event : events) {
    if (event.turn_id() == turn_id && event.has_turn_completed()) return &event.turn_completed();
  }
  return nullptr;
}

std::string MessageText(const v1::Message& message) {
  std::string text;
  for (const v1::Part& part : message.parts()) {
    if (part.has_text()) text += part.text();
  }
  return text;
}

std::vector<v1::Message> MessagesOf(const std::vector<v1::Message>& messages,
                                    const std::string& turn_id, v1::Role role) {
  std::vector<v1::Message> out;
  for (const v1::Message& message : messages) {
    if (message.turn_id() == turn_id && message.role() == role) out.push_back(message);
  }
  return out;
}

std::vector<std::string> FieldViolations(const grpc::Status& status) {
  std::vector<std::string> fields;
  std::optional<v1::BadRequest> bad_request = GetBadRequest(FromGrpcStatus(status));
  if (!bad_request) return fields;
  for (const v1::FieldViolation& violation : bad_request->field_violations()) {
    fields.push_back(violation.field());
  }
  return fields;
}

bool NamesField(const grpc::Status& status, const std::string& field) {
  for (const std::string& named : FieldViolations(status)) {
    if (named == field || absl::EndsWith(named, "." + field) ||
        absl::StartsWith(named, field + "[") || absl::StrContains(named, "." + field + "[")) {
      return true;
    }
  }
  return false;
}

std::string ErrorReason(const grpc::Status& status) {
  std::optional<v1::ErrorInfo> info = GetErrorInfo(FromGrpcStatus(status));
  return info ? info->reason() : "";
}

std::string Describe(const grpc::Status& status) {
  std::string fields;
  for (const std::string& field : FieldViolations(status)) absl::StrAppend(&fields, " ", field);
  return absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())),
                      ": ", status.error_message(), fields.empty() ? "" : " [fields:", fields,
                      fields.empty() ? "" : "]",
                      ErrorReason(status).empty() ? "" : " reason=" + ErrorReason(status));
}

// ---- LiveSubscriber ----

LiveSubscriber::LiveSubscriber(const std::string& gateway_target, const std::string& session,
                               uint64_t after_seq)
    : stub_(v1::SessionService::NewStub(
          grpc::CreateChannel(gateway_target, grpc::InsecureChannelCredentials()))) {
  context_.AddMetadata("authorization", std::string("Bearer ") + kGatewayApiKey);
  context_.set_deadline(absl::ToChronoTime(absl::Now() + absl::Minutes(5)));
  request_.set_session_id(session);
  request_.set_after_seq(after_seq);
  thread_ = std::thread([this] { Read(); });
}

LiveSubscriber::~LiveSubscriber() {
  context_.TryCancel();
  thread_.join();
}

void LiveSubscriber::Read() {
  auto reader = stub_->StreamEvents(&context_, request_);
  v1::StreamEventsResponse response;
  while (reader->Read(&response)) {
    if (!response.has_event()) continue;
    absl::MutexLock lock(&mu_);
    events_.push_back(response.event());
  }
  grpc::Status status = reader->Finish();
  absl::MutexLock lock(&mu_);
  status_ = status;
}

bool LiveSubscriber::WaitFor(const std::function<bool(const std::vector<v1::Event>&)>& done,
                             absl::Duration timeout) {
  return WaitUntil([&] { return done(events()); }, timeout);
}

std::vector<v1::Event> LiveSubscriber::events() const {
  absl::MutexLock lock(&mu_);
  return events_;
}

grpc::Status LiveSubscriber::status() const {
  absl::MutexLock lock(&mu_);
  return status_;
}

}  // namespace parley::session::testing
