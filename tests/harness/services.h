// Test harness: real Postgres databases, Redis key spaces and service processes.
//
// scripts/test starts one throwaway Postgres and one Redis per run and exports their
// addresses as PARLEY_TEST_PG_URL and PARLEY_TEST_REDIS_URL. Each test then takes its
// own slice of them, so tests run in parallel without seeing each other:
//
//   auto db = TestDatabase::Create();        // a fresh database, dropped afterwards
//   auto redis = TestRedis::Create();        // a unique key prefix, deleted afterwards
//   auto store = ServiceProcess::Start({.binary = BinaryPath("store-svc/parley-store"),
//                                       .args = {"--database_url=" + (*db)->url()}});
//   ASSERT_OK((*store)->WaitUntilServing(absl::Seconds(20)));
//
// Outside scripts/test the variables are missing and tests that need the servers say
// so in their failure message.
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/service_type.h>
#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/redis.h"

namespace parley::testing {

// The value of a variable scripts/test exports; FAILED_PRECONDITION when unset.
absl::StatusOr<std::string> TestEnv(const std::string& name);

// Absolute path of a binary in the build tree, e.g. "gateway/parley-gateway".
std::string BinaryPath(const std::string& relative);
// A file of the source tree.
std::string SourcePath(const std::string& relative);

// A directory for this test's files, removed by scripts/test at the end of the run.
std::string TestTempDir();

// A loopback port nothing holds now, for a server that must be told its port (Redis,
// Prometheus); below the kernel's ephemeral range, so no outgoing connection takes it
// before the server binds it. 0 when none was found.
int FreePort();

class TestDatabase {
 public:
  // Creates an empty database with a unique name on the test server.
  static absl::StatusOr<std::unique_ptr<TestDatabase>> Create();
  ~TestDatabase();  // Drops it, closing any connections still open.

  // postgresql:// URL of this database.
  const std::string& url() const { return url_; }
  const std::string& name() const { return name_; }

 private:
  TestDatabase(std::string admin_url, std::string name, std::string url)
      : admin_url_(std::move(admin_url)), name_(std::move(name)), url_(std::move(url)) {}
  std::string admin_url_;
  std::string name_;
  std::string url_;
};

class TestRedis {
 public:
  // Connects to the test server and picks a unique key prefix.
  static absl::StatusOr<std::unique_ptr<TestRedis>> Create();
  ~TestRedis();  // Deletes every key under the prefix.

  RedisConnection& connection() { return *connection_; }
  const RedisEndpoint& endpoint() const { return endpoint_; }
  const std::string& url() const { return url_; }
  // Key names under this test's prefix.
  const RedisKeys& keys() const { return keys_; }

 private:
  TestRedis(std::string url, RedisEndpoint endpoint, std::unique_ptr<RedisConnection> connection,
            std::string prefix)
      : url_(std::move(url)),
        endpoint_(std::move(endpoint)),
        connection_(std::move(connection)),
        keys_(std::move(prefix)) {}
  std::string url_;
  RedisEndpoint endpoint_;
  std::unique_ptr<RedisConnection> connection_;
  RedisKeys keys_;
};

// A Postgres server of the test's own, for tests that stop or restart it (the shared
// server must stay up for everyone else). Started with scripts/lib.sh, as the
// unprivileged postgres user when the tests run as root. Unlike the shared server it
// commits durably (synchronous_commit on), so a crash loses nothing acknowledged.
class PrivatePostgres {
 public:
  static absl::StatusOr<std::unique_ptr<PrivatePostgres>> Start();
  ~PrivatePostgres();  // Stops the server and removes its files.

  // postgresql:// URL of its "postgres" database.
  std::string url() const;
  // Crash-stops the server (no clean shutdown) and starts it again on the same port.
  absl::Status RestartImmediately();
  // The two halves of RestartImmediately, for tests that look at the world while the
  // server is down: Crash() returns once it no longer accepts connections.
  absl::Status Crash();
  absl::Status StartAgain();

 private:
  PrivatePostgres(std::string dir, int port) : dir_(std::move(dir)), port_(port) {}
  std::string dir_;
  int port_;
};

// A Redis server of the test's own, for tests that restart or flush it. Durable
// (append-only file), so a restart keeps its data.
class PrivateRedis {
 public:
  static absl::StatusOr<std::unique_ptr<PrivateRedis>> Start();
  ~PrivateRedis();

  RedisEndpoint endpoint() const {
    RedisEndpoint endpoint;
    endpoint.port = port_;
    return endpoint;
  }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }
  // Stops the server cleanly (its data saved) and starts it again on the same port.
  absl::Status Restart();
  // kill -9: no clean shutdown; writes not yet fsynced to the append-only file (at
  // most about a second's) are lost. Returns once the process is gone.
  absl::Status Kill();
  // Starts it again on the same port after Kill().
  absl::Status StartAgain();

 private:
  PrivateRedis(std::string dir, int port) : dir_(std::move(dir)), port_(port) {}
  std::string dir_;
  int port_;
};

// A Redis Cluster of the test's own: six cluster-enabled redis-servers on loopback
// (three primaries, three replicas; scripts/lib.sh start_redis_cluster), for the fan-out
// and end-to-end cases that must hold on a cluster, including a primary killed.
class PrivateRedisCluster {
 public:
  static absl::StatusOr<std::unique_ptr<PrivateRedisCluster>> Start();
  ~PrivateRedisCluster();  // Stops every node still running and removes its files.

