// A parley-session cluster under test, built from the real binaries: a fresh Postgres
// database with the schema, one parley-store (with its event persister, so events reach
// Postgres as in production), a Redis key space of the test's own (or a whole Redis
// server, for tests that flush it), K parley-session replicas and, on request, a
// parley-gateway for live subscribers.
//
// Helpers drive the cluster the way the gateway does (router.v1 SessionRouter, any
// replica) and read back what a client would trust: turns and messages from store-svc,
// and a session's whole event stream — the Redis hot window plus what store-svc holds —
// checked to be exactly 1..N, durable events only.
//
//   class Scheduling : public SessionFixture {};
//   TEST_F(Scheduling, OneTurnRuns) {
//     ASSERT_NO_FATAL_FAILURE(StartCluster({.replicas = 2}));
//     const std::string session = CreateSession(kTenantA);
//     v1::SendMessageResponse sent;
//     ASSERT_TRUE(Submit(kTenantA, session, "hello", &sent).ok());
//     auto turn = WaitForTurnEnd(kTenantA, session, sent.turn().id());
//     auto events = ReadSessionEvents(kTenantA, session);  // error unless 1..N
//   }
//
// Every wait polls a condition with a deadline; nothing sleeps a fixed time. Helpers are
// safe to call from several threads except redis(), which belongs to the test's thread.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/proto_time.h"
#include "common/redis.h"
#include "parley/router/v1/router.grpc.pb.h"
#include "parley/sandbox/v1/sandbox.grpc.pb.h"
#include "parley/store/v1/store.grpc.pb.h"
#include "parley/v1/parley.grpc.pb.h"
#include "tests/harness/services.h"

namespace parley::session::testing {

inline constexpr char kTenantA[] = "tenant_a";
inline constexpr char kTenantB[] = "tenant_b";
// The gateway's bootstrap key (its tenant is kTenantA).
inline constexpr char kGatewayApiKey[] = "pk_session_test";

struct ClusterOptions {
  int replicas = 3;
  // Flags of every replica (session-svc/README.md).
  int turn_slots = 16;
  absl::Duration lease_ttl = absl::Seconds(2);
  absl::Duration poll_interval = absl::Milliseconds(500);
  int max_attempts = 2;
  absl::Duration queued_turn_ttl = absl::Hours(24);
  int max_running_per_tenant = 0;
  absl::Duration scripted_delay = absl::ZeroDuration();
  absl::Duration drain_timeout = absl::Seconds(10);
  // A Redis server of the test's own instead of a key prefix on the shared one: for
  // tests that FLUSHALL.
  bool private_redis = false;
  // Every service talks to a six-node Redis Cluster of the test's own
  // (redis+cluster://) instead.
  bool redis_cluster = false;
  // Starts a parley-gateway (bootstrap key kGatewayApiKey, tenant kTenantA) for
  // StreamEvents subscribers.
  bool gateway = false;
  // More flags of that gateway.
  std::vector<std::string> gateway_flags;
  // Starts a parley-sandbox (bubblewrap) for the agent's tools; the replicas use it.
  bool sandbox = false;
  // With `sandbox`: how many parley-sandbox replicas. Above 1 they run as a StatefulSet
  // would: replica k (0-based) has ordinal k + 2 and listens on 127.0.0.<ordinal>:P (one
  // port P, one loopback address each, so "127.0.0.{replica}:P" is their address
  // template), with a state dir of its own; services send acquires to the first and
  // route by id through the template.
  int sandbox_replicas = 1;
  // More flags of every replica.
  std::vector<std::string> replica_flags;
  // More environment of every replica (e.g. a model provider's key).
  std::map<std::string, std::string> replica_env;
  // More environment of every service process: store, sandbox, replicas and gateway
  // (e.g. OTEL_* to export their spans).
  std::map<std::string, std::string> service_env;
};

struct SubmitOptions {
  v1::MultitaskPolicy policy = v1::MULTITASK_POLICY_UNSPECIFIED;
  std::string idempotency_key;
  // The replica to call; -1 picks the next one round-robin.
  int replica = -1;
};

class SessionFixture : public ::testing::Test {
 protected:
  void TearDown() override;

