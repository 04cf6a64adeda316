// Structured errors: absl::Status inside Parley, gRPC status with details on the wire.
//
// Code inside Parley returns absl::Status / absl::StatusOr. Extra detail travels as
// status payloads holding the protos of proto/parley/v1/errors.proto (BadRequest,
// ErrorInfo, RetryInfo, ResourceInfo). At a gRPC boundary, ToGrpcStatus() packs them
// into an RpcStatus in the standard `grpc-status-details-bin` trailer and
// FromGrpcStatus() unpacks them again, so detail survives any number of hops.
//
//   return InvalidArgumentError("idempotency_key", "too long", "256 bytes");
//   ...
//   reactor->Finish(ToGrpcStatus(status));
#pragma once

#include <grpcpp/support/status.h>

#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "parley/v1/errors.pb.h"

// Returns the status of `expr` (an absl::Status) from the enclosing function when it is
// not OK:
//
//   PARLEY_RETURN_IF_ERROR(GetUnsigned(object, path, "cpu_ms", &cpu_ms));
#define PARLEY_RETURN_IF_ERROR(expr)                                  \
  do {                                                                \
    if (absl::Status parley_status_ = (expr); !parley_status_.ok()) { \
      return parley_status_;                                          \
    }                                                                 \
  } while (false)

namespace parley {

// INVALID_ARGUMENT "<field>: <description> (limit: <limit>)" with a BadRequest payload.
absl::Status InvalidArgumentError(absl::string_view field, absl::string_view description,
                                  absl::string_view limit = {});

// Adds one more field violation to an INVALID_ARGUMENT status (e.g. when validating a
// whole request at once). `status` must not be OK.
void AddFieldViolation(absl::Status& status, absl::string_view field, absl::string_view description,
                       absl::string_view limit = {});

// Attaches an ErrorInfo with a stable machine-readable reason.
void SetErrorInfo(absl::Status& status, absl::string_view reason,
                  const std::map<std::string, std::string>& metadata = {});

// Attaches a RetryInfo hint.
void SetRetryDelay(absl::Status& status, int64_t retry_delay_ms);

// Payload accessors; nullopt when the status carries no such detail.
std::optional<v1::BadRequest> GetBadRequest(const absl::Status& status);
std::optional<v1::ErrorInfo> GetErrorInfo(const absl::Status& status);
std::optional<v1::RetryInfo> GetRetryInfo(const absl::Status& status);

// Conversions at the gRPC boundary. Codes map one to one; payloads whose type URL
// names a message are carried as google.protobuf.Any.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// The type URL under which a message is stored, "type.googleapis.com/<full name>".
std::string TypeUrlFor(absl::string_view full_name);

}  // namespace parley
