// Lexical path rules; no file system access here.
#include "sandbox-svc/contract/paths.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status.h"

namespace parley::sandbox {

absl::Status CheckCallerPath(absl::string_view path, absl::string_view field) {
  if (path.size() > kMaxPathBytes) {
    return InvalidArgumentError(field, "path is too long", "4096 bytes");
  }
  if (path.find('\0') != absl::string_view::npos) {
    return InvalidArgumentError(field, "path contains a NUL byte");
  }
  if (!path.empty() && path.front() == '/') {
    return InvalidArgumentError(
        field,
        absl::StrCat("\"", path, "\" is absolute; paths are relative to the workspace root"));
  }
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") {
      return InvalidArgumentError(
          field,
          absl::StrCat("\"", path, "\" contains \"..\"; paths stay beneath the workspace root"));
    }
  }
  return absl::OkStatus();
}

std::string NormalizePath(absl::string_view path) {
  std::vector<absl::string_view> parts;
  for (absl::string_view part : absl::StrSplit(path, '/', absl::SkipEmpty())) {
    if (part != ".") parts.push_back(part);
  }
  return parts.empty() ? "." : absl::StrJoin(parts, "/");
}

}  // namespace parley::sandbox
