// StreamEvents: the gRPC side of one event stream.
//
// The reactor is thin: it turns SubscriberStream's Write/FinishStream into gRPC
// writes and relays completions and cancellation back. It writes raw bytes laid out
// around each item's shared serialization (StreamEventsBytes), so an event going to
// many streams is serialized once, and a batched stream's write is one `batch`. All stream logic
// (positions, backfill, buffering, keepalives) lives in gateway/fanout/subscriber_stream.h, so no
// thread ever blocks for a stream.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "gateway/fanout/hub.h"
#include "parley/v1/parley.pb.h"
#include "telemetry/grpc_telemetry.h"

namespace parley::gateway {

// One StreamEvents call. It is created before the caller is known (authentication may
// need a store-svc lookup) and then either opened on the hub or rejected.
class StreamEventsReactor final : public telemetry::InstrumentedWriteReactor<grpc::ByteBuffer>,
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
    out_ = StreamEventsBytes(batch, batched_);
    StartWrite(&out_);
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
  // Set by Open before the stream can write; read by Write.
  bool batched_ = false;
  grpc::ByteBuffer out_;  // The write in flight (one at a time).
  // The stream to open once OpenAfter's first response is written.
  StreamParams after_first_;
  bool writing_first_ ABSL_GUARDED_BY(mu_) = false;
};

// Validates a request and turns it into stream parameters for `tenant_id`.
absl::StatusOr<StreamParams> StreamParamsFromRequest(const std::string& tenant_id,
                                                     const v1::StreamEventsRequest& request);

// Parses a raw method's request bytes into `request`: INVALID_ARGUMENT naming the
// message type when they are not one.
template <typename Request>
absl::Status ParseRequest(const grpc::ByteBuffer& bytes, Request& request) {
  grpc::ByteBuffer copy(bytes);  // Parsing consumes its buffer; the copy shares the slices.
  if (!grpc::SerializationTraits<Request>::Deserialize(&copy, &request).ok()) {
    return InvalidArgumentError("request",
                                absl::StrCat("is not a ", Request::descriptor()->name()));
  }
  return absl::OkStatus();
}

// The longest StreamEventsRequest.max_batch_delay_ms allowed.
inline constexpr uint32_t kMaxBatchDelayMs = 1000;

}  // namespace parley::gateway
