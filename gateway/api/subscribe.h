// Subscribe: the gRPC side of one multiplexed stream.
//
// The reactor reads the client's adds and removes and hands them to a MuxStream
// (gateway/fanout/mux_stream.h), and writes the batches the MuxStream makes. It works
// on raw bytes both ways: requests are parsed here, and batches are written exactly as
// SubscribeBatch laid them out, their events serialized once for every subscriber. No
// thread ever blocks for a stream.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "gateway/fanout/hub.h"
#include "gateway/fanout/mux_stream.h"
#include "parley/v1/parley.pb.h"
#include "telemetry/grpc_telemetry.h"

namespace parley::gateway {

// One Subscribe call. Created before the caller is known; then opened for a tenant or
// rejected.
class SubscribeReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                               public MuxWriter {
 public:
  // `on_open`, when given, sees the stream once it is made (before it reads anything).
  using OnOpen = std::function<void(std::weak_ptr<Endable>)>;
  SubscribeReactor(Hub& hub, telemetry::ServerCallTelemetry call, OnOpen on_open = nullptr);

  // Exactly one of Open and Reject, once, from any thread.
  void Open(const std::string& tenant_id);
  void Reject(const grpc::Status& status);

  // MuxWriter.
  void WriteBatch(const grpc::ByteBuffer* batch) override { StartWrite(batch); }
  void FinishMux(const grpc::Status& status) override;

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  // One request off the wire, to the stream.
  void Handle(MuxStream& mux);

  Hub& hub_;
  const OnOpen on_open_;
  telemetry::ServerCallTelemetry call_;
  // Orders a cancel against Open. Never held while calling into the hub or the stream.
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<MuxStream> mux_ ABSL_GUARDED_BY(mu_);  // Set once, by Open.
  grpc::ByteBuffer request_;                             // The read in flight (one at a time).
};

// The subscription an add asks for, validated (the id, and the request as StreamEvents
// checks it); the tenant is filled in by the stream.
absl::StatusOr<StreamParams> SubscriptionParams(const v1::AddSubscription& add);

}  // namespace parley::gateway