  // Starts the whole cluster; a fatal test failure when any process does not come up.
  void StartCluster(const ClusterOptions& options);
  // (Re)starts replica `index` with the cluster's flags followed by `extra_args` (a
  // later flag wins). Each start gets a new worker id.
  void StartReplica(int index, const std::vector<std::string>& extra_args = {});
  int replica_count() const { return static_cast<int>(replicas_.size()); }
  parley::testing::ServiceProcess& replica(int index) { return *replicas_[index]; }
  // The --worker_id replica `index` was started with.
  const std::string& worker_id(int index) const { return worker_ids_[index]; }
  // The replica running as `worker_id`, or -1.
  int ReplicaOfWorker(const std::string& worker_id) const;
  parley::testing::ServiceProcess& store_process() { return *store_process_; }
  parley::testing::ServiceProcess* gateway() { return gateway_.get(); }

  router::v1::SessionRouter::Stub& router(int index) { return *routers_[index]; }
  store::v1::StoreService::Stub& store() { return *store_; }
  // The test thread's own Redis connection (not thread-safe).
  RedisConnection& redis() { return *redis_connection_; }
  RedisEndpoint redis_endpoint() const;
  // The test's Redis Cluster (ClusterOptions.redis_cluster); null without one.
  parley::testing::PrivateRedisCluster* redis_cluster() { return redis_cluster_.get(); }
  const RedisKeys& keys() const { return keys_; }

  // ---- Store fixtures ----

  // Creates the tenant (idempotent) and a new session of it.
  std::string CreateSession(const std::string& tenant,
                            v1::MultitaskPolicy policy = v1::MULTITASK_POLICY_UNSPECIFIED);
  // The same with an agent configuration (tools, limits, retry budget).
  std::string CreateSessionWith(const std::string& tenant, const v1::AgentConfig& config);
  // The secret of a new API key of `tenant` made straight in store-svc, as an operator
  // would (the tenant must exist).
  std::string StoredKey(const std::string& tenant, const std::vector<std::string>& scopes);

  // ---- sandbox-svc (ClusterOptions.sandbox) ----

  // The first parley-sandbox (the only one unless ClusterOptions.sandbox_replicas > 1).
  sandbox::v1::SandboxManager::Stub& sandboxes() { return *sandbox_stubs_[0]; }
  parley::testing::ServiceProcess* sandbox_process() {
    return sandbox_processes_.empty() ? nullptr : sandbox_processes_[0].get();
  }
  // Replica `index` (0-based) of parley-sandbox, its stub, its ordinal, and the address
  // template of the replicas (empty with one replica).
  parley::testing::ServiceProcess& sandbox_process(int index) { return *sandbox_processes_[index]; }
  sandbox::v1::SandboxManager::Stub& sandboxes(int index) { return *sandbox_stubs_[index]; }
  static uint32_t SandboxOrdinal(int index) { return static_cast<uint32_t>(index) + 2; }
  const std::string& sandbox_address_template() const { return sandbox_address_template_; }
  // The session's live sandboxes (not DESTROYED), newest first.
  absl::StatusOr<std::vector<sandbox::v1::Sandbox>> SessionSandboxes(const std::string& tenant,
                                                                     const std::string& session);

  // ---- SessionRouter, as the gateway calls it ----

  grpc::Status Submit(const std::string& tenant, const std::string& session,
                      const std::string& text, v1::SendMessageResponse* response,
                      const SubmitOptions& options = {});
  // Submit, with the turn id on success.
  absl::StatusOr<std::string> SubmitTurn(const std::string& tenant, const std::string& session,
                                         const std::string& text,
                                         const SubmitOptions& options = {});
  grpc::Status CancelTurn(const std::string& tenant, const std::string& session,
                          const std::string& turn_id, v1::CancelTurnResponse* response,
                          int replica = 0);
  grpc::Status CloseSession(const std::string& tenant, const std::string& session,
                            v1::CloseSessionResponse* response, int replica = 0);
  grpc::Status GetSessionStatus(const std::string& tenant, const std::string& session,
                                router::v1::GetSessionStatusResponse* response, int replica = 0);

  // ---- What store-svc holds ----

