// BwrapProvider: the "local" provider. One bubblewrap sandbox per sandbox id, with
// parley-sandboxd inside answering on a Unix socket the provider created (see
// sandbox-svc/README.md, "Local provider").
//
//   BwrapProvider provider(options);           // prepares state_dir, detects cgroups
//   if (absl::Status s = provider.Init(); !s.ok()) ...
//   ProviderState state = *provider.Plan(spec);
//   DaemonEndpoint endpoint = *provider.Start(spec, state, record);  // "unix:/…/run/<id>.sock"
//
// State dir layout (created by Init):
//   workspaces/<id>/   the sandbox's /workspace, owned by its host uid, mode 0700
//   run/<id>.sock      the daemon's listening socket (dir mode 0700)
//   logs/<id>.log      bwrap's and the daemon's stderr
//   etc/passwd, etc/group   the sandbox user's identity (uid 1000, HOME=/workspace)
//   bin/parley-sandboxd     a private copy of the daemon binary
// Thread-safe: the uid table is guarded by a mutex; everything else is per sandbox.
#pragma once

#include <sys/types.h>

#include <memory>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "sandbox-svc/provider/cgroup.h"
#include "sandbox-svc/provider/provider.h"

namespace parley::sandbox {

struct BwrapOptions {
  std::string state_dir;  // Absolute; Unix socket paths must fit in it.
  std::string bwrap_path = "/usr/bin/bwrap";
  std::string sandboxd_path;  // The daemon binary to copy into state_dir/bin.
  // Host uids for sandboxes when running as root: [uid_base, uid_base + uid_count).
  // 0 runs sandboxes as this process's own uid (the only choice when not root).
  uid_t uid_base = 0;
  uint32_t uid_count = 100000;
  bool use_cgroups = true;
  // "auto" (cgroup freezer when the sandbox has a group, else signals), "signal".
  std::string pause_mechanism = "auto";
  absl::Duration start_timeout = absl::Seconds(10);
};

class BwrapProvider final : public SandboxProvider {
 public:
  explicit BwrapProvider(BwrapOptions options);

  // Creates the state layout, copies the daemon, writes etc/passwd, detects cgroups.
  // FAILED_PRECONDITION with what is missing (bwrap, the daemon, a too-long state dir).
  absl::Status Init();

  std::string name() const override { return "local"; }
  absl::StatusOr<ProviderState> Plan(const SandboxSpec& spec) override;
  absl::StatusOr<DaemonEndpoint> Start(const SandboxSpec& spec, ProviderState& state,
                                       const RecordFn& record) override;
  absl::StatusOr<DaemonEndpoint> Endpoint(const ProviderState& state) override;
  void Adopt(const ProviderState& state) override;
  bool Alive(const ProviderState& state) override;
  absl::Status Pause(const SandboxSpec& spec, ProviderState& state) override;
  absl::StatusOr<DaemonEndpoint> Resume(const SandboxSpec& spec, ProviderState& state,
                                        const RecordFn& record, bool* restarted) override;
  absl::Status Destroy(const ProviderState& state) override;
  void CollectGarbage(const std::set<std::string>& known_ids) override;
  std::string Capabilities() const override;
  std::string CgroupMode() const override;
  std::string Diagnostics(const ProviderState& state) override;

  // Removes this provider's parent cgroup when no sandbox group is left in it (at a
  // clean shutdown with nothing running, and at the end of tests).
  void ReleaseCgroupParent();

  // The bwrap command line for a sandbox (exposed for tests and the benchmark's
  // "bare bwrap" comparison).
  std::vector<std::string> BwrapArgv(const SandboxSpec& spec, const ProviderState& state) const;
  const std::string& state_dir() const { return options_.state_dir; }

 private:
  std::string WorkspacePath(const std::string& id) const;
  std::string SocketPath(const std::string& id) const;
  std::string LogPath(const std::string& id) const;
  absl::Status InstallDaemon();
  absl::StatusOr<uid_t> AllocateUid() ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseUid(const ProviderState& state) ABSL_LOCKS_EXCLUDED(mu_);

  BwrapOptions options_;
  std::string daemon_copy_;
  std::unique_ptr<SandboxCgroups> cgroups_;  // Null: no cgroups here (rlimits, SIGSTOP).
  std::string cgroup_report_;
  bool as_root_ = false;

  absl::Mutex mu_;
  std::set<uid_t> uids_in_use_ ABSL_GUARDED_BY(mu_);
};

}  // namespace parley::sandbox
