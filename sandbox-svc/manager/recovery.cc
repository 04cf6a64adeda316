// Start-up recovery; see recovery.h. Each record becomes a Sandbox in the table first, so
// even one that fails here stays readable until the reaper forgets it.
#include "sandbox-svc/manager/recovery.h"

#include <memory>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"

namespace parley::sandbox {

namespace sandbox_pb = ::parley::sandbox::v1;

namespace {

enum class Outcome { kAdopted, kReaped, kOther };

// Decides the fate of one recovered sandbox; the caller holds its turn.
Outcome RecoverOne(Lifecycle& lifecycle, SandboxTable& table, Sandbox& sandbox) {
  const SandboxRecord record = sandbox.Record();
  const sandbox_pb::SandboxState state = record.sandbox.state();
  SandboxProvider* provider = lifecycle.ProviderFor(record);
  if (provider == nullptr) {
    if (IsLive(state)) {
      (void)sandbox.FailedAsIs(absl::StrCat("provider \"", record.sandbox.provider(),
                                            "\" is not configured on this replica"),
                               lifecycle.clock().Now());
    }
    (void)lifecycle.Persist(sandbox);
    return Outcome::kOther;
  }
  provider->Adopt(record.provider_state);
  if (state == sandbox_pb::SANDBOX_STATE_CREATING) {
    // A crash mid-creation: whatever it started is an orphan.
    lifecycle.Fail(sandbox, "parley-sandbox restarted while the sandbox was being created");
    return Outcome::kReaped;
  }
  const bool alive = provider->Alive(record.provider_state);
  if (state == sandbox_pb::SANDBOX_STATE_READY && !alive) {
    lifecycle.Fail(sandbox, "the sandbox's processes were gone after a restart of parley-sandbox");
    return Outcome::kReaped;
  }
  if (state == sandbox_pb::SANDBOX_STATE_FAILED && !record.provider_state.empty()) {
    lifecycle.Fail(sandbox, record.sandbox.state_message());
    return Outcome::kOther;
  }
  if (state != sandbox_pb::SANDBOX_STATE_READY && state != sandbox_pb::SANDBOX_STATE_PAUSED) {
    return Outcome::kOther;
  }
  const bool warm = record.pooled;
  table.Adopt(sandbox.id(), {warm ? "" : record.sandbox.tenant_id(),
                             warm ? "" : record.sandbox.session_id(), record.sandbox.template_()});
  if (warm && state == sandbox_pb::SANDBOX_STATE_READY) table.AddToPool(sandbox.id());
  return Outcome::kAdopted;
}

}  // namespace

absl::Status Recover(Lifecycle& lifecycle, SandboxTable& table, StateStore& store,
                     const std::map<std::string, SandboxProvider*>& providers,
                     const telemetry::Logger* logger) {
  std::vector<std::string> problems;
  absl::StatusOr<std::vector<SandboxRecord>> records = store.LoadAll(&problems);
  if (!records.ok()) return records.status();
  for (const std::string& problem : problems) {
    if (logger != nullptr) logger->Warn("unreadable sandbox record set aside", {{"file", problem}});
  }
  std::set<std::string> known;
  int adopted = 0, reaped = 0;
  for (SandboxRecord& record : *records) {
    auto sandbox = std::make_shared<Sandbox>(std::move(record));
    known.insert(sandbox->id());
    table.Add(sandbox);
    Sandbox::Turn turn = sandbox->WaitForTurn();
    switch (RecoverOne(lifecycle, table, *sandbox)) {
      case Outcome::kAdopted:
        ++adopted;
        break;
      case Outcome::kReaped:
        ++reaped;
        break;
      case Outcome::kOther:
        break;
    }
  }
  for (const auto& [name, provider] : providers) provider->CollectGarbage(known);
  if (logger != nullptr) {
    logger->Info("sandbox records recovered", {{"records", static_cast<int64_t>(known.size())},
                                               {"adopted", adopted},
                                               {"orphans_reaped", reaped}});
  }
  return absl::OkStatus();
}

}  // namespace parley::sandbox