  // redis+cluster:// naming every node.
  std::string url() const;
  RedisEndpoint endpoint() const;
  // kill -9 of the primary serving `slot` (no clean shutdown), then waits until its
  // replica serves the slot and the cluster is ok again. Returns the killed port.
  // A frozen replica is continued (SIGCONT) right after the kill, so it takes over.
  absl::StatusOr<int> KillPrimaryOf(uint16_t slot, absl::Duration timeout);
  // SIGSTOP of the replica of the primary serving `slot`: the primary's WAITs then time
  // out, so a kill lands, more likely than not, between a write it ran and its reply.
  absl::Status FreezeReplicaOf(uint16_t slot);

 private:
  // SIGCONT of every frozen node.
  void ContinueFrozen();
  PrivateRedisCluster(std::string dir, std::vector<int> ports)
      : dir_(std::move(dir)), ports_(std::move(ports)) {}
  std::string dir_;
  std::vector<int> ports_;   // Client ports; killed ones stay listed (stopping them is a no-op).
  std::vector<int> frozen_;  // Ports of SIGSTOPped nodes.
};

// An in-process gRPC server that answers health checks with SERVING, and `also` (owned
// by the caller, outliving the server) when given: a stand-in for a dependency whose
// health, and perhaps one call, is all a test needs (the gateway's store-svc, when the
// test never reaches the store).
class ServingHealthServer {
 public:
  static absl::StatusOr<std::unique_ptr<ServingHealthServer>> Start(grpc::Service* also = nullptr);
  ~ServingHealthServer();
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  ServingHealthServer(std::unique_ptr<grpc::Service> service, std::unique_ptr<grpc::Server> server,
                      int port)
      : service_(std::move(service)), server_(std::move(server)), port_(port) {}
  std::unique_ptr<grpc::Service> service_;  // Outlives the server (destroyed after it).
  std::unique_ptr<grpc::Server> server_;
  int port_;
};

struct ProcessOptions {
  std::string binary;
  std::vector<std::string> args;
  // The child's whole environment besides PATH: nothing else leaks in from the test.
  std::map<std::string, std::string> env;
};

struct CommandResult {
  int exit_code = -1;  // 128 + signal number when killed by a signal.
  std::string output;  // stdout and stderr, interleaved.
};

// Runs a command to completion (killed after `timeout`).
absl::StatusOr<CommandResult> RunCommand(const ProcessOptions& options,
                                         absl::Duration timeout = absl::Seconds(30));

// A service binary running as a child process, its output captured to a file.
class ServiceProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ServiceProcess>> Start(const ProcessOptions& options);
  ~ServiceProcess();  // SIGKILL if still running.

  // Waits for the "serving" log line (which names the bound ports) and then for the
  // gRPC health check to answer SERVING.
  absl::Status WaitUntilServing(absl::Duration timeout);
  pid_t pid() const { return pid_; }
  int grpc_port() const { return grpc_port_; }
  int admin_port() const { return admin_port_; }
  // The gRPC address: the host it bound (127.0.0.1 for a wildcard) and its port.
  std::string grpc_target() const { return grpc_host_ + ":" + std::to_string(grpc_port_); }

  // Everything the process wrote so far.
  std::string Output() const;
  void Signal(int signal_number);
  // The exit code (128 + signal when killed); DEADLINE_EXCEEDED if still running.
  absl::StatusOr<int> WaitForExit(absl::Duration timeout);
  bool running();

 private:
  ServiceProcess(pid_t pid, std::string output_path)
      : pid_(pid), output_path_(std::move(output_path)) {}
  pid_t pid_;
  std::string output_path_;
  std::string grpc_host_ = "127.0.0.1";
  int grpc_port_ = 0;
  int admin_port_ = 0;
  std::optional<int> exit_code_;
};

// Kills every process whose real uid is in [first_uid, first_uid + count) — the
// sandbox uids a test gave its parley-sandbox — and removes the parley-sandbox cgroups
// they were in (each group, then its parent when empty). For sandboxes that outlived
// their sandbox-svc: one whose creation was still in flight when the test ended is
// recorded after the test destroyed the others. Returns how many processes it killed.
int KillSandboxProcesses(int64_t first_uid, int64_t count);

// Checks `condition` every `poll` until it holds (true) or `timeout` passes (false):
// how tests wait for a state instead of sleeping for a guessed time.
bool WaitFor(absl::Duration timeout, const std::function<bool()>& condition,
             absl::Duration poll = absl::Milliseconds(20));

// The value of the sample `series` (name and labels exactly as the Prometheus text
// format prints them, e.g. `parley_turns_total{finish_reason="stop"}`) in `metrics_text`;
// nullopt when it is absent.
std::optional<double> MetricSample(const std::string& metrics_text, const std::string& series);

// Every label value of the samples of a Prometheus text page.
std::vector<std::string> MetricLabelValues(const std::string& metrics_text);

// Whether `text` holds something shaped like an id: a Parley id (`ses_` and a ULID) or a
// run of 16 or more hex digits (trace and span ids).
bool HoldsIdShape(const std::string& text);

// Issues an HTTP/1.1 GET to 127.0.0.1:port; returns status code and body.
absl::StatusOr<std::pair<int, std::string>> HttpGet(int port, const std::string& path);

// The gRPC health status ("SERVING", "NOT_SERVING", ...) or the call error.
absl::StatusOr<std::string> CheckHealth(const std::string& target, const std::string& service = "");

}  // namespace parley::testing
