#include "tests/harness/services.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <pqxx/pqxx>
#include <regex>
#include <set>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/ids.h"
#include "common/redis_cluster.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace parley::testing {
namespace {

std::string RandomSuffix() {
  thread_local absl::BitGen bitgen;
  return absl::StrCat(absl::Hex(absl::Uniform<uint64_t>(bitgen), absl::kZeroPad16));
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// Replaces the database name at the end of a postgresql:// URL.
std::string WithDatabase(const std::string& url, const std::string& database) {
  size_t slash = url.rfind('/');
  return url.substr(0, slash + 1) + database;
}

absl::StatusOr<pid_t> Spawn(const ProcessOptions& options, const std::string& output_path) {
  std::vector<std::string> argv_storage = {options.binary};
  argv_storage.insert(argv_storage.end(), options.args.begin(), options.args.end());
  std::vector<std::string> env_storage = {absl::StrCat("PATH=", std::getenv("PATH"))};
  for (const auto& [key, value] : options.env) env_storage.push_back(key + "=" + value);
  std::vector<char*> argv, envp;
  for (std::string& arg : argv_storage) argv.push_back(arg.data());
  for (std::string& var : env_storage) envp.push_back(var.data());
  argv.push_back(nullptr);
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, output_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  // Nothing else is inherited: scripts/test may run under flock, and a daemon a test
  // starts (redis-server, postgres) would otherwise hold that lock for as long as it
  // lives, past a crashed test.
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
  // The child must not inherit the test's blocked signals (gtest threads may block
  // some), or SIGTERM would never reach it.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty;
  sigemptyset(&empty);
  posix_spawnattr_setsigmask(&attr, &empty);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, options.binary.c_str(), &actions, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    return absl::InternalError(absl::StrCat("spawn ", options.binary, ": ", std::strerror(rc)));
  }
  return pid;
}

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

absl::StatusOr<std::string> TestEnv(const std::string& name) {
  const char* value = std::getenv(name.c_str());
  if (value == nullptr || *value == '\0') {
    return absl::FailedPreconditionError(
        absl::StrCat(name,
                     " is not set: run the tests through scripts/test, which starts "
                     "Postgres and Redis for them"));
  }
  return std::string(value);
}

std::string BinaryPath(const std::string& relative) {
  return absl::StrCat(PARLEY_BUILD_DIR, "/", relative);
}

std::string SourcePath(const std::string& relative) {
  return absl::StrCat(PARLEY_SOURCE_DIR, "/", relative);
}

std::string TestTempDir() {
  const char* base = std::getenv("PARLEY_TEST_TMPDIR");
  std::string dir = absl::StrCat(base != nullptr ? base : "/tmp", "/t-", RandomSuffix());
  ::mkdir(dir.c_str(), 0755);
  return dir;
}

absl::StatusOr<std::unique_ptr<TestDatabase>> TestDatabase::Create() {
  absl::StatusOr<std::string> admin_url = TestEnv("PARLEY_TEST_PG_URL");
  if (!admin_url.ok()) return admin_url.status();
  std::string name = absl::StrCat("parley_t_", RandomSuffix());
  try {
    pqxx::connection admin(*admin_url);
    pqxx::nontransaction tx(admin);
    tx.exec(absl::StrCat("CREATE DATABASE ", name));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("create test database: ", e.what()));
  }
  return std::unique_ptr<TestDatabase>(
      new TestDatabase(*admin_url, name, WithDatabase(*admin_url, name)));
}

TestDatabase::~TestDatabase() {
  try {
    pqxx::connection admin(admin_url_);
    pqxx::nontransaction tx(admin);
    tx.exec(absl::StrCat("DROP DATABASE IF EXISTS ", name_, " WITH (FORCE)"));
  } catch (const std::exception&) {
    // The server is gone with the run anyway; nothing useful to do.
  }
}

