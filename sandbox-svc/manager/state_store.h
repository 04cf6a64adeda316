// StateStore: one JSON record per sandbox in `<state_dir>/sandboxes/<id>.json`.
//
// A record is written before the provider does anything for the sandbox and again on
// every state change, by writing `<id>.json.tmp` and renaming it over the record, so a
// reader (the next process after a crash) sees either the old or the new record, never
// a torn one. No fsync: a sandbox does not survive a machine crash, and a process crash
// loses nothing the page cache holds.
//
//   StateStore store(state_dir + "/sandboxes");
//   store.Write(record);
//   std::vector<SandboxRecord> all = *store.LoadAll(&problems);
//
// Thread-safe for different ids; the manager serializes writes of one id. Read and
// ReadAll never change the directory, so anyone (a test, a benchmark) may call them
// while a manager owns it; LoadAll cleans up and is for the owning manager at start.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "parley/sandbox/v1/sandbox.pb.h"
#include "sandbox-svc/provider/provider.h"

namespace parley::sandbox {

struct SandboxRecord {
  ::parley::sandbox::v1::Sandbox sandbox;
  bool pooled = false;           // Waiting in a warm pool (no tenant yet).
  ProviderState provider_state;  // Empty once the provider cleaned everything up.
};

class StateStore {
 public:
  explicit StateStore(std::string dir) : dir_(std::move(dir)) {}

  // Creates the directory (mode 0700).
  absl::Status Init();
  absl::Status Write(const SandboxRecord& record);
  absl::Status Remove(const std::string& id);
  // The record of `id` (a validated sandbox id): NOT_FOUND when there is none,
  // DATA_LOSS when it is unreadable. Read-only.
  absl::StatusOr<SandboxRecord> Read(const std::string& id) const;
  // Every readable record; unreadable ones are listed in `problems` (may be null) and
  // left where they are. Read-only.
  absl::StatusOr<std::vector<SandboxRecord>> ReadAll(std::vector<std::string>* problems) const;
  // ReadAll, then cleanup for the directory's owner: leftover `<id>.json.tmp` files (writes
  // that never got renamed) are deleted and unreadable records renamed to `<name>.corrupt`.
  absl::StatusOr<std::vector<SandboxRecord>> LoadAll(std::vector<std::string>* problems);

  static std::string Serialize(const SandboxRecord& record);
  static absl::StatusOr<SandboxRecord> Parse(const std::string& text);

 private:
  // What one pass over the directory found; nothing is changed.
  struct Scan {
    std::vector<SandboxRecord> records;
    std::vector<std::string> temp_names;                          // `<id>.json.tmp`.
    std::vector<std::pair<std::string, std::string>> unreadable;  // (name, problem).
  };
  absl::StatusOr<Scan> ScanDir() const;
  // The record stored at `path`; NOT_FOUND when the file is gone.
  static absl::StatusOr<SandboxRecord> ReadFile(const std::string& path);

  std::string dir_;
};

}  // namespace parley::sandbox
