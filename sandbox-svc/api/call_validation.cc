// The SandboxManager calls' validation. The lifecycle rules (labels, durations, page size)
// are the manager's documented limits (sandbox.proto); the operation rules come from the
// shared validators, so the gateway and the daemon apply exactly the same ones.
#include "sandbox-svc/api/call_validation.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status.h"
#include "sandbox-svc/contract/exec_validation.h"
#include "sandbox-svc/contract/file_validation.h"
#include "sandbox-svc/contract/list_cursor.h"
#include "sandbox-svc/contract/request_validation.h"

namespace parley::sandbox {
namespace {

namespace sandbox_pb = ::parley::sandbox::v1;

constexpr size_t kMaxLabels = 32;
constexpr size_t kMaxLabelBytes = 63;
constexpr uint64_t kMaxDurationS = 366ull * 24 * 3600;
constexpr uint32_t kMaxPageSize = 1000;

absl::Status ValidateLabels(const google::protobuf::Map<std::string, std::string>& labels,
                            absl::string_view field) {
  if (labels.size() > kMaxLabels) {
    return InvalidArgumentError(field, "too many labels", "32 entries");
  }
  for (const auto& [key, value] : labels) {
    if (key.empty()) return InvalidArgumentError(field, "label keys must not be empty");
    if (key.size() > kMaxLabelBytes) {
      return InvalidArgumentError(absl::StrCat(field, "[", key.substr(0, 16), "…]"),
                                  "label key too long", "63 bytes");
    }
    if (value.size() > kMaxLabelBytes) {
      return InvalidArgumentError(absl::StrCat(field, "[", key, "]"), "label value too long",
                                  "63 bytes");
    }
  }
  return absl::OkStatus();
}

// The settings of a new sandbox, shared by CreateSandbox and AcquireForSession.
absl::Status ValidateNewSandbox(uint64_t ttl_s, uint64_t idle_timeout_s,
                                sandbox_pb::OnExpiry on_expiry,
                                const google::protobuf::Map<std::string, std::string>& labels) {
  if (ttl_s > kMaxDurationS) return InvalidArgumentError("ttl_s", "too long", "31622400 s");
  if (idle_timeout_s > kMaxDurationS) {
    return InvalidArgumentError("idle_timeout_s", "too long", "31622400 s");
  }
  if (!sandbox_pb::OnExpiry_IsValid(on_expiry))
    return InvalidArgumentError("on_expiry", "unknown value");
  return ValidateLabels(labels, "labels");
}

// An operation inside a sandbox: its target, then the embedded daemon message.
template <typename Request, typename Operation>
absl::Status ValidateOperation(const Request& request, const Operation& operation,
                               absl::Status (*validate)(const Operation&)) {
  if (absl::Status s = ValidateTarget(request.tenant_id(), request.sandbox_id()); !s.ok()) {
    return s;
  }
  return validate(operation);
}

// A ListSandboxes cursor: empty, or one the manager wrote.
absl::Status ValidatePageToken(const std::string& token) {
  if (token.empty()) return absl::OkStatus();
  return ListCursor::Parse(token).status();
}

}  // namespace

absl::Status ValidateTarget(const std::string& tenant_id, const std::string& sandbox_id) {
  if (absl::Status s = ValidateId(tenant_id, "tenant_id", true); !s.ok()) return s;
  return ValidateId(sandbox_id, "sandbox_id", true);
}

absl::Status ValidateCall(const sandbox_pb::CreateSandboxRequest& request) {
  if (absl::Status s = ValidateId(request.tenant_id(), "tenant_id", true); !s.ok()) return s;
  if (absl::Status s = ValidateId(request.session_id(), "session_id", false); !s.ok()) return s;
  return ValidateNewSandbox(request.ttl_s(), request.idle_timeout_s(), request.on_expiry(),
                            request.labels());
}

absl::Status ValidateCall(const sandbox_pb::AcquireForSessionRequest& request) {
  if (absl::Status s = ValidateId(request.tenant_id(), "tenant_id", true); !s.ok()) return s;
  if (absl::Status s = ValidateId(request.session_id(), "session_id", true); !s.ok()) return s;
  return ValidateNewSandbox(request.ttl_s(), request.idle_timeout_s(), request.on_expiry(),
                            request.labels());
}

absl::Status ValidateCall(const sandbox_pb::GetSandboxRequest& request) {
  return ValidateTarget(request.tenant_id(), request.sandbox_id());
}

absl::Status ValidateCall(const sandbox_pb::ListSandboxesRequest& request) {
  if (absl::Status s = ValidateId(request.tenant_id(), "tenant_id", true); !s.ok()) return s;
  if (absl::Status s = ValidateLabels(request.label_selector(), "label_selector"); !s.ok()) {
    return s;
  }
  if (request.page_size() > kMaxPageSize) {
    return InvalidArgumentError("page_size", "too large", "1000");
  }
  return ValidatePageToken(request.page_token());
}

absl::Status ValidateCall(const sandbox_pb::PauseSandboxRequest& request) {
  return ValidateTarget(request.tenant_id(), request.sandbox_id());
}

absl::Status ValidateCall(const sandbox_pb::ResumeSandboxRequest& request) {
  return ValidateTarget(request.tenant_id(), request.sandbox_id());
}

absl::Status ValidateCall(const sandbox_pb::DestroySandboxRequest& request) {
  return ValidateTarget(request.tenant_id(), request.sandbox_id());
}

absl::Status ValidateCall(const sandbox_pb::ExecRequest& request) {
  return ValidateOperation(request, request.command(), ValidateExecCommand);
}

absl::Status ValidateCall(const sandbox_pb::ReadFileRequest& request) {
  return ValidateOperation(request, request.file(), ValidateReadFile);
}

absl::Status ValidateCall(const sandbox_pb::WriteFileHeader& header) {
  if (absl::Status s = ValidateTarget(header.tenant_id(), header.sandbox_id()); !s.ok()) return s;
  return ValidateWriteHeader(header.file(), "header.");
}

absl::Status ValidateCall(const sandbox_pb::ListFilesRequest& request) {
  return ValidateOperation(request, request.list(), ValidateListDir);
}

absl::Status ValidateCall(const sandbox_pb::StatFileRequest& request) {
  return ValidateOperation(request, request.stat(), ValidateStat);
}

absl::Status ValidateCall(const sandbox_pb::MakeDirRequest& request) {
  return ValidateOperation(request, request.make_dir(), ValidateMakeDir);
}

absl::Status ValidateCall(const sandbox_pb::RemoveRequest& request) {
  return ValidateOperation(request, request.remove(), ValidateRemove);
}

}  // namespace parley::sandbox
