// ManagerOptions: the knobs of the sandbox manager, filled from flags in main.cc.
#pragma once

#include <cstdint>
#include <optional>

#include "absl/time/time.h"

namespace parley::sandbox {

struct ManagerOptions {
  int max_sandboxes = 500;            // Node quota: live sandboxes incl. warm ones.
  int max_sandboxes_per_tenant = 50;  // Tenant quota: CREATING + READY + PAUSED.
  // Reaper period; zero starts no reaper thread (tests call ReapOnce()).
  absl::Duration reap_interval = absl::Seconds(1);
  bool fill_pools = true;  // false: no filler thread (tests call FillPoolsOnce()).
  absl::Duration destroyed_retention = absl::Hours(1);
  absl::Duration touch_persist_interval = absl::Seconds(10);
  absl::Duration connect_timeout = absl::Seconds(10);
  absl::Duration pool_retry_max = absl::Seconds(30);
  // This replica's ordinal (the StatefulSet Pod parley-sandbox-N): minted ids carry it,
  // and a call for another replica's id is refused naming that replica. nullopt: a
  // single instance, whose ids name no replica (contract/sandbox_id.h).
  std::optional<uint32_t> replica;
};

}  // namespace parley::sandbox