absl::StatusOr<std::unique_ptr<TestRedis>> TestRedis::Create() {
  absl::StatusOr<std::string> url = TestEnv("PARLEY_TEST_REDIS_URL");
  if (!url.ok()) return url.status();
  absl::StatusOr<RedisEndpoint> endpoint = ParseRedisUrl(*url);
  if (!endpoint.ok()) return endpoint.status();
  absl::StatusOr<std::unique_ptr<RedisConnection>> connection =
      RedisConnection::Connect(*endpoint, absl::Seconds(5));
  if (!connection.ok()) return connection.status();
  return std::unique_ptr<TestRedis>(new TestRedis(*url, *endpoint, *std::move(connection),
                                                  absl::StrCat("t", RandomSuffix(), ":")));
}

TestRedis::~TestRedis() {
  absl::StatusOr<std::unique_ptr<RedisConnection>> connection =
      RedisConnection::Connect(endpoint_, absl::Seconds(5));
  if (!connection.ok()) return;
  std::string cursor = "0";
  do {
    absl::StatusOr<RedisReply> reply =
        (*connection)->Command({"SCAN", cursor, "MATCH", keys_.prefix() + "*", "COUNT", "1000"});
    if (!reply.ok() || (*reply)->elements != 2) return;
    cursor = std::string((*reply)->element[0]->str, (*reply)->element[0]->len);
    const redisReply* batch = (*reply)->element[1];
    for (size_t i = 0; i < batch->elements; ++i) {
      (void)(*connection)
          ->Command({"DEL", std::string(batch->element[i]->str, batch->element[i]->len)});
    }
  } while (cursor != "0");
}

namespace {

// Runs a function of scripts/lib.sh through bash; the output is returned on failure.
absl::Status RunLibFunction(const std::string& call) {
  auto result = RunCommand({.binary = "/bin/bash",
                            .args = {"-c", absl::StrCat("set -e; source ", PARLEY_SOURCE_DIR,
                                                        "/scripts/lib.sh; ", call)}},
                           absl::Seconds(120));
  if (!result.ok()) return result.status();
  if (result->exit_code != 0) {
    return absl::InternalError(
        absl::StrCat(call, " failed (", result->exit_code, "):\n", result->output));
  }
  return absl::OkStatus();
}

}  // namespace

// A loopback port nothing holds now, for a server started with an explicit port. It is
// chosen below the kernel's ephemeral range (as scripts/lib.sh's free_port does): a
// port from that range, even one the kernel just handed out and took back, can become
// the local port of an outgoing connection before the server binds it.
int FreePort() {
  int low = 32768;
  std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range");
  if (!(range >> low) || low <= 11000) low = 32768;
  absl::BitGen bitgen;
  for (int attempt = 0; attempt < 200; ++attempt) {
    const int port = absl::Uniform(bitgen, 10000, low);
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(static_cast<uint16_t>(port));
    const bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
    ::close(fd);
    if (free) return port;
  }
  return 0;  // The server's start then fails and says so.
}

absl::StatusOr<std::unique_ptr<PrivateRedis>> PrivateRedis::Start() {
  std::string dir = TestTempDir();
  ::chmod(dir.c_str(), 0755);
  int port = FreePort();
  std::unique_ptr<PrivateRedis> server(new PrivateRedis(dir + "/redis", port));
  absl::Status started =
      RunLibFunction(absl::StrCat("start_redis ", server->dir_, " ", port, " durable"));
  if (!started.ok()) return started;
  return server;
}

PrivateRedis::~PrivateRedis() {
  (void)RunLibFunction(absl::StrCat("stop_redis ", dir_, " ", port_));
}

absl::Status PrivateRedis::Restart() {
  // SHUTDOWN with an append-only file flushes it first: the data survives.
  return RunLibFunction(absl::StrCat(
      "pid=$(cat ", dir_, "/redis.pid); redis-cli -p ", port_,
      " shutdown >/dev/null 2>&1 || true; ",
      "for i in $(seq 1 100); do kill -0 $pid 2>/dev/null || break; sleep 0.05; done; ",
      "start_redis ", dir_, " ", port_, " durable"));
}

