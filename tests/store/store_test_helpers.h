// StoreTest: StoreFixture plus one-line calls of the StoreService rpcs, so that each
// store test reads as the behaviour it specifies.
//
//   class Turns : public StoreTest {};
//   TEST_F(Turns, X) {
//     auto enqueued = Enqueue(CreateSession(kTenant).id(), "hello");
//     ASSERT_TRUE(enqueued.ok()) << enqueued.status();
//   }
//
// Every call returns absl::StatusOr carrying the gRPC error with its details (see
// FromGrpcStatus), so failures are checked with Reason(), ReasonMetadata() and
// Violation(). Calls act as tenant kTenant unless told otherwise.
#pragma once

#include <google/protobuf/text_format.h>

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/ids.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "tests/store/store_fixture.h"

namespace parley::store::testing {

namespace v1 = ::parley::v1;
using Stub = store_pb::StoreService::Stub;

inline constexpr char kTenant[] = "tenant_a";
inline constexpr char kOwner[] = "worker-1";
inline constexpr uint64_t kLeaseTtlMs = 60'000;

template <typename Request, typename Response>
using StubMethod = grpc::Status (Stub::*)(grpc::ClientContext*, const Request&, Response*);

// ErrorInfo.reason of `status`; empty when it carries no ErrorInfo.
inline std::string Reason(const absl::Status& status) {
  auto info = GetErrorInfo(status);
  return info ? info->reason() : "";
}

// ErrorInfo.metadata[key] of `status`; empty when absent.
inline std::string ReasonMetadata(const absl::Status& status, const std::string& key) {
  auto info = GetErrorInfo(status);
  if (!info) return "";
  auto it = info->metadata().find(key);
  return it == info->metadata().end() ? "" : it->second;
}

// The first field violation of `status`'s BadRequest; empty when it has none.
inline v1::FieldViolation Violation(const absl::Status& status) {
  auto bad_request = GetBadRequest(status);
  if (!bad_request || bad_request->field_violations().empty()) return {};
  return bad_request->field_violations(0);
}

// One-line text form (map entries sorted), for comparing whole messages with a
// readable diff.
inline std::string Dump(const google::protobuf::Message& message) {
  google::protobuf::TextFormat::Printer printer;
  printer.SetSingleLineMode(true);
  std::string out;
  printer.PrintToString(message, &out);
  return out;
}

inline v1::Part TextPart(const std::string& text) {
  v1::Part part;
  part.set_text(text);
  return part;
}

// A durable text event of turn "turn_x".
inline v1::Event TextEvent(const std::string& session_id, uint64_t seq, const std::string& text,
                           uint64_t epoch = 1) {
  v1::Event event;
  event.set_session_id(session_id);
  event.set_seq(seq);
  event.set_epoch(epoch);
  event.set_turn_id("turn_x");
  *event.mutable_time() =
      ToTimestamp(absl::FromUnixSeconds(1'700'000'000 + static_cast<int64_t>(seq)));
  event.mutable_text_delta()->set_text(text);
  return event;
}

class StoreTest : public StoreFixture {
 protected:
  // Calls `method`; the response, or the error with its details.
  template <typename Request, typename Response>
  absl::StatusOr<Response> Call(StubMethod<Request, Response> method, const Request& request) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    Response response;
    grpc::Status status = (stub()->*method)(&context, request, &response);
    if (!status.ok()) return FromGrpcStatus(status);
    return response;
  }

  // ---- Sessions ----

  absl::StatusOr<v1::Session> GetSession(const std::string& session_id,
                                         const std::string& tenant = kTenant) {
    store_pb::GetSessionRequest request;
    request.set_tenant_id(tenant);
    request.set_session_id(session_id);
    auto response = Call(&Stub::GetSession, request);
    if (!response.ok()) return response.status();
    return response->session();
  }

  absl::StatusOr<store_pb::ListSessionsResponse> ListSessions(v1::ListSessionsRequest filters,
                                                              const std::string& tenant = kTenant) {
    store_pb::ListSessionsRequest request;
    request.set_tenant_id(tenant);
    *request.mutable_request() = std::move(filters);
    return Call(&Stub::ListSessions, request);
  }

  absl::StatusOr<store_pb::CloseSessionResponse> CloseSession(const std::string& session_id,
                                                              const std::string& tenant = kTenant) {
    store_pb::CloseSessionRequest request;
    request.set_tenant_id(tenant);
    request.set_session_id(session_id);
    return Call(&Stub::CloseSession, request);
  }

  absl::StatusOr<store_pb::DeleteSessionResponse> DeleteSession(
      const std::string& session_id, const std::string& tenant = kTenant) {
    store_pb::DeleteSessionRequest request;
    request.set_tenant_id(tenant);
    request.set_session_id(session_id);
    return Call(&Stub::DeleteSession, request);
  }

  // ---- Messages ----

  // Appends a system message with one text part.
  absl::StatusOr<store_pb::AppendMessageResponse> AppendMessage(
      const std::string& session_id, const std::string& text,
      const std::string& idempotency_key = "", const std::string& tenant = kTenant) {
    store_pb::AppendMessageRequest request;
    request.set_tenant_id(tenant);
    v1::Message* message = request.mutable_message();
    message->set_session_id(session_id);
    message->set_role(v1::ROLE_SYSTEM);
    *message->add_parts() = TextPart(text);
    message->set_idempotency_key(idempotency_key);
    return Call(&Stub::AppendMessage, request);
  }

  absl::StatusOr<store_pb::ListMessagesResponse> ListMessages(v1::ListMessagesRequest cursor,
                                                              const std::string& tenant = kTenant) {
    store_pb::ListMessagesRequest request;
    request.set_tenant_id(tenant);
    *request.mutable_request() = std::move(cursor);
    return Call(&Stub::ListMessages, request);
  }

  // Every message of the session (up to 1000), oldest first.
  std::vector<v1::Message> AllMessages(const std::string& session_id,
                                       const std::string& tenant = kTenant) {
    v1::ListMessagesRequest cursor;
    cursor.set_session_id(session_id);
    cursor.set_limit(1000);
    auto response = ListMessages(cursor, tenant);
    EXPECT_TRUE(response.ok()) << response.status();
    if (!response.ok()) return {};
    return {response->messages().begin(), response->messages().end()};
  }

  // ---- Turns ----

  static store_pb::EnqueueTurnRequest EnqueueRequest(
      const std::string& session_id, const std::string& text,
      const std::string& idempotency_key = "",
      v1::MultitaskPolicy policy = v1::MULTITASK_POLICY_UNSPECIFIED,
      const std::string& tenant = kTenant) {
    store_pb::EnqueueTurnRequest request;
    request.set_tenant_id(tenant);
    v1::SendMessageRequest* send = request.mutable_request();
    send->set_session_id(session_id);
    *send->add_content() = TextPart(text);
    send->set_idempotency_key(idempotency_key);
    send->set_multitask_policy(policy);
    return request;
  }

  absl::StatusOr<store_pb::EnqueueTurnResponse> Enqueue(
      const std::string& session_id, const std::string& text,
      const std::string& idempotency_key = "",
      v1::MultitaskPolicy policy = v1::MULTITASK_POLICY_UNSPECIFIED,
      const std::string& tenant = kTenant) {
    return Call(&Stub::EnqueueTurn,
                EnqueueRequest(session_id, text, idempotency_key, policy, tenant));
  }

  // Claims the next runnable turn of any tenant (of `session_id` when given).
  absl::StatusOr<store_pb::ClaimNextTurnResponse> Claim(const std::string& owner = kOwner,
                                                        const std::string& session_id = "",
                                                        uint64_t lease_ttl_ms = kLeaseTtlMs) {
    store_pb::ClaimNextTurnRequest request;
    request.set_owner(owner);
    request.set_session_id(session_id);
    request.set_lease_ttl_ms(lease_ttl_ms);
    return Call(&Stub::ClaimNextTurn, request);
  }

  absl::StatusOr<store_pb::HeartbeatTurnResponse> Heartbeat(const std::string& turn_id,
                                                            const std::string& owner,
                                                            uint64_t epoch,
                                                            uint64_t lease_ttl_ms = kLeaseTtlMs,
                                                            const std::string& tenant = kTenant) {
    store_pb::HeartbeatTurnRequest request;
    request.set_tenant_id(tenant);
    request.set_turn_id(turn_id);
    request.set_owner(owner);
    request.set_lease_epoch(epoch);
    request.set_lease_ttl_ms(lease_ttl_ms);
    return Call(&Stub::HeartbeatTurn, request);
  }

  // A SUCCEEDED / STOP completion of `claim` by `owner`, without messages.
  static store_pb::CompleteTurnRequest Completion(const store_pb::ClaimNextTurnResponse& claim,
                                                  const std::string& owner = kOwner) {
    store_pb::CompleteTurnRequest request;
    request.set_tenant_id(claim.session().tenant_id());
    request.set_turn_id(claim.turn().id());
    request.set_owner(owner);
    request.set_lease_epoch(claim.lease_epoch());
    request.set_status(v1::TURN_STATUS_SUCCEEDED);
    request.set_finish_reason(v1::FINISH_REASON_STOP);
    return request;
  }

  absl::StatusOr<store_pb::CompleteTurnResponse> Complete(
      const store_pb::CompleteTurnRequest& request) {
    return Call(&Stub::CompleteTurn, request);
  }

  absl::StatusOr<store_pb::CancelTurnResponse> CancelTurn(const std::string& session_id,
                                                          const std::string& turn_id,
                                                          const std::string& tenant = kTenant) {
    store_pb::CancelTurnRequest request;
    request.set_tenant_id(tenant);
    request.set_session_id(session_id);
    request.set_turn_id(turn_id);
    return Call(&Stub::CancelTurn, request);
  }

  absl::StatusOr<v1::Turn> GetTurn(const std::string& turn_id,
                                   const std::string& tenant = kTenant) {
    store_pb::GetTurnRequest request;
    request.set_tenant_id(tenant);
    request.set_turn_id(turn_id);
    auto response = Call(&Stub::GetTurn, request);
    if (!response.ok()) return response.status();
    return response->turn();
  }

  // Every turn of the session (up to 1000), oldest first.
  std::vector<v1::Turn> AllTurns(const std::string& session_id,
                                 const std::string& tenant = kTenant) {
    store_pb::ListTurnsRequest request;
    request.set_tenant_id(tenant);
    request.set_session_id(session_id);
    request.set_page_size(1000);
    auto response = Call(&Stub::ListTurns, request);
    EXPECT_TRUE(response.ok()) << response.status();
    if (!response.ok()) return {};
    return {response->turns().begin(), response->turns().end()};
  }

  // Waits out a lease of 1000 ms, then reclaims until some turn comes back. Bounded:
  // about 3 s at most.
  absl::StatusOr<store_pb::ReclaimExpiredLeasesResponse> ReclaimAfterExpiry() {
    absl::SleepFor(absl::Milliseconds(1200));
    for (int attempt = 0; attempt < 20; ++attempt) {
      auto reclaimed = Call(&Stub::ReclaimExpiredLeases, store_pb::ReclaimExpiredLeasesRequest());
      if (!reclaimed.ok() || reclaimed->turns_size() > 0) return reclaimed;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return absl::DeadlineExceededError("no lease expired within 3 s");
  }

  // ---- Events ----

  absl::StatusOr<store_pb::AppendEventsResponse> AppendEvents(const std::string& session_id,
                                                              const std::vector<v1::Event>& events,
                                                              const std::string& tenant = kTenant) {
    store_pb::AppendEventsRequest request;
    request.set_tenant_id(tenant);
    request.set_session_id(session_id);
    for (const v1::Event& event : events) *request.add_events() = event;
    return Call(&Stub::AppendEvents, request);
  }

  absl::StatusOr<store_pb::ReadEventsResponse> ReadEvents(const std::string& session_id,
                                                          uint64_t after_seq = 0,
                                                          uint32_t limit = 0,
                                                          const std::string& tenant = kTenant) {
    store_pb::ReadEventsRequest request;
    request.set_tenant_id(tenant);
    request.set_session_id(session_id);
    request.set_after_seq(after_seq);
    request.set_limit(limit);
    return Call(&Stub::ReadEvents, request);
  }

  // ---- API keys ----

  absl::StatusOr<store_pb::CreateApiKeyResponse> CreateApiKey(
      const std::vector<std::string>& scopes, const std::string& name = "ci",
      const std::string& tenant = kTenant) {
    store_pb::CreateApiKeyRequest request;
    request.set_tenant_id(tenant);
    request.set_name(name);
    for (const std::string& scope : scopes) request.add_scopes(scope);
    return Call(&Stub::CreateApiKey, request);
  }
};

}  // namespace parley::store::testing
