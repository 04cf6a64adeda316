// sandbox_bench: parley-sandbox on real bubblewrap, against the limit of bare bwrap.
//
//   sandbox_bench --target=127.0.0.1:7072 --state_dir=/tmp/x/st --manager_pid=1234
//                 --sandboxd_path=build/sandbox-svc/parley-sandboxd --work_dir=/tmp/x
//   ... RESULT name=sandbox cold_p50_ms=… bare_bwrap_p50_ms=… cold_ratio=… …
//
// Measures, in one run:
//  - cold create-to-ready (CreateSandbox on a template without a warm pool: bwrap,
//    daemon start, Hello), in rounds alternating with bare `bwrap … /bin/true` built
//    from the provider's own command line (same namespaces and mounts, same uid), the
//    limit; cold_ratio = cold p50 / bare p50;
//  - warm acquire (CreateSandbox on a pooled template, waiting for the pool to refill
//    between acquisitions, so each one is a hand-off);
//  - exec round trip of /bin/true through the manager;
//  - the cgroup mode the service reports for its sandboxes (GetTemplate), printed as
//    cgroup_mode=v2|v1|none: the figures are for sandboxes under those limits;
//  - memory per idle sandbox with `concurrent` sandboxes alive: the proportional set
//    size (PSS, shared pages divided among the processes sharing them) of every process
//    of every sandbox (outer bwrap, namespace init, daemon) plus the manager's RSS
//    growth, divided by the number of sandboxes. The naive RSS sum is printed too.
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/config.h"
#include "parley/sandbox/v1/sandbox.grpc.pb.h"
#include "sandbox-svc/manager/state_store.h"
#include "sandbox-svc/manager/templates.h"
#include "sandbox-svc/provider/bwrap_provider.h"
#include "sandbox-svc/provider/process.h"

namespace {

namespace sandbox_pb = ::parley::sandbox::v1;
constexpr char kTenant[] = "bench";

struct Stats {
  double p50 = 0, p99 = 0, mean = 0;
  size_t count = 0;
};

Stats Summarize(std::vector<double> values) {
  Stats stats;
  if (values.empty()) return stats;
  std::sort(values.begin(), values.end());
  auto at = [&](double q) {
    return values[std::min(values.size() - 1, static_cast<size_t>(q * values.size()))];
  };
  stats.p50 = at(0.50);
  stats.p99 = at(0.99);
  double sum = 0;
  for (double v : values) sum += v;
  stats.mean = sum / values.size();
  stats.count = values.size();
  return stats;
}

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

class Client {
 public:
  explicit Client(const std::string& target)
      : stub_(sandbox_pb::SandboxManager::NewStub(
            grpc::CreateChannel(target, grpc::InsecureChannelCredentials()))) {}

  absl::StatusOr<sandbox_pb::Sandbox> Create(const std::string& template_name) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    sandbox_pb::CreateSandboxRequest request;
    request.set_tenant_id(kTenant);
    request.set_template_(template_name);
    sandbox_pb::CreateSandboxResponse response;
    grpc::Status status = stub_->CreateSandbox(&context, request, &response);
    if (!status.ok()) return absl::UnavailableError(status.error_message());
    return response.sandbox();
  }

  void Destroy(const std::string& id) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    sandbox_pb::DestroySandboxRequest request;
    request.set_tenant_id(kTenant);
    request.set_sandbox_id(id);
    sandbox_pb::DestroySandboxResponse response;
    (void)stub_->DestroySandbox(&context, request, &response);
  }

  absl::Status ExecTrue(const std::string& id) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    sandbox_pb::ExecRequest request;
    request.set_tenant_id(kTenant);
    request.set_sandbox_id(id);
    request.mutable_command()->add_argv("/bin/true");
    auto reader = stub_->Exec(&context, request);
    ::parley::sandboxd::v1::ExecResponse message;
    bool exited_zero = false;
    while (reader->Read(&message)) {
      if (message.has_exit()) exited_zero = message.exit().exit_code() == 0;
    }
    grpc::Status status = reader->Finish();
    if (!status.ok()) return absl::UnavailableError(status.error_message());
    return exited_zero ? absl::OkStatus() : absl::InternalError("/bin/true did not exit 0");
  }

  int PoolReady(const std::string& template_name) {
    absl::StatusOr<sandbox_pb::Template> t = Template(template_name);
    return t.ok() ? static_cast<int>(t->warm_pool_ready()) : -1;
  }

  absl::StatusOr<sandbox_pb::Template> Template(const std::string& name) {
    grpc::ClientContext context;
    sandbox_pb::GetTemplateRequest request;
    request.set_name(name);
    sandbox_pb::GetTemplateResponse response;
    grpc::Status status = stub_->GetTemplate(&context, request, &response);
    if (!status.ok()) return absl::UnavailableError(status.error_message());
    return response.template_();
  }

 private:
  std::unique_ptr<sandbox_pb::SandboxManager::Stub> stub_;
};