  absl::StatusOr<v1::Turn> GetTurn(const std::string& tenant, const std::string& turn_id);
  // Every turn of the session, oldest first.
  absl::StatusOr<std::vector<v1::Turn>> ListTurns(const std::string& tenant,
                                                  const std::string& session);
  // Every message of the session, oldest first.
  absl::StatusOr<std::vector<v1::Message>> ListMessages(const std::string& tenant,
                                                        const std::string& session);
  absl::StatusOr<store::v1::GetSessionResponse> GetSession(const std::string& tenant,
                                                           const std::string& session);
  absl::StatusOr<store::v1::GetLastSeqResponse> GetLastSeq(const std::string& tenant,
                                                           const std::string& session);

  // ---- Waiting on conditions (polled, bounded) ----

  // Polls `turn` until `done` holds; DEADLINE_EXCEEDED names `what` and the last state.
  absl::StatusOr<v1::Turn> WaitForTurn(const std::string& tenant, const std::string& turn_id,
                                       const std::function<bool(const v1::Turn&)>& done,
                                       const std::string& what,
                                       absl::Duration timeout = absl::Seconds(30));
  absl::StatusOr<v1::Turn> WaitForTurnStatus(const std::string& tenant, const std::string& turn_id,
                                             v1::TurnStatus status,
                                             absl::Duration timeout = absl::Seconds(30));
  // Waits until the turn is terminal in the store and its TurnSealed is in the stream.
  absl::StatusOr<v1::Turn> WaitForTurnEnd(const std::string& tenant, const std::string& session,
                                          const std::string& turn_id,
                                          absl::Duration timeout = absl::Seconds(30));
  // Polls the session's checked event stream until `done` holds.
  absl::StatusOr<std::vector<v1::Event>> WaitForEvents(
      const std::string& tenant, const std::string& session,
      const std::function<bool(const std::vector<v1::Event>&)>& done, const std::string& what,
      absl::Duration timeout = absl::Seconds(30));
  // Waits until the session's running turn is leased by a known replica; returns it.
  absl::StatusOr<int> WaitForOwner(const std::string& tenant, const std::string& session,
                                   const std::string& turn_id,
                                   absl::Duration timeout = absl::Seconds(30));

  // ---- The event stream ----

  // The session's durable events 1..N: Redis is read first (its trimmed part was
  // persisted before it was trimmed), then store-svc's ReadEvents; where both hold a seq
  // they must agree. Any gap, duplicate, disagreement or transient event out of place
  // is an error naming it. Transient events are left out.
  absl::StatusOr<std::vector<v1::Event>> ReadSessionEvents(const std::string& tenant,
                                                           const std::string& session);
  // The same on a connection of the caller's (for other threads).
  absl::StatusOr<std::vector<v1::Event>> ReadSessionEventsOn(RedisConnection& redis,
                                                             const std::string& tenant,
                                                             const std::string& session);
  // The durable events of the Redis stream, checked to be strictly consecutive and to
  // match their entry ids.
  absl::StatusOr<std::vector<v1::Event>> ReadRedisEvents(RedisConnection& redis,
                                                         const std::string& session);
  // store-svc's durable events after `after_seq`, every page.
  absl::StatusOr<std::vector<v1::Event>> ReadStoredEvents(const std::string& tenant,
                                                          const std::string& session,
                                                          uint64_t after_seq = 0);

  ClusterOptions options_;
  // The tenants whose sandboxes TearDown destroys (a test that makes another tenant
  // adds it): a sandbox left behind keeps its parley-sandbox's cgroups on the host.
  std::vector<std::string> sandbox_tenants_ = {kTenantA, kTenantB};

 private:
  std::vector<std::string> ReplicaArgs() const;
  // Starts ClusterOptions.sandbox_replicas parley-sandbox processes.
  void StartSandboxes(const ClusterOptions& options);
  // The flags that point a service at sandbox-svc (none without it).
  std::vector<std::string> SandboxArgs() const;

