// Sortable unique ids: "<prefix>_<26 chars>", e.g. "ses_01JDK3Z8M4Q4V2N6T0G1H5R7XW".
//
// The 26 characters are a ULID in Crockford base32: 48 bits of Unix milliseconds then
// 80 random bits. Ids from one generator sort by creation time and are strictly
// increasing even within one millisecond (the random part is incremented), so they make
// good primary keys and stable pagination cursors.
//
//   std::string id = NewId("ses");
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"

namespace parley {

class IdGenerator {
 public:
  explicit IdGenerator(Clock& clock);
  // Thread-safe. `prefix` is lower-case letters, at most 8.
  std::string Next(absl::string_view prefix);

 private:
  Clock& clock_;
  absl::Mutex mu_;
  int64_t last_ms_ ABSL_GUARDED_BY(mu_) = -1;
  std::array<uint8_t, 10> last_random_ ABSL_GUARDED_BY(mu_){};
  absl::BitGen bitgen_ ABSL_GUARDED_BY(mu_);
};

// A process-wide generator on the real clock.
std::string NewId(absl::string_view prefix);

// True when `id` is "<prefix>_" followed by 26 Crockford base32 characters.
bool IsValidId(absl::string_view id, absl::string_view prefix);

}  // namespace parley
