#include "gateway/api/stream_events.h"

#include "common/status.h"

namespace parley::gateway {

StreamEventsReactor::StreamEventsReactor(Hub& hub, StreamParams params,
                                         telemetry::ServerCallTelemetry call)
    : InstrumentedWriteReactor(std::move(call)), hub_(hub) {
  core_ = std::make_shared<StreamCore>(hub, this, std::move(params));
  hub_.Open(core_);  // Checks access on a backfill worker; this thread never waits.
}

void StreamEventsReactor::OnDone() {
  core_->Detach();
  hub_.Unregister(core_.get());
  delete this;
}

absl::StatusOr<StreamParams> StreamParamsFromRequest(const std::string& tenant_id,
                                                     const v1::StreamEventsRequest& request) {
  if (request.session_id().empty()) return InvalidArgumentError("session_id", "is required");
  if (request.session_id().size() > 128) {
    return InvalidArgumentError("session_id", "is too long", "128 bytes");
  }
  StreamParams params;
  params.tenant_id = tenant_id;
  params.session_id = request.session_id();
  params.until_turn_end = request.until_turn_end();
  params.client_epoch = request.epoch();
  switch (request.start_case()) {
    case v1::StreamEventsRequest::kAfterSeq:
    case v1::StreamEventsRequest::START_NOT_SET:
      params.start = StreamParams::Start::kAfterSeq;
      params.after_seq = request.after_seq();
      break;
    case v1::StreamEventsRequest::kFromLatest:
      params.start = StreamParams::Start::kLatest;
      break;
    case v1::StreamEventsRequest::kFromTurnId:
      if (request.from_turn_id().empty()) {
        return InvalidArgumentError("from_turn_id", "must not be empty");
      }
      params.start = StreamParams::Start::kTurn;
      params.turn_id = request.from_turn_id();
      break;
  }
  return params;
}

}  // namespace parley::gateway
