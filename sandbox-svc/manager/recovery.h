// Recover: what parley-sandbox does with the records it finds at start, before any other
// thread touches a sandbox. READY and PAUSED sandboxes whose processes live are adopted
// (their daemon is reconnected lazily); READY ones whose processes are gone, CREATING
// ones (a crash mid-creation) and FAILED ones not yet cleaned up become FAILED and are
// cleaned up; then every provider deletes what no record names.
//
//   if (absl::Status s = Recover(lifecycle, table, store, providers, logger); !s.ok()) ...
//
// Runs on the calling (main) thread; errors only when the records cannot be read at all.
#pragma once

#include <map>
#include <string>

#include "absl/status/status.h"
#include "sandbox-svc/manager/lifecycle.h"
#include "sandbox-svc/manager/state_store.h"
#include "sandbox-svc/manager/table.h"
#include "sandbox-svc/provider/provider.h"
#include "telemetry/log.h"

namespace parley::sandbox {

absl::Status Recover(Lifecycle& lifecycle, SandboxTable& table, StateStore& store,
                     const std::map<std::string, SandboxProvider*>& providers,
                     const telemetry::Logger* logger);

}  // namespace parley::sandbox
