// A unary server reactor that answers by calling another service.
//
// The gateway's public calls are mostly "authenticate, add the tenant, forward": this
// reactor owns the outgoing request and ClientContext for the lifetime of the call,
// continues the trace and the deadline downstream (PrepareDownstream), cancels the
// downstream call when the client goes away, and finishes with whatever status came
// back — structured details included, since the status is passed through untouched.
//
//   return new ForwardingReactor<router::v1::SubmitMessageRequest>(
//       ctx, std::move(internal_request), timeout,
//       [&](grpc::ClientContext* c, const auto* req, auto done) {
//         router_->async()->SubmitMessage(c, req, response, std::move(done));
//       });
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <utility>

#include "absl/time/time.h"
#include "telemetry/grpc_telemetry.h"

namespace parley::gateway {

template <typename Request>
class ForwardingReactor final : public grpc::ServerUnaryReactor {
 public:
  using Done = std::function<void(grpc::Status)>;
  using Start = std::function<void(grpc::ClientContext*, const Request*, Done)>;

  ForwardingReactor(grpc::CallbackServerContext* context, Request request,
                    absl::Duration max_timeout, const Start& start)
      : request_(std::move(request)) {
    telemetry::PrepareDownstream(*context, client_context_, max_timeout);
    // The callback may run before this constructor returns; Finish() is safe then.
    start(&client_context_, &request_, [this](grpc::Status status) { Finish(status); });
  }

  void OnCancel() override { client_context_.TryCancel(); }
  void OnDone() override { delete this; }

 private:
  Request request_;
  grpc::ClientContext client_context_;
};

}  // namespace parley::gateway
