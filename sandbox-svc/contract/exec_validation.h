// The one validator of the exec command (parley.sandboxd.v1.ExecRequest, defined once in
// operations.proto): the gateway runs it before it acquires a sandbox, parley-sandbox on
// every Exec, and parley-sandboxd again before anything runs. A new exec field gets its
// rule here and nowhere else.
//
//   if (absl::Status s = ValidateExecCommand(request.command()); !s.ok()) return s;
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status.h"
#include "parley/sandboxd/v1/operations.pb.h"
#include "sandbox-svc/contract/paths.h"

namespace parley::sandbox {

inline constexpr int kMaxArgvEntries = 1024;
inline constexpr size_t kMaxArgvEnvBytes = 128 * 1024;
inline constexpr size_t kMaxStdinBytes = 1024 * 1024;
inline constexpr uint64_t kDefaultExecTimeoutMs = 60'000;
inline constexpr uint64_t kMaxExecTimeoutMs = 3'600'000;

// True for names matching [A-Za-z_][A-Za-z0-9_]*.
inline bool IsValidEnvName(absl::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
    bool digit = c >= '0' && c <= '9';
    if (!alpha && !(digit && i > 0)) return false;
  }
  return true;
}

// argv, env, cwd, stdin and timeout_ms of a command. Errors: INVALID_ARGUMENT naming the
// field.
inline absl::Status ValidateExecCommand(const ::parley::sandboxd::v1::ExecRequest& request) {
  if (request.argv_size() == 0)
    return InvalidArgumentError("argv", "must not be empty", "1 to 1024 entries");
  if (request.argv_size() > kMaxArgvEntries) {
    return InvalidArgumentError("argv", "too many entries", "1024 entries");
  }
  if (request.argv(0).empty())
    return InvalidArgumentError("argv[0]", "the program must not be empty");
  size_t total = 0;
  for (int i = 0; i < request.argv_size(); ++i) {
    const std::string& arg = request.argv(i);
    if (arg.find('\0') != std::string::npos) {
      return InvalidArgumentError(absl::StrCat("argv[", i, "]"), "contains a NUL byte");
    }
    total += arg.size() + 1;
  }
  for (const auto& [name, value] : request.env()) {
    if (!IsValidEnvName(name)) {
      return InvalidArgumentError(absl::StrCat("env[", name, "]"),
                                  "names match [A-Za-z_][A-Za-z0-9_]*");
    }
    if (value.find('\0') != std::string::npos) {
      return InvalidArgumentError(absl::StrCat("env[", name, "]"), "value contains a NUL byte");
    }
    total += name.size() + value.size() + 2;
  }
  if (total > kMaxArgvEnvBytes) {
    return InvalidArgumentError("argv", "argv and env together are too large", "128 KiB");
  }
  if (absl::Status status = CheckCallerPath(request.cwd(), "cwd"); !status.ok()) return status;
  if (request.stdin().size() > kMaxStdinBytes) {
    return InvalidArgumentError("stdin", "too large", "1 MiB");
  }
  if (request.timeout_ms() > kMaxExecTimeoutMs) {
    return InvalidArgumentError("timeout_ms", "too long", "3600000 ms");
  }
  return absl::OkStatus();
}

}  // namespace parley::sandbox