  std::unique_ptr<parley::testing::TestDatabase> db_;
  std::unique_ptr<parley::testing::TestRedis> shared_redis_;
  std::unique_ptr<parley::testing::PrivateRedis> private_redis_;
  std::unique_ptr<parley::testing::PrivateRedisCluster> redis_cluster_;
  std::string redis_url_;
  RedisKeys keys_;
  std::unique_ptr<RedisConnection> redis_connection_;
  std::unique_ptr<parley::testing::ServiceProcess> store_process_;
  std::unique_ptr<parley::testing::ServiceProcess> gateway_;
  std::vector<std::unique_ptr<parley::testing::ServiceProcess>> sandbox_processes_;
  // Each test process gets sandbox uids of its own (tests run in parallel), split
  // among its sandbox-svc replicas.
  static constexpr int64_t kSandboxUidsPerTest = 1000;
  const int64_t sandbox_uid_base_ =
      2'300'000 + static_cast<int64_t>(::getpid() % 1000) * kSandboxUidsPerTest;
  std::vector<std::unique_ptr<sandbox::v1::SandboxManager::Stub>> sandbox_stubs_;
  std::string sandbox_address_template_;
  std::unique_ptr<store::v1::StoreService::Stub> store_;
  std::vector<std::unique_ptr<parley::testing::ServiceProcess>> replicas_;
  std::vector<std::string> worker_ids_;
  std::vector<std::unique_ptr<router::v1::SessionRouter::Stub>> routers_;
  int starts_ = 0;
  std::atomic<int> next_replica_{0};
};

// ---- Free helpers ----

// Polls `condition` every `poll` until it holds (true) or `timeout` passes (false).
bool WaitUntil(const std::function<bool()>& condition, absl::Duration timeout,
               absl::Duration poll = absl::Milliseconds(20));

bool IsTerminal(v1::TurnStatus status);

// The events of one turn, in order.
std::vector<v1::Event> EventsOfTurn(const std::vector<v1::Event>& events,
                                    const std::string& turn_id);
// Concatenated TextDelta text of a turn's events.
std::string TextOf(const std::vector<v1::Event>& events, const std::string& turn_id);
int CountTextDeltas(const std::vector<v1::Event>& events, const std::string& turn_id);
// TurnStarted events of a turn; attempts in order.
std::vector<uint32_t> StartedAttempts(const std::vector<v1::Event>& events,
                                      const std::string& turn_id);
int CountSealed(const std::vector<v1::Event>& events, const std::string& turn_id);
// The turn's TurnCompleted, or nullptr.
const v1::TurnCompleted* CompletedOf(const std::vector<v1::Event>& events,
                                     const std::string& turn_id);
// Concatenated text parts of a message.
std::string MessageText(const v1::Message& message);
// Messages of `role` belonging to `turn_id`.
std::vector<v1::Message> MessagesOf(const std::vector<v1::Message>& messages,
                                    const std::string& turn_id, v1::Role role);

// Field paths of the BadRequest violations in a gRPC status.
std::vector<std::string> FieldViolations(const grpc::Status& status);
// True when some violation names `field`: exactly, as the last path element
// ("request.session_id" names "session_id") or with an index ("content[0]").
bool NamesField(const grpc::Status& status, const std::string& field);
// The ErrorInfo reason of a gRPC status, or "".
std::string ErrorReason(const grpc::Status& status);
// "CODE: message" for failure output.
std::string Describe(const grpc::Status& status);

// A StreamEvents subscriber on a parley-gateway, reading on a thread of its own.
class LiveSubscriber {
 public:
  LiveSubscriber(const std::string& gateway_target, const std::string& session,
                 uint64_t after_seq = 0);
  ~LiveSubscriber();  // Cancels the stream and joins the thread.

  // Waits until `done` holds over the events received so far.
  bool WaitFor(const std::function<bool(const std::vector<v1::Event>&)>& done,
               absl::Duration timeout);
  std::vector<v1::Event> events() const;
  // The stream's end status, once it ended (OK while still open).
  grpc::Status status() const;

 private:
  void Read();

  std::unique_ptr<v1::SessionService::Stub> stub_;
  grpc::ClientContext context_;
  v1::StreamEventsRequest request_;
  mutable absl::Mutex mu_;
  std::vector<v1::Event> events_ ABSL_GUARDED_BY(mu_);
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace parley::session::testing
