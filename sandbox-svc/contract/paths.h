// Caller paths inside a sandbox workspace: the lexical rules shared by parley-sandbox
// (checked at the edge, before anything is touched) and parley-sandboxd (checked again
// before resolution). See sandboxd.proto "Paths".
//
//   if (absl::Status s = CheckCallerPath(request.path()); !s.ok()) return s;
//   std::string canonical = NormalizePath(request.path());  // "a//b/./c/" -> "a/b/c"
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace parley::sandbox {

inline constexpr size_t kMaxPathBytes = 4096;

// INVALID_ARGUMENT (BadRequest naming `field`) for an absolute path, a ".." component,
// a NUL byte or more than kMaxPathBytes; OK otherwise (empty means the root).
absl::Status CheckCallerPath(absl::string_view path, absl::string_view field = "path");

// The path in canonical form: no "." components, no duplicate or trailing "/"; the
// root is ".". Assumes CheckCallerPath passed.
std::string NormalizePath(absl::string_view path);

}  // namespace parley::sandbox
