// Limits on request fields that more than one part of the sandbox service checks: the
// gateway at the edge, parley-sandbox's API, and parley-sandboxd again inside the
// sandbox. One definition keeps the ends agreeing on a limit and on its error. The
// validators of whole messages (exec_validation.h, file_validation.h,
// call_validation.h) are built from these.
//
//   if (absl::Status s = ValidateId(request.tenant_id(), "tenant_id", true); !s.ok()) return s;
//   if (absl::Status s = ValidateMode(request.mode(), "mode"); !s.ok()) return s;
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/status.h"

namespace parley::sandbox {

inline constexpr size_t kMaxIdBytes = 128;                  // tenant, sandbox and session ids.
inline constexpr size_t kMaxWriteChunkBytes = 1024 * 1024;  // One WriteFile data message.
inline constexpr uint32_t kMaxListEntries = 10000;          // ListFiles/ListDir max_entries.
inline constexpr uint32_t kMaxModeBits = 07777;             // Permission bits only.

// An id (tenant, sandbox, session): at most 128 bytes; `required` ones must not be empty.
inline absl::Status ValidateId(absl::string_view value, absl::string_view field, bool required) {
  if (required && value.empty()) return InvalidArgumentError(field, "required");
  if (value.size() > kMaxIdBytes) return InvalidArgumentError(field, "too long", "128 bytes");
  return absl::OkStatus();
}

// A file mode: permission bits (with setuid, setgid, sticky) only, no file type.
inline absl::Status ValidateMode(uint32_t mode, absl::string_view field) {
  if (mode > kMaxModeBits) return InvalidArgumentError(field, "permission bits only", "07777");
  return absl::OkStatus();
}

// A directory listing's max_entries (0 means the server's default).
inline absl::Status ValidateMaxEntries(uint32_t max_entries) {
  if (max_entries > kMaxListEntries) {
    return InvalidArgumentError("max_entries", "too large", "10000");
  }
  return absl::OkStatus();
}

// One data message of a WriteFile stream.
inline absl::Status ValidateWriteChunk(absl::string_view data) {
  if (data.size() > kMaxWriteChunkBytes) {
    return InvalidArgumentError("data", "chunk too large", "1 MiB per message");
  }
  return absl::OkStatus();
}

}  // namespace parley::sandbox
