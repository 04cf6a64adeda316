// StoreCall: one blocking call to store-svc, retried while store-svc is unreachable.
//
//   store::v1::GetTurnResponse turn;
//   absl::Status s = StoreCall(stub, &Stub::GetTurn, request, &turn, {.attempts = 5});
//
// Only UNAVAILABLE is retried: every store write is idempotent or fenced (store.proto),
// so repeating a call whose answer was lost is safe. Error details survive
// (FromGrpcStatus), so callers can read ErrorInfo reasons such as LEASE_LOST.
#pragma once

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status.h"
#include "parley/store/v1/store.grpc.pb.h"

namespace parley::session {

using StoreStub = store::v1::StoreService::Stub;

struct StoreCallOptions {
  absl::Duration timeout = absl::Seconds(10);  // Per attempt.
  int attempts = 1;
  absl::Duration first_backoff = absl::Milliseconds(50);
};

template <typename Request, typename Response>
absl::Status StoreCall(StoreStub& stub,
                       grpc::Status (StoreStub::*method)(grpc::ClientContext*, const Request&,
                                                         Response*),
                       const Request& request, Response* response, StoreCallOptions options = {}) {
  absl::Duration backoff = options.first_backoff;
  absl::Status status;
  for (int attempt = 0; attempt < std::max(1, options.attempts); ++attempt) {
    if (attempt > 0) {
      absl::SleepFor(backoff);
      backoff = std::min(backoff * 2, absl::Seconds(1));
    }
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
    status = FromGrpcStatus((stub.*method)(&context, request, response));
    if (status.code() != absl::StatusCode::kUnavailable) return status;
  }
  return status;
}

// The ErrorInfo reason of `status`, or "" when it carries none.
inline std::string ErrorReason(const absl::Status& status) {
  std::optional<v1::ErrorInfo> info = GetErrorInfo(status);
  return info ? info->reason() : "";
}

}  // namespace parley::session