absl::Status PrivateRedis::Kill() {
  return RunLibFunction(absl::StrCat(
      "pid=$(cat ", dir_, "/redis.pid); kill -9 $pid; ",
      "for i in $(seq 1 200); do kill -0 $pid 2>/dev/null || exit 0; sleep 0.05; done; exit 1"));
}

absl::Status PrivateRedis::StartAgain() {
  return RunLibFunction(absl::StrCat("start_redis ", dir_, " ", port_, " durable"));
}

absl::StatusOr<std::unique_ptr<PrivateRedisCluster>> PrivateRedisCluster::Start() {
  std::string dir = TestTempDir();
  ::chmod(dir.c_str(), 0755);
  constexpr int kNodes = 6;  // Three primaries with a replica each.
  std::vector<int> ports;
  std::string specs;
  absl::flat_hash_set<int> taken;
  while (static_cast<int>(ports.size()) < kNodes) {
    // The cluster bus gets a port of its own (not the default port + 10000, which may
    // not exist above 55535).
    const int port = FreePort();
    const int bus = FreePort();
    if (port == bus || !taken.insert(port).second || !taken.insert(bus).second) continue;
    ports.push_back(port);
    absl::StrAppend(&specs, " ", port, ":", bus);
  }
  std::unique_ptr<PrivateRedisCluster> cluster(
      new PrivateRedisCluster(dir + "/redis-cluster", ports));
  absl::Status started = RunLibFunction(absl::StrCat("start_redis_cluster ", cluster->dir_, specs));
  if (!started.ok()) return started;
  return cluster;
}

PrivateRedisCluster::~PrivateRedisCluster() {
  ContinueFrozen();  // A stopped process would not stop cleanly.
  (void)RunLibFunction(absl::StrCat("stop_redis_cluster ", dir_, " ", absl::StrJoin(ports_, " ")));
}

std::string PrivateRedisCluster::url() const {
  std::vector<std::string> nodes;
  for (int port : ports_) nodes.push_back(absl::StrCat("127.0.0.1:", port));
  return absl::StrCat("redis+cluster://", absl::StrJoin(nodes, ","));
}

RedisEndpoint PrivateRedisCluster::endpoint() const { return *ParseRedisUrl(url()); }

absl::StatusOr<int> PrivateRedisCluster::KillPrimaryOf(uint16_t slot, absl::Duration timeout) {
  const RedisEndpoint cluster = endpoint();
  absl::StatusOr<RedisSlotMap> before =
      FetchRedisSlotMap(cluster, cluster.cluster_seeds, absl::Seconds(2));
  if (!before.ok()) return before.status();
  const RedisNodeAddress* primary = before->PrimaryOf(slot);
  if (primary == nullptr) return absl::FailedPreconditionError("no primary serves the slot");
  const RedisNodeAddress killed = *primary;
  absl::Status status = RunLibFunction(absl::StrCat(
      "pid=$(cat ", dir_, "/", killed.port, "/redis.pid); kill -9 $pid; ",
      "for i in $(seq 1 200); do kill -0 $pid 2>/dev/null || exit 0; sleep 0.05; done; exit 1"));
  ContinueFrozen();
  if (!status.ok()) return status;
  std::vector<RedisNodeAddress> alive;
  for (const RedisNodeAddress& node : cluster.cluster_seeds) {
    if (!(node == killed)) alive.push_back(node);
  }
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    absl::StatusOr<RedisSlotMap> after = FetchRedisSlotMap(cluster, alive, absl::Seconds(1));
    if (after.ok() && after->PrimaryOf(slot) != nullptr && !(*after->PrimaryOf(slot) == killed)) {
      std::vector<std::string> ports;
      for (const RedisNodeAddress& node : alive) ports.push_back(absl::StrCat(node.port));
      if (absl::Status ok = RunLibFunction("wait_redis_cluster " + absl::StrJoin(ports, " "));
          !ok.ok()) {
        return ok;
      }
      return killed.port;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("no replica took over slot ", slot, " from ", killed.ToString()));
}

