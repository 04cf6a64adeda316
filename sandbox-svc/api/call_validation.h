// Request validation for every parley.sandbox.v1.SandboxManager call, in one place: the
// API checks each request here before the manager, a proxy or the daemon sees it, so the
// SandboxManager behind it can assume well-formed input. Operations inside a sandbox are
// the target ids plus the one validator of the embedded daemon message
// (exec_validation.h, file_validation.h); lifecycle calls check their own fields.
//
//   if (absl::Status s = ValidateCall(*request); !s.ok()) return FinishNow(context, s);
//
// Every function returns INVALID_ARGUMENT with a BadRequest naming the field, or OK.
// ListTemplates and GetTemplate have nothing to check (an unknown template is NOT_FOUND).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "parley/sandbox/v1/sandbox.pb.h"

namespace parley::sandbox {

// The sandbox an operation targets: tenant_id and sandbox_id, both required.
absl::Status ValidateTarget(const std::string& tenant_id, const std::string& sandbox_id);

// Lifecycle.
absl::Status ValidateCall(const ::parley::sandbox::v1::CreateSandboxRequest& request);
absl::Status ValidateCall(const ::parley::sandbox::v1::AcquireForSessionRequest& request);
absl::Status ValidateCall(const ::parley::sandbox::v1::GetSandboxRequest& request);
absl::Status ValidateCall(const ::parley::sandbox::v1::ListSandboxesRequest& request);
absl::Status ValidateCall(const ::parley::sandbox::v1::PauseSandboxRequest& request);
absl::Status ValidateCall(const ::parley::sandbox::v1::ResumeSandboxRequest& request);
absl::Status ValidateCall(const ::parley::sandbox::v1::DestroySandboxRequest& request);

// Operations inside a sandbox. WriteFile is checked message by message: its header here,
// its data chunks with ValidateWriteChunk (request_validation.h).
absl::Status ValidateCall(const ::parley::sandbox::v1::ExecRequest& request);
absl::Status ValidateCall(const ::parley::sandbox::v1::ReadFileRequest& request);
absl::Status ValidateCall(const ::parley::sandbox::v1::WriteFileHeader& header);
absl::Status ValidateCall(const ::parley::sandbox::v1::ListFilesRequest& request);
absl::Status ValidateCall(const ::parley::sandbox::v1::StatFileRequest& request);
absl::Status ValidateCall(const ::parley::sandbox::v1::MakeDirRequest& request);
absl::Status ValidateCall(const ::parley::sandbox::v1::RemoveRequest& request);

}  // namespace parley::sandbox
