// Subscribe: reads adds and removes, writes a MuxStream's batches (see the header).
#include "gateway/api/subscribe.h"

#include "common/status.h"
#include "gateway/api/stream_events.h"

namespace parley::gateway {

namespace {
constexpr size_t kMaxSubscriptionIdBytes = 128;
}  // namespace

SubscribeReactor::SubscribeReactor(Hub& hub, telemetry::ServerCallTelemetry call, OnOpen on_open)
    : hub_(hub), on_open_(std::move(on_open)), call_(std::move(call)) {}

void SubscribeReactor::Open(const std::string& tenant_id) {
  std::shared_ptr<MuxStream> mux;
  {
    absl::MutexLock lock(&mu_);
    if (!cancelled_) {
      mux = std::make_shared<MuxStream>(hub_, this, tenant_id);
      // While OnCancel cannot see the stream the call cannot end, so its context is
      // still there for `on_open_`.
      if (on_open_) on_open_(mux);
      mux_ = mux;
    }
  }
  if (mux == nullptr) {
    return FinishMux(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
  }
  mux->Start();
  StartRead(&request_);
}

void SubscribeReactor::Reject(const grpc::Status& status) { FinishMux(status); }

void SubscribeReactor::FinishMux(const grpc::Status& status) {
  call_.Finish(status);
  Finish(status);
}

void SubscribeReactor::OnReadDone(bool ok) {
  std::shared_ptr<MuxStream> mux;
  {
    absl::MutexLock lock(&mu_);
    mux = mux_;  // Reads start only after Open set it.
  }
  if (!ok) return mux->HalfClose();  // Or the call is over; then Detach follows.
  Handle(*mux);
  StartRead(&request_);
}

void SubscribeReactor::Handle(MuxStream& mux) {
  v1::SubscribeRequest request;
  if (absl::Status parsed = ParseRequest(request_, request); !parsed.ok()) {
    // Nothing names a subscription to refuse: the stream itself is answered.
    return mux.End(ToGrpcStatus(parsed));
  }
  switch (request.action_case()) {
    case v1::SubscribeRequest::kAdd:
      return mux.Add(request.add().subscription_id(), SubscriptionParams(request.add()));
    case v1::SubscribeRequest::kRemove:
      return mux.Remove(request.remove().subscription_id());
    case v1::SubscribeRequest::ACTION_NOT_SET:
      return;  // A newer client's action this server does not know: nothing to do.
  }
}

void SubscribeReactor::OnWriteDone(bool ok) {
  std::shared_ptr<MuxStream> mux;
  {
    absl::MutexLock lock(&mu_);
    mux = mux_;  // Writes start only after Open set it.
  }
  mux->OnWriteDone(ok);
}

void SubscribeReactor::OnCancel() {
  std::shared_ptr<MuxStream> mux;
  {
    absl::MutexLock lock(&mu_);
    mux = mux_;
    cancelled_ = true;  // Before Open, Open finishes the call instead of starting it.
  }
  if (mux != nullptr) mux->Cancel();
}

void SubscribeReactor::OnDone() {
  std::shared_ptr<MuxStream> mux;
  {
    absl::MutexLock lock(&mu_);
    mux = mux_;
  }
  if (mux != nullptr) mux->Detach();
  delete this;
}

absl::StatusOr<StreamParams> SubscriptionParams(const v1::AddSubscription& add) {
  if (add.subscription_id().empty()) {
    return InvalidArgumentError("add.subscription_id", "is required");
  }
  if (add.subscription_id().size() > kMaxSubscriptionIdBytes) {
    return InvalidArgumentError("add.subscription_id", "is too long", "128 bytes");
  }
  if (add.request().batch() || add.request().max_batch_delay_ms() > 0) {
    return InvalidArgumentError("add.request.batch",
                                "is not for a subscription (a Subscribe stream always batches)");
  }
  return StreamParamsFromRequest(/*tenant_id=*/"", add.request());
}

}  // namespace parley::gateway
