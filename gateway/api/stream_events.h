// StreamEvents: the gRPC side of one event stream.
//
// The reactor is thin: it turns SubscriberStream's Write/FinishStream into gRPC
// writes and relays completions and cancellation back. All stream logic (positions,
// backfill, buffering, keepalives) lives in gateway/fanout/subscriber_stream.h, so no thread ever
// blocks for a stream.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>

#include "absl/synchronization/mutex.h"
#include "gateway/fanout/hub.h"
#include "parley/v1/parley.pb.h"
#include "telemetry/grpc_telemetry.h"

namespace parley::gateway {

// One StreamEvents call. It is created before the caller is known (authentication may
// need a store-svc lookup) and then either opened on the hub or rejected.
class StreamEventsReactor final
    : public telemetry::InstrumentedWriteReactor<v1::StreamEventsResponse>,
      public StreamWriter {
 public:
  // `on_open`, when given, sees the stream's core once it is made (before it opens).
  using OnOpen = std::function<void(std::weak_ptr<Endable>)>;
  StreamEventsReactor(Hub& hub, telemetry::ServerCallTelemetry call, OnOpen on_open = nullptr);

  // Exactly one of Open, OpenAfter and Reject, once, from any thread.
  void Open(StreamParams params);
  // Writes `first`, then opens the stream (SendMessageAndStream's acknowledgement).
  void OpenAfter(v1::StreamEventsResponse first, StreamParams params);
  void Reject(const grpc::Status& status);

  void Write(const std::vector<ResponsePtr>& batch) override {
    StartWrite(&batch.front()->message());
  }
  void FinishStream(const grpc::Status& status) override { FinishCall(status); }

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  Hub& hub_;
  const OnOpen on_open_;
  // Orders a cancel against Open. Never held while calling into the hub or the stream.
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<SubscriberStream> core_ ABSL_GUARDED_BY(mu_);  // Set once, by Open.
  // OpenAfter's first response while it is being written, and the stream to open then.
  v1::StreamEventsResponse first_;
  StreamParams after_first_;
  bool writing_first_ ABSL_GUARDED_BY(mu_) = false;
};

// Validates a request and turns it into stream parameters for `tenant_id`.
absl::StatusOr<StreamParams> StreamParamsFromRequest(const std::string& tenant_id,
                                                     const v1::StreamEventsRequest& request);

}  // namespace parley::gateway