absl::Status PrivateRedisCluster::FreezeReplicaOf(uint16_t slot) {
  const RedisEndpoint cluster = endpoint();
  absl::StatusOr<RedisSlotMap> map =
      FetchRedisSlotMap(cluster, cluster.cluster_seeds, absl::Seconds(2));
  if (!map.ok()) return map.status();
  const RedisNodeAddress* primary = map->PrimaryOf(slot);
  if (primary == nullptr) return absl::FailedPreconditionError("no primary serves the slot");
  // The primary's INFO replication names its replica: "slave0:ip=...,port=<port>,...".
  for (int port : ports_) {
    absl::Status is_replica =
        RunLibFunction(absl::StrCat("redis-cli -p ", primary->port,
                                    " info replication | grep -q '^slave0:.*,port=", port, ",'"));
    if (!is_replica.ok()) continue;
    absl::Status stopped =
        RunLibFunction(absl::StrCat("kill -STOP $(cat ", dir_, "/", port, "/redis.pid)"));
    if (stopped.ok()) frozen_.push_back(port);
    return stopped;
  }
  return absl::FailedPreconditionError(
      absl::StrCat("the primary ", primary->ToString(), " has no replica"));
}

void PrivateRedisCluster::ContinueFrozen() {
  for (int port : frozen_) {
    (void)RunLibFunction(absl::StrCat("kill -CONT $(cat ", dir_, "/", port, "/redis.pid)"));
  }
  frozen_.clear();
}

absl::StatusOr<std::unique_ptr<PrivatePostgres>> PrivatePostgres::Start() {
  std::string dir = TestTempDir();
  ::chmod(dir.c_str(), 0755);
  int port = FreePort();
  std::unique_ptr<PrivatePostgres> server(new PrivatePostgres(dir + "/pg", port));
  absl::Status started =
      RunLibFunction(absl::StrCat("start_postgres ", server->dir_, " ", port, " durable"));
  if (!started.ok()) return started;
  return server;
}

PrivatePostgres::~PrivatePostgres() { (void)RunLibFunction(absl::StrCat("stop_postgres ", dir_)); }

std::string PrivatePostgres::url() const {
  return absl::StrCat("postgresql://postgres@127.0.0.1:", port_, "/postgres");
}

absl::Status PrivatePostgres::RestartImmediately() {
  if (absl::Status crashed = Crash(); !crashed.ok()) return crashed;
  return StartAgain();
}

absl::Status PrivatePostgres::Crash() {
  return RunLibFunction(absl::StrCat("run_as postgres \"$PG_BIN/pg_ctl\" -D ", dir_,
                                     "/data -m immediate -w stop >/dev/null"));
}

absl::Status PrivatePostgres::StartAgain() {
  return RunLibFunction(absl::StrCat("start_postgres ", dir_, " ", port_, " durable"));
}

