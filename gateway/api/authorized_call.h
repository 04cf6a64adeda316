// A unary public call: authenticate, check the scope, call the service that owns the
// data, answer.
//
// The gateway's unary calls all have this shape (gateway/README.md, "Data flow of a
// unary call"). The reactor owns the downstream request, response and ClientContext for
// the lifetime of the call, continues the trace and the deadline downstream
// (PrepareDownstream), cancels the downstream call when the client goes away, and
// finishes with whatever status came back — structured details included, since a
// failed status is passed through untouched. A call that changes something names its
// IdempotencyStore, which makes an `idempotency-key` header replay the first outcome. Nothing
// blocks: the key lookup and the downstream call are asynchronous and each step runs on the thread
// that completed the one before.
//
//   return AuthorizedCall<store::v1::GetTurnRequest, store::v1::GetTurnResponse>::Start(
//       context, authenticator, timeout,
//       {.scope = kScopeSessionsRead,
//        .build = [request](const Principal& who, store::v1::GetTurnRequest* out) {...},
//        .call = [stub](grpc::ClientContext* c, const auto* req, auto* resp, auto done) {
//          stub->async()->GetTurn(c, req, resp, std::move(done));
//        },
//        .reply = [response](store::v1::GetTurnResponse& out) {...}});
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/status.h"
#include "gateway/api/idempotency.h"
#include "gateway/auth/authenticator.h"
#include "telemetry/grpc_telemetry.h"

namespace parley::gateway {

template <typename Request, typename Response>
class AuthorizedCall final : public grpc::ServerUnaryReactor {
 public:
  struct Steps {
    // The scope the rpc needs (parley.proto names it).
    const char* scope = nullptr;
    // For calls that change something: with an `idempotency-key` header the first
    // outcome is kept and a retry gets it again (gateway/api/idempotency.h), filed under
    // `method`. Null: the header is ignored.
    IdempotencyStore* idempotency = nullptr;
    const char* method = nullptr;
    // What a retry must repeat to be the same call: the caller's request. Null: the
    // downstream request, which is only right when `build` adds nothing generated (a
    // new id would make every retry look like a different call).
    const google::protobuf::Message* caller_request = nullptr;
    // Fills the downstream request for the caller (its tenant, the public request). An
    // error ends the call with it, before anything is sent.
    std::function<absl::Status(const Principal&, Request*)> build;
    // Starts the downstream call; it must run `done` exactly once.
    std::function<void(grpc::ClientContext*, const Request*, Response*,
                       std::function<void(grpc::Status)>)>
        call;
    // Turns a successful downstream answer into the public response.
    std::function<absl::Status(Response&)> reply;
  };

  static grpc::ServerUnaryReactor* Start(grpc::CallbackServerContext* context,
                                         Authenticator& authenticator, absl::Duration max_timeout,
                                         Steps steps) {
    return new AuthorizedCall(context, authenticator, max_timeout, std::move(steps));
  }

  void OnCancel() override { client_context_.TryCancel(); }  // Also before the call starts.
  void OnDone() override { delete this; }

 private:
  AuthorizedCall(grpc::CallbackServerContext* context, Authenticator& authenticator,
                 absl::Duration max_timeout, Steps steps)
      : context_(context), steps_(std::move(steps)) {
    telemetry::PrepareDownstream(*context, client_context_, max_timeout);
    // The callback may run before this constructor returns; Finish() is safe then.
    authenticator.Authenticate(*context, [this](absl::StatusOr<Principal> who) {
      if (!who.ok()) return Finish(ToGrpcStatus(who.status()));
      OnAuthenticated(*who);
    });
  }

  void OnAuthenticated(const Principal& who) {
    absl::Status allowed = who.Require(steps_.scope);
    if (allowed.ok()) allowed = steps_.build(who, &request_);
    if (!allowed.ok()) return Finish(ToGrpcStatus(allowed));
    if (steps_.idempotency != nullptr) {
      absl::StatusOr<std::optional<std::string>> key = IdempotencyKeyOf(*context_);
      if (!key.ok()) return Finish(ToGrpcStatus(key.status()));
      if (key->has_value()) {
        const google::protobuf::Message& same_call =
            steps_.caller_request != nullptr ? *steps_.caller_request : request_;
        return steps_.idempotency->Begin(who.tenant_id, steps_.method, **key, same_call,
                                         [this](absl::StatusOr<IdempotencyStore::Started> started) {
                                           OnClaimed(std::move(started));
                                         });
      }
    }
    CallDownstream();
  }

  void OnClaimed(absl::StatusOr<IdempotencyStore::Started> started) {
    if (!started.ok()) return Finish(ToGrpcStatus(started.status()));
    if (!started->claim) {  // An earlier call with this key ended: its outcome again.
      context_->AddTrailingMetadata(kIdempotentReplayedTrailer, "true");
      if (!started->replay_status.ok()) return Finish(started->replay_status);
      if (!response_.ParseFromString(started->replay_response)) {
        return Finish(grpc::Status(grpc::StatusCode::INTERNAL, "unreadable recorded response"));
      }
      return Finish(ToGrpcStatus(steps_.reply(response_)));
    }
    claim_ = std::move(started->claim);
    CallDownstream();
  }

  void CallDownstream() {
    steps_.call(&client_context_, &request_, &response_, [this](grpc::Status status) {
      if (!claim_) return Answer(status);
      // The outcome is recorded before the caller hears it, so a retry sent after the
      // answer finds it rather than the claim still pending.
      steps_.idempotency->Complete(*std::move(claim_), status, &response_,
                                   [this, status] { Answer(status); });
    });
  }

  void Answer(const grpc::Status& status) {
    if (!status.ok()) return Finish(status);
    Finish(ToGrpcStatus(steps_.reply(response_)));
  }

  grpc::CallbackServerContext* const context_;
  Steps steps_;
  std::optional<IdempotencyStore::Claim> claim_;
  Request request_;
  Response response_;
  grpc::ClientContext client_context_;
};

}  // namespace parley::gateway
