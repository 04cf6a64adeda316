#include "gateway/api/stream_events.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace parley::gateway {

StreamEventsReactor::StreamEventsReactor(Hub& hub, telemetry::ServerCallTelemetry call,
                                         OnOpen on_open)
    : InstrumentedWriteReactor(std::move(call)), hub_(hub), on_open_(std::move(on_open)) {}

void StreamEventsReactor::Open(StreamParams params) {
  Hub& hub = hub_;  // Once OnCancel can see the core, `this` may be deleted at any time.
  std::shared_ptr<SubscriberStream> core;
  {
    absl::MutexLock lock(&mu_);
    if (!cancelled_) {
      batched_ = params.batch;
      core = std::make_shared<SubscriberStream>(hub_, this, std::move(params));
      // While the core is not yet visible to OnCancel the call cannot end, so the call's
      // context is still there for `on_open_`.
      if (on_open_) on_open_(core);
      core_ = core;
    }
  }
  if (core == nullptr) {
    FinishCall(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
    return;
  }
  // Checks access on a backfill worker; this thread never waits. A core cancelled since
  // the lock was released is not opened.
  hub.Open(core);
}

void StreamEventsReactor::OpenAfter(v1::StreamEventsResponse first, StreamParams params) {
  bool cancelled = false;
  {
    absl::MutexLock lock(&mu_);
    cancelled = cancelled_;
    if (!cancelled) {
      after_first_ = std::move(params);
      writing_first_ = true;
    }
  }
  if (cancelled) {
    FinishCall(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
    return;
  }
  out_ = StreamEventsBytes({Share(std::move(first))}, /*as_batch=*/false);
  StartWrite(&out_);
}

void StreamEventsReactor::Reject(const grpc::Status& status) { FinishCall(status); }

void StreamEventsReactor::OnWriteDone(bool ok) {
  std::shared_ptr<SubscriberStream> core;
  bool first_written = false;
  {
    absl::MutexLock lock(&mu_);
    first_written = writing_first_;
    writing_first_ = false;
    core = core_;  // Set otherwise: the hub's writes only start after Open.
  }
  if (first_written) {
    if (!ok) return FinishCall(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
    return Open(std::move(after_first_));
  }
  core->OnWriteDone(ok);
}

void StreamEventsReactor::OnCancel() {
  std::shared_ptr<SubscriberStream> core;
  {
    absl::MutexLock lock(&mu_);
    core = core_;
    cancelled_ = true;  // Before Open, Open finishes the call instead of starting it.
  }
  if (core != nullptr) core->Cancel();
}

void StreamEventsReactor::OnDone() {
  std::shared_ptr<SubscriberStream> core;
  {
    absl::MutexLock lock(&mu_);
    core = core_;
  }
  if (core != nullptr) {
    core->Detach();
    hub_.Unregister(core.get());
  }
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
  if (request.max_batch_delay_ms() > 0 && !request.batch()) {
    return InvalidArgumentError("max_batch_delay_ms", "is only allowed with batch");
  }
  if (request.max_batch_delay_ms() > kMaxBatchDelayMs) {
    return InvalidArgumentError("max_batch_delay_ms", "is too long",
                                absl::StrCat(kMaxBatchDelayMs, " ms"));
  }
  params.batch = request.batch();
  params.batch_delay = absl::Milliseconds(request.max_batch_delay_ms());
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