namespace {

// Answers every health check with SERVING.
class AlwaysServing final : public grpc::health::v1::Health::CallbackService {
  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest*,
                                  grpc::health::v1::HealthCheckResponse* response) override {
    response->set_status(grpc::health::v1::HealthCheckResponse::SERVING);
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<ServingHealthServer>> ServingHealthServer::Start(
    grpc::Service* also) {
  auto service = std::make_unique<AlwaysServing>();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(service.get());
  if (also != nullptr) builder.RegisterService(also);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) return absl::UnavailableError("cannot start a health server");
  return std::unique_ptr<ServingHealthServer>(
      new ServingHealthServer(std::move(service), std::move(server), port));
}

ServingHealthServer::~ServingHealthServer() { server_->Shutdown(std::chrono::system_clock::now()); }

int KillSandboxProcesses(int64_t first_uid, int64_t count) {
  std::vector<pid_t> killed;
  std::set<std::string> groups;  // Under /sys/fs/cgroup.
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return 0;
  while (struct dirent* entry = ::readdir(proc)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(entry->d_name, &pid)) continue;
    const std::string dir = absl::StrCat("/proc/", pid);
    int64_t uid = -1;
    for (absl::string_view line : absl::StrSplit(ReadFile(dir + "/status"), '\n')) {
      // "Uid:	<real>	<effective>	<saved>	<fs>"
      if (!absl::ConsumePrefix(&line, "Uid:")) continue;
      std::vector<absl::string_view> ids = absl::StrSplit(line, '\t', absl::SkipEmpty());
      if (ids.empty() || !absl::SimpleAtoi(ids[0], &uid)) uid = -1;
      break;
    }
    if (uid < first_uid || uid >= first_uid + count) continue;
    // "<id>:<controllers>:<path>", one line per hierarchy.
    for (absl::string_view line : absl::StrSplit(ReadFile(dir + "/cgroup"), '\n')) {
      std::vector<std::string> fields = absl::StrSplit(line, absl::MaxSplits(':', 2));
      if (fields.size() == 3 && absl::StrContains(fields[2], "/parley-sandbox.")) {
        groups.insert(absl::StrCat(fields[1].empty() ? "unified" : fields[1], fields[2]));
      }
    }
    if (::kill(pid, SIGKILL) == 0) killed.push_back(pid);
  }
  ::closedir(proc);
  // Wait until they are gone (a zombie has left its groups) before removing those.
  WaitFor(absl::Seconds(5), [&] {
    for (pid_t pid : killed) {
      const std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
      const size_t end_of_name = stat.rfind(')');
      if (end_of_name != std::string::npos && end_of_name + 2 < stat.size() &&
          stat[end_of_name + 2] != 'Z') {
        return false;
      }
    }
    return true;
  });
  for (const std::string& group : groups) {
    const std::string path = "/sys/fs/cgroup/" + group;
    ::rmdir(path.c_str());
    ::rmdir(path.substr(0, path.rfind('/')).c_str());  // The parent, once empty.
  }
  return static_cast<int>(killed.size());
}

bool WaitFor(absl::Duration timeout, const std::function<bool()>& condition, absl::Duration poll) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (absl::Now() > deadline) return false;
    absl::SleepFor(poll);
  }
}

std::optional<double> MetricSample(const std::string& metrics_text, const std::string& series) {
  const std::string line_start = "\n" + series + " ";  // Not the # HELP line's mention.
  const std::string text = "\n" + metrics_text;
  const size_t at = text.find(line_start);
  if (at == std::string::npos) return std::nullopt;
  const size_t value = at + line_start.size();
  return std::stod(text.substr(value, text.find('\n', value) - value));
}

