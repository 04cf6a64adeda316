// SessionRouter handlers: validate, one store transaction, then signal the schedulers.
#include "session-svc/api/router_service.h"

#include "absl/strings/str_cat.h"
#include "common/events/event_log_reader.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "telemetry/grpc_telemetry.h"

namespace parley::session {
namespace {

namespace store_pb = ::parley::store::v1;

// Fields every call needs; the store validates the rest (and names the field).
absl::Status CheckRequired(absl::string_view value, absl::string_view field) {
  if (value.empty()) return InvalidArgumentError(field, "is required");
  return absl::OkStatus();
}

}  // namespace

RouterService::RouterService(StoreStub& store, sandbox::SandboxReplicas* sandbox, Signals& signals,
                             Scheduler& scheduler, RedisEndpoint redis,
                             std::string redis_key_prefix, std::string owner,
                             const telemetry::Logger& logger)
    : store_(store),
      sandbox_(sandbox),
      signals_(signals),
      scheduler_(scheduler),
      redis_(std::move(redis)),
      key_prefix_(redis_key_prefix),
      keys_(std::move(redis_key_prefix)),
      owner_(std::move(owner)),
      logger_(logger) {}

absl::Status RouterService::PublishClosed(const v1::Session& session, uint64_t lease_epoch) {
  absl::StatusOr<std::unique_ptr<RedisConnection>> redis =
      RedisConnection::Connect(redis_, absl::Seconds(2));
  if (!redis.ok()) return redis.status();
  EventPublisher publisher(**redis, {.key_prefix = key_prefix_}, RealClock::Get());
  // With its lease hash gone (lease_epoch > 1), Redis lost the session's stream and the
  // seq after the durable one may already have been used: STATE_LOST, nothing written.
  // The next writer recovers the epoch; a closed session has none.
  absl::StatusOr<EventPublisher::Lease> lease =
      publisher.AcquireLease(session.id(), owner_, lease_epoch,
                             {.floor_seq = session.last_seq(), .expect_existing = lease_epoch > 1});
  if (!lease.ok()) return lease.status();
  v1::Event closed;
  closed.set_session_id(session.id());
  closed.set_seq(lease->last_seq + 1);
  closed.set_epoch(session.epoch());
  *closed.mutable_time() = ToTimestamp(absl::Now());
  closed.mutable_session_status_changed()->set_old_status(v1::SESSION_STATUS_ACTIVE);
  closed.mutable_session_status_changed()->set_new_status(v1::SESSION_STATUS_CLOSED);
  return publisher.Publish(closed, lease_epoch);
}

void RouterService::SignalCancel(const std::string& turn_id, const std::string& reason) {
  scheduler_.Cancel(turn_id, reason);  // It may run right here.
  if (absl::Status status = signals_.PublishCancel(turn_id, reason); !status.ok()) {
    // The owner still learns it from its next heartbeat.
    logger_.Warn("cancel signal not published",
                 {{"turn_id", turn_id}, {"error", status.ToString()}});
  }
}

grpc::Status RouterService::SubmitMessage(grpc::ServerContext* context,
                                          const router::v1::SubmitMessageRequest* request,
                                          v1::SendMessageResponse* response) {
  telemetry::HandlerTraceScope trace(context);
  absl::Status valid = CheckRequired(request->tenant_id(), "tenant_id");
  if (valid.ok()) valid = CheckRequired(request->request().session_id(), "request.session_id");
  if (!valid.ok()) return ToGrpcStatus(valid);

  store_pb::EnqueueTurnRequest enqueue;
  enqueue.set_tenant_id(request->tenant_id());
  *enqueue.mutable_request() = request->request();
  // With a free slot here the store may claim the turn for this replica as it enqueues
  // it: the turn then starts without a claim round trip or a wake-up.
  const std::optional<store_pb::ClaimOnEnqueue> claim = scheduler_.ReserveSlot();
  if (claim) *enqueue.mutable_claim() = *claim;
  // The turn runs later, on any replica: its spans continue this call's trace.
  if (trace.span()) enqueue.set_traceparent(trace.span()->ToTraceparent());
  store_pb::EnqueueTurnResponse enqueued;
  absl::Status status =
      StoreCall(store_, &StoreStub::EnqueueTurn, enqueue, &enqueued, {.attempts = 3});
  const bool claimed = status.ok() && enqueued.claim().has_turn();
  if (claim)
    scheduler_.RunReserved(status.ok() ? *enqueued.mutable_claim()
                                       : store_pb::ClaimNextTurnResponse());
  if (!status.ok()) return ToGrpcStatus(status);

  if (!enqueued.interrupted_turn_id().empty() && !enqueued.duplicate()) {
    SignalCancel(enqueued.interrupted_turn_id(), "INTERRUPTED");
  }
  if (!claimed) {
    scheduler_.Wake();
    if (absl::Status wake = signals_.PublishWake(request->request().session_id()); !wake.ok()) {
      logger_.Warn("wake not published; replicas find the turn at their next poll",
                   {{"error", wake.ToString()}});
    }
  }
  *response->mutable_message() = std::move(*enqueued.mutable_message());
  *response->mutable_turn() = std::move(*enqueued.mutable_turn());
  response->set_duplicate(enqueued.duplicate());
  response->set_interrupted_turn_id(enqueued.interrupted_turn_id());
  return grpc::Status::OK;
}

grpc::Status RouterService::CancelTurn(grpc::ServerContext* context,
                                       const router::v1::CancelTurnRequest* request,
                                       v1::CancelTurnResponse* response) {
  telemetry::HandlerTraceScope trace(context);
  absl::Status valid = CheckRequired(request->tenant_id(), "tenant_id");
  if (valid.ok()) valid = CheckRequired(request->request().session_id(), "request.session_id");
  if (!valid.ok()) return ToGrpcStatus(valid);

  store_pb::CancelTurnRequest cancel;
  cancel.set_tenant_id(request->tenant_id());
  cancel.set_session_id(request->request().session_id());
  cancel.set_turn_id(request->request().turn_id());
  store_pb::CancelTurnResponse cancelled;
  absl::Status status =
      StoreCall(store_, &StoreStub::CancelTurn, cancel, &cancelled, {.attempts = 3});
  if (!status.ok()) return ToGrpcStatus(status);
  if (cancelled.was_running()) SignalCancel(cancelled.turn().id(), "CANCELLED_BY_USER");
  *response->mutable_turn() = std::move(*cancelled.mutable_turn());
  return grpc::Status::OK;
}

void RouterService::ReleaseSandboxes(const std::string& tenant_id, const std::string& session_id) {
  if (sandbox_ == nullptr) return;
  sandbox::v1::ListSandboxesRequest list;
  list.set_tenant_id(tenant_id);
  list.set_session_id(session_id);
  sandbox::v1::ListSandboxesResponse sandboxes;
  grpc::ClientContext list_context;
  list_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  // Any replica: the one holding the session's sandbox answers (sandbox-svc forwards).
  grpc::Status listed = sandbox_->Any().ListSandboxes(&list_context, list, &sandboxes);
  if (!listed.ok()) {
    // The sandbox's own idle timeout and TTL still reap it.
    logger_.Warn("could not list the closed session's sandboxes",
                 {{"session_id", session_id}, {"error", listed.error_message()}});
    return;
  }
  for (const sandbox::v1::Sandbox& box : sandboxes.sandboxes()) {
    sandbox::v1::DestroySandboxRequest destroy;
    destroy.set_tenant_id(tenant_id);
    destroy.set_sandbox_id(box.id());
    sandbox::v1::DestroySandboxResponse destroyed;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    absl::StatusOr<sandbox::SandboxReplicas::Stub*> owner = sandbox_->ForSandbox(box.id());
    grpc::Status status = owner.ok() ? (*owner)->DestroySandbox(&context, destroy, &destroyed)
                                     : ToGrpcStatus(owner.status());
    if (!status.ok()) {
      logger_.Warn("could not destroy the closed session's sandbox",
                   {{"session_id", session_id}, {"error", status.error_message()}});
    }
  }
}

grpc::Status RouterService::CloseSession(grpc::ServerContext* context,
                                         const router::v1::CloseSessionRequest* request,
                                         v1::CloseSessionResponse* response) {
  telemetry::HandlerTraceScope trace(context);
  absl::Status valid = CheckRequired(request->tenant_id(), "tenant_id");
  if (valid.ok()) valid = CheckRequired(request->request().session_id(), "request.session_id");
  if (!valid.ok()) return ToGrpcStatus(valid);

  store_pb::CloseSessionRequest close;
  close.set_tenant_id(request->tenant_id());
  close.set_session_id(request->request().session_id());
  store_pb::CloseSessionResponse closed;
  absl::Status status =
      StoreCall(store_, &StoreStub::CloseSession, close, &closed, {.attempts = 3});
  if (!status.ok()) return ToGrpcStatus(status);
  if (!closed.running_turn_id().empty()) SignalCancel(closed.running_turn_id(), "SESSION_CLOSED");
  if (closed.close_lease_epoch() > 0) {
    if (absl::Status published = PublishClosed(closed.session(), closed.close_lease_epoch());
        !published.ok()) {
      logger_.Warn("SessionStatusChanged not published",
                   {{"session_id", closed.session().id()}, {"error", published.ToString()}});
    }
  }
  if (closed.changed()) ReleaseSandboxes(request->tenant_id(), request->request().session_id());
  *response->mutable_session() = std::move(*closed.mutable_session());
  return grpc::Status::OK;
}

grpc::Status RouterService::GetSessionStatus(grpc::ServerContext* context,
                                             const router::v1::GetSessionStatusRequest* request,
                                             router::v1::GetSessionStatusResponse* response) {
  telemetry::HandlerTraceScope trace(context);
  absl::Status valid = CheckRequired(request->tenant_id(), "tenant_id");
  if (valid.ok()) valid = CheckRequired(request->session_id(), "session_id");
  if (!valid.ok()) return ToGrpcStatus(valid);

  // Redis first, then the store: a turn that starts in between shows as running with
  // a stream position no newer than its start, never the other way round.
  const EventLogReader log(keys_);
  absl::StatusOr<RedisReply> lease_seq =
      signals_.Command(log.LastSeqCommand(request->session_id()));
  absl::StatusOr<RedisReply> tail =
      signals_.Command(log.BackwardCommand(request->session_id(), std::nullopt, 1));

  store_pb::GetSessionRequest get;
  get.set_tenant_id(request->tenant_id());
  get.set_session_id(request->session_id());
  store_pb::GetSessionResponse session;
  absl::Status status = StoreCall(store_, &StoreStub::GetSession, get, &session, {.attempts = 3});
  if (!status.ok()) return ToGrpcStatus(status);

  const v1::Session& s = session.session();
  response->set_session_id(s.id());
  response->set_status(s.status());
  response->set_running_turn_id(s.current_turn_id());
  response->set_lease_owner(session.lease_owner());
  response->set_lease_epoch(session.lease_epoch());
  if (session.has_lease_expiry()) *response->mutable_lease_expiry() = session.lease_expiry();
  response->set_queued_turns(session.queued_turns());
  response->set_durable_last_seq(s.last_seq());
  response->set_epoch(s.epoch());
  const uint64_t published = lease_seq.ok() ? EventLogReader::LastSeqOf(lease_seq->get()) : 0;
  response->set_last_seq(std::max<uint64_t>(published, s.last_seq()));
  // A retry still in effect is the newest entry of the stream: no event followed it.
  const std::vector<EventLogEntry> newest =
      tail.ok() ? EventLogReader::EntriesOf(tail->get()) : std::vector<EventLogEntry>();
  if (newest.size() == 1 && !s.current_turn_id().empty()) {
    absl::StatusOr<v1::Event> event = newest[0].Parse(s.id());
    if (event.ok() && event->has_retry_scheduled() && event->turn_id() == s.current_turn_id()) {
      *response->mutable_retry() = event->retry_scheduled();
    }
  }
  return grpc::Status::OK;
}

}  // namespace parley::session