// Runs `argv` to completion and returns the wall time, or an error.
absl::StatusOr<absl::Duration> TimeProcess(const parley::sandbox::SpawnRequest& request) {
  absl::Time start = absl::Now();
  absl::StatusOr<pid_t> pid = parley::sandbox::Spawn(request);
  if (!pid.ok()) return pid.status();
  int status = 0;
  ::waitpid(*pid, &status, 0);
  absl::Duration elapsed = absl::Now() - start;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("bare bwrap failed with status ", status));
  }
  return elapsed;
}

// Proportional and resident set size of a process in KiB (smaps_rollup).
std::pair<int64_t, int64_t> PssRssKiB(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/smaps_rollup"));
  std::string line;
  int64_t pss = 0, rss = 0;
  while (std::getline(in, line)) {
    int64_t value = 0;
    std::istringstream fields(line);
    std::string key;
    fields >> key >> value;
    if (key == "Pss:") pss = value;
    if (key == "Rss:") rss = value;
  }
  return {pss, rss};
}

int64_t VmRssKiB(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      int64_t value = 0;
      std::istringstream(line.substr(6)) >> value;
      return value;
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string target, state_dir, sandboxd_path, bwrap_path = "/usr/bin/bwrap", work_dir;
  int64_t manager_pid = 0, iterations = 100, concurrent = 200, exec_iterations = 300;
  parley::Flags flags("sandbox_bench", "parley-sandbox create, acquire, exec and memory costs.");
  flags.HostPort("target", &target, "parley-sandbox to measure");
  flags.String("state_dir", &state_dir, "its --state_dir (to find the sandboxes' processes)");
  flags.String("sandboxd_path", &sandboxd_path, "parley-sandboxd (for the bare bwrap command)");
  flags.String("bwrap_path", &bwrap_path, "bubblewrap");
  flags.String("work_dir", &work_dir, "scratch directory for the bare bwrap runs");
  flags.Int("manager_pid", &manager_pid, "pid of parley-sandbox (for its memory growth)", 1,
            1 << 30);
  flags.Int("iterations", &iterations, "cold creates and bare bwrap runs each", 10, 100000);
  flags.Int("exec_iterations", &exec_iterations, "exec round trips", 10, 1000000);
  flags.Int("concurrent", &concurrent, "sandboxes alive at once for the memory measurement", 1,
            10000);
  parley::ParseFlagsOrExit(flags, argc, argv, parley::ProcessEnvironment());
  if (target.empty() || state_dir.empty() || sandboxd_path.empty() || work_dir.empty()) {
    std::cerr
        << "sandbox_bench: --target, --state_dir, --sandboxd_path and --work_dir are required\n";
    return 2;
  }
  Client client(target);
  // The service's cgroup mode (what limits its sandboxes here), as it reports it.
  absl::StatusOr<sandbox_pb::Template> cold_template = client.Template("cold");
  if (!cold_template.ok()) {
    std::cerr << "sandbox_bench: GetTemplate: " << cold_template.status() << "\n";
    return 1;
  }
  const std::string cgroup_mode = cold_template->cgroup_mode();

  // The limit: the provider's own bwrap command line, running /bin/true instead of the
  // daemon, under an unprivileged uid as the provider does.
  parley::sandbox::BwrapOptions options;
  options.state_dir = work_dir + "/bare";
  options.bwrap_path = bwrap_path;
  options.sandboxd_path = sandboxd_path;
  options.uid_base = ::geteuid() == 0 ? 2'900'000 : 0;
  options.use_cgroups = false;
  ::mkdir(options.state_dir.c_str(), 0711);
  parley::sandbox::BwrapProvider bare(options);
  if (absl::Status s = bare.Init(); !s.ok()) {
    std::cerr << "sandbox_bench: " << s << "\n";
    return 1;
  }
  parley::sandbox::SandboxSpec spec;
  spec.id = "sbx_01BENCHBARE00000000000000";
  spec.limits = parley::sandbox::DefaultTemplates().by_name.at("default").proto.limits();
  auto plan = bare.Plan(spec);
  const std::string workspace = (*plan)["workspace"];
  ::mkdir(workspace.c_str(), 0700);
  parley::sandbox::SpawnRequest bare_request;
  bare_request.path = bwrap_path;
  for (const std::string& arg : bare.BwrapArgv(spec, *plan)) {
    if (arg == "--") break;
    bare_request.argv.push_back(arg);
  }
  // No --info-fd reader here.
  auto info = std::find(bare_request.argv.begin(), bare_request.argv.end(), "--info-fd");
  if (info != bare_request.argv.end()) bare_request.argv.erase(info, info + 2);
  bare_request.argv.insert(bare_request.argv.end(), {"--", "/bin/true"});
  if (!(*plan)["uid"].empty()) {
    uid_t uid = static_cast<uid_t>(std::stoul((*plan)["uid"]));
    ::chown(workspace.c_str(), uid, uid);
    bare_request.uid = uid;
    bare_request.gid = uid;
  }

  // Warm-up both paths.
  for (int i = 0; i < 3; ++i) {
    (void)TimeProcess(bare_request);
    auto sandbox = client.Create("cold");
    if (!sandbox.ok()) {
      std::cerr << "sandbox_bench: create failed: " << sandbox.status() << "\n";
      return 1;
    }
    client.Destroy(sandbox->id());
  }

  // Cold create vs bare bwrap, alternating rounds.
  std::vector<double> cold_ms, bare_ms;
  int64_t errors = 0;
  constexpr int kRounds = 5;
  for (int round = 0; round < kRounds; ++round) {
    for (int64_t i = 0; i < iterations / kRounds; ++i) {
      absl::StatusOr<absl::Duration> elapsed = TimeProcess(bare_request);
      if (elapsed.ok()) {
        bare_ms.push_back(Ms(*elapsed));
      } else {
        ++errors;
        std::cerr << elapsed.status() << "\n";
      }
    }
    for (int64_t i = 0; i < iterations / kRounds; ++i) {
      absl::Time start = absl::Now();
      auto sandbox = client.Create("cold");
      absl::Duration elapsed = absl::Now() - start;
      if (!sandbox.ok()) {
        ++errors;
        std::cerr << sandbox.status() << "\n";
        continue;
      }
      cold_ms.push_back(Ms(elapsed));
      client.Destroy(sandbox->id());
    }
  }

  // Warm acquire: each one a hand-off from a full pool.
  std::vector<double> warm_ms;
  for (int64_t i = 0; i < iterations; ++i) {
    const absl::Time give_up = absl::Now() + absl::Seconds(30);
    // A full pool and an idle filler: what is measured is the hand-off itself.
    while (client.PoolReady("warm") < 2 && absl::Now() < give_up) {
      absl::SleepFor(absl::Milliseconds(2));
    }
    absl::Time start = absl::Now();
    auto sandbox = client.Create("warm");
    absl::Duration elapsed = absl::Now() - start;
    if (!sandbox.ok()) {
      ++errors;
      continue;
    }
    warm_ms.push_back(Ms(elapsed));
    client.Destroy(sandbox->id());
  }

  // Exec round trips on one sandbox.
  std::vector<double> exec_ms;
  {
    auto sandbox = client.Create("cold");
    if (!sandbox.ok()) {
      std::cerr << "sandbox_bench: create failed: " << sandbox.status() << "\n";
      return 1;
    }
    for (int i = 0; i < 10; ++i) (void)client.ExecTrue(sandbox->id());
    for (int64_t i = 0; i < exec_iterations; ++i) {
      absl::Time start = absl::Now();
      absl::Status status = client.ExecTrue(sandbox->id());
      absl::Duration elapsed = absl::Now() - start;
      if (status.ok()) {
        exec_ms.push_back(Ms(elapsed));
      } else {
        ++errors;
      }
    }
    client.Destroy(sandbox->id());
  }

  // Memory with `concurrent` idle sandboxes alive at once.
  const int64_t manager_rss_before = VmRssKiB(static_cast<pid_t>(manager_pid));
  std::vector<std::string> alive;
  for (int64_t i = 0; i < concurrent; ++i) {
    auto sandbox = client.Create("cold");
    if (!sandbox.ok()) {
      std::cerr << "sandbox_bench: sandbox " << i << ": " << sandbox.status() << "\n";
      ++errors;
      break;
    }
    alive.push_back(sandbox->id());
  }
  int64_t answering = 0;
  for (const std::string& id : alive) answering += client.ExecTrue(id).ok();
  absl::SleepFor(absl::Seconds(1));  // Let exec'd children and their memory go.
  auto records = parley::sandbox::StateStore(state_dir + "/sandboxes").ReadAll(nullptr);
  // Only the sandboxes created here: the warm pool's are READY too, and the figure is
  // divided by alive.size().
  const std::set<std::string> alive_ids(alive.begin(), alive.end());
  const std::map<std::string, std::vector<pid_t>> by_namespace =
      parley::sandbox::ProcessesByPidNamespace();  // One pass over /proc for all of them.
  int64_t pss_kib = 0, rss_kib = 0, processes = 0;
  if (records.ok()) {
    for (const auto& record : *records) {
      if (!alive_ids.contains(record.sandbox.id())) continue;
      if (record.sandbox.state() != sandbox_pb::SANDBOX_STATE_READY) continue;
      const auto& state = record.provider_state;
      std::vector<pid_t> pids;
      if (auto it = state.find("bwrap_pid"); it != state.end())
        pids.push_back(std::stoi(it->second));
      if (auto it = state.find("init_pid"); it != state.end()) {
        const std::string ns = parley::sandbox::PidNamespaceOf(std::stoi(it->second));
        if (auto group = by_namespace.find(ns); !ns.empty() && group != by_namespace.end()) {
          pids.insert(pids.end(), group->second.begin(), group->second.end());
        }
      }
      for (pid_t pid : pids) {
        auto [pss, rss] = PssRssKiB(pid);
        pss_kib += pss;
        rss_kib += rss;
        ++processes;
      }
    }
  }
  const int64_t manager_growth_kib =
      std::max<int64_t>(0, VmRssKiB(static_cast<pid_t>(manager_pid)) - manager_rss_before);
  const double count = std::max<size_t>(alive.size(), 1);
  const double per_sandbox_mib = (pss_kib + manager_growth_kib) / 1024.0 / count;
  const double naive_per_sandbox_mib = (rss_kib + manager_growth_kib) / 1024.0 / count;
  for (const std::string& id : alive) client.Destroy(id);

  Stats cold = Summarize(cold_ms), bare_stats = Summarize(bare_ms), warm = Summarize(warm_ms),
        exec = Summarize(exec_ms);
  const double ratio = bare_stats.p50 > 0 ? cold.p50 / bare_stats.p50 : 0;
  std::cout << absl::StrFormat(
      "cold create-to-ready: %d runs, p50 %.2f ms, p99 %.2f ms, mean %.2f ms\n"
      "bare bwrap /bin/true: %d runs, p50 %.2f ms, p99 %.2f ms (the limit); ratio %.2f\n"
      "warm acquire:         %d runs, p50 %.3f ms, p99 %.3f ms\n"
      "exec /bin/true:       %d runs, p50 %.3f ms, p99 %.3f ms\n"
      "memory: %d sandboxes alive (%d answering), %d processes; PSS %.1f MiB, RSS %.1f MiB, "
      "manager +%.1f MiB => %.2f MiB per sandbox (naive RSS: %.2f MiB)\n"
      "cgroup mode: %s\n"
      "errors: %d\n",
      cold.count, cold.p50, cold.p99, cold.mean, bare_stats.count, bare_stats.p50, bare_stats.p99,
      ratio, warm.count, warm.p50, warm.p99, exec.count, exec.p50, exec.p99, alive.size(),
      answering, processes, pss_kib / 1024.0, rss_kib / 1024.0, manager_growth_kib / 1024.0,
      per_sandbox_mib, naive_per_sandbox_mib, cgroup_mode, errors);
  std::cout << absl::StrFormat(
      "RESULT name=sandbox cgroup_mode=%s cold_p50_ms=%.2f cold_p99_ms=%.2f bare_bwrap_p50_ms=%.2f "
      "cold_ratio=%.2f warm_p50_ms=%.3f warm_p99_ms=%.3f exec_p50_ms=%.3f exec_p99_ms=%.3f "
      "rss_per_sandbox_mib=%.2f rss_naive_per_sandbox_mib=%.2f concurrent=%d errors=%d\n",
      cgroup_mode, cold.p50, cold.p99, bare_stats.p50, ratio, warm.p50, warm.p99, exec.p50,
      exec.p99, per_sandbox_mib, naive_per_sandbox_mib, answering, errors);
  (void)parley::sandbox::RemoveTree(options.state_dir);
  return errors == 0 ? 0 : 1;
}
