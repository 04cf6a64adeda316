// The one validator of each file operation (the parley.sandboxd.v1 messages defined once in
// operations.proto): the gateway runs them before it acquires a sandbox, parley-sandbox on
// every call, and parley-sandboxd again before it touches the workspace. They check paths
// lexically (see contract/paths.h) and the numeric limits; resolution is the daemon's.
//
//   if (absl::Status s = ValidateListDir(request.list()); !s.ok()) return s;
#pragma once

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status.h"
#include "parley/sandboxd/v1/operations.pb.h"
#include "sandbox-svc/contract/paths.h"
#include "sandbox-svc/contract/request_validation.h"

namespace parley::sandbox {

// A path that must name an entry below the root (it is read or written).
inline absl::Status CheckRequiredPath(absl::string_view path, absl::string_view field) {
  if (absl::Status s = CheckCallerPath(path, field); !s.ok()) return s;
  if (path.empty()) return InvalidArgumentError(field, "required");
  return absl::OkStatus();
}

inline absl::Status ValidateReadFile(const ::parley::sandboxd::v1::ReadFileRequest& request) {
  return CheckRequiredPath(request.path(), "path");
}

// `field_prefix` names where the header sits in the caller's request ("header." for the
// WriteFile streams of the public and internal APIs, "" for the daemon's own).
inline absl::Status ValidateWriteHeader(const ::parley::sandboxd::v1::WriteFileHeader& header,
                                        absl::string_view field_prefix) {
  if (absl::Status s = CheckRequiredPath(header.path(), absl::StrCat(field_prefix, "path"));
      !s.ok()) {
    return s;
  }
  return ValidateMode(header.mode(), absl::StrCat(field_prefix, "mode"));
}

inline absl::Status ValidateListDir(const ::parley::sandboxd::v1::ListDirRequest& request) {
  if (absl::Status s = CheckCallerPath(request.path()); !s.ok()) return s;
  return ValidateMaxEntries(request.max_entries());
}

inline absl::Status ValidateStat(const ::parley::sandboxd::v1::StatRequest& request) {
  return CheckCallerPath(request.path());
}

inline absl::Status ValidateMakeDir(const ::parley::sandboxd::v1::MakeDirRequest& request) {
  if (absl::Status s = CheckCallerPath(request.path()); !s.ok()) return s;
  return ValidateMode(request.mode(), "mode");
}

inline absl::Status ValidateRemove(const ::parley::sandboxd::v1::RemoveRequest& request) {
  return CheckCallerPath(request.path());
}

}  // namespace parley::sandbox