std::vector<std::string> MetricLabelValues(const std::string& metrics_text) {
  static const std::regex kLabel(R"re([a-zA-Z_][a-zA-Z0-9_]*="((?:[^"\\]|\\.)*)")re");
  std::vector<std::string> values;
  for (absl::string_view line : absl::StrSplit(metrics_text, '\n')) {
    if (line.empty() || line.front() == '#') continue;
    const size_t open = line.find('{');
    const size_t close = line.rfind('}');
    if (open == absl::string_view::npos || close == absl::string_view::npos) continue;
    const std::string labels(line.substr(open + 1, close - open - 1));
    for (auto it = std::sregex_iterator(labels.begin(), labels.end(), kLabel);
         it != std::sregex_iterator(); ++it) {
      values.push_back((*it)[1]);
    }
  }
  return values;
}

bool HoldsIdShape(const std::string& text) {
  static const std::regex kIdShape("[a-z0-9]+_[0-9A-HJKMNP-TV-Z]{26}|[0-9a-f]{16,}");
  return std::regex_search(text, kIdShape);
}

absl::StatusOr<CommandResult> RunCommand(const ProcessOptions& options, absl::Duration timeout) {
  absl::StatusOr<std::unique_ptr<ServiceProcess>> process = ServiceProcess::Start(options);
  if (!process.ok()) return process.status();
  absl::StatusOr<int> code = (*process)->WaitForExit(timeout);
  if (!code.ok()) return code.status();
  return CommandResult{*code, (*process)->Output()};
}

absl::StatusOr<std::unique_ptr<ServiceProcess>> ServiceProcess::Start(
    const ProcessOptions& options) {
  std::string output_path = absl::StrCat(TestTempDir(), "/output.log");
  absl::StatusOr<pid_t> pid = Spawn(options, output_path);
  if (!pid.ok()) return pid.status();
  return std::unique_ptr<ServiceProcess>(new ServiceProcess(*pid, output_path));
}

ServiceProcess::~ServiceProcess() {
  if (!exit_code_) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
}

std::string ServiceProcess::Output() const { return ReadFile(output_path_); }

void ServiceProcess::Signal(int signal_number) {
  if (!exit_code_) ::kill(pid_, signal_number);
}

bool ServiceProcess::running() {
  if (exit_code_) return false;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == pid_) {
    exit_code_ = DecodeWaitStatus(status);
    return false;
  }
  return true;
}

absl::StatusOr<int> ServiceProcess::WaitForExit(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (running()) {
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("process still running after ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  return *exit_code_;
}

absl::Status ServiceProcess::WaitUntilServing(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  static const std::regex kServing(
      R"("msg":"serving",(?:"grpc_addr":"([^"]*):[0-9]+",)?.*"grpc_port":([0-9]+),"admin_port":([0-9]+))");
  while (grpc_port_ == 0) {
    std::smatch match;
    std::string output = Output();
    if (std::regex_search(output, match, kServing)) {
      // A process bound to one loopback address (sandbox-svc replicas on 127.0.0.N) is
      // reached there; a wildcard or 127.0.0.1 bind at 127.0.0.1.
      const std::string host = match[1];
      if (absl::StartsWith(host, "127.")) grpc_host_ = host;
      grpc_port_ = std::stoi(match[2]);
      admin_port_ = std::stoi(match[3]);
      break;
    }
    if (!running()) {
      return absl::FailedPreconditionError(
          absl::StrCat("process exited with ", *exit_code_, " before serving:\n", output));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("no \"serving\" line:\n", output));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  while (true) {
    absl::StatusOr<std::string> health = CheckHealth(grpc_target());
    if (health.ok() && *health == "SERVING") return absl::OkStatus();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError("health check never answered SERVING");
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

absl::StatusOr<std::pair<int, std::string>> HttpGet(int port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ::close(fd);
    return absl::UnavailableError(
        absl::StrCat("connect 127.0.0.1:", port, ": ", std::strerror(errno)));
  }
  // HTTP/1.0: the server closes after the response and never chunks it, so the body
  // is simply everything up to EOF (keep-alive servers such as Prometheus would
  // otherwise hold the connection open, and chunk large answers).
  std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  (void)!::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string response;
  char buffer[8192];
  ssize_t n;
  while ((n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0) response.append(buffer, n);
  ::close(fd);
  size_t space = response.find(' ');
  size_t body = response.find("\r\n\r\n");
  if (space == std::string::npos || body == std::string::npos) {
    return absl::DataLossError("malformed HTTP response");
  }
  return std::make_pair(std::stoi(response.substr(space + 1, 3)), response.substr(body + 4));
}

absl::StatusOr<std::string> CheckHealth(const std::string& target, const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
}

}  // namespace parley::testing
