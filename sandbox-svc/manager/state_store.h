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
//   std::vector<SandboxRecord> all = *store.LoadAll();
//
// Thread-safe for different ids; the manager serializes writes of one id.
#pragma once

#include <string>
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
  // Every readable record; unreadable files are renamed to `<name>.corrupt` and listed
  // in `problems`.
  absl::StatusOr<std::vector<SandboxRecord>> LoadAll(std::vector<std::string>* problems);

  static std::string Serialize(const SandboxRecord& record);
  static absl::StatusOr<SandboxRecord> Parse(const std::string& text);

 private:
  std::string dir_;
};

}  // namespace parley::sandbox
