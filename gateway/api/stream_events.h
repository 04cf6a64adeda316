// StreamEvents: the gRPC side of one event stream.
//
// The reactor is thin: it turns StreamCore's WriteResponse/FinishStream into gRPC
// writes and relays completions and cancellation back. All stream logic (positions,
// backfill, buffering, keepalives) lives in gateway/fanout/hub.h, so no thread ever
// blocks for a stream.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>

#include "gateway/fanout/hub.h"
#include "parley/v1/parley.pb.h"
#include "telemetry/grpc_telemetry.h"

namespace parley::gateway {

class StreamEventsReactor final
    : public telemetry::InstrumentedWriteReactor<v1::StreamEventsResponse>,
      public StreamWriter {
 public:
  StreamEventsReactor(Hub& hub, StreamParams params, telemetry::ServerCallTelemetry call);

  void WriteResponse(const v1::StreamEventsResponse* response) override { StartWrite(response); }
  void FinishStream(const grpc::Status& status) override { FinishCall(status); }

  void OnWriteDone(bool ok) override { core_->OnWriteDone(ok); }
  void OnCancel() override { core_->Cancel(); }
  void OnDone() override;

 private:
  Hub& hub_;
  std::shared_ptr<StreamCore> core_;
};

// A stream refused before it started (bad request, no credentials).
class RejectedStream final : public telemetry::InstrumentedWriteReactor<v1::StreamEventsResponse> {
 public:
  RejectedStream(const grpc::Status& status, telemetry::ServerCallTelemetry call)
      : InstrumentedWriteReactor(std::move(call)) {
    FinishCall(status);
  }
  void OnDone() override { delete this; }
};

// Validates a request and turns it into stream parameters for `tenant_id`.
absl::StatusOr<StreamParams> StreamParamsFromRequest(const std::string& tenant_id,
                                                     const v1::StreamEventsRequest& request);

}  // namespace parley::gateway
