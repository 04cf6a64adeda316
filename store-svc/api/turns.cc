// Messages and the turn queue.
//
// Every write here first locks the session row (LockSession). That one lock orders
// messages (positions come from sessions.message_count), keeps turns FIFO (positions
// from sessions.turn_count), and makes "at most one RUNNING turn per session" a plain
// check: the session row records `running_turn_id` and `queued_turns`. Lock order is
// always session, then turn, so handlers cannot deadlock each other.
//
// Fencing: a claim (claims.cc) gives the turn `lease_epoch = sessions.lease_epoch + 1`;
// heartbeat, complete and release match on (owner, epoch) and report LEASE_LOST otherwise.
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/ids.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "store-svc/api/rows.h"
#include "store-svc/api/store_service.h"
#include "telemetry/trace_context.h"

namespace parley::store {

using grpc::ServerContext;
using grpc::Status;
namespace {

constexpr int kQueued = ::parley::v1::TURN_STATUS_QUEUED;
constexpr int kRunning = ::parley::v1::TURN_STATUS_RUNNING;

absl::Status SessionClosed() {
  absl::Status status = absl::FailedPreconditionError("session is closed");
  SetErrorInfo(status, "SESSION_CLOSED");
  return status;
}

absl::Status LeaseLost(int64_t current_epoch) {
  absl::Status status =
      absl::FailedPreconditionError("lease lost: another owner or a newer epoch holds the turn");
  SetErrorInfo(status, "LEASE_LOST", {{"lease_epoch", absl::StrCat(current_epoch)}});
  return status;
}

bool IsTerminal(int status) {
  return status == ::parley::v1::TURN_STATUS_SUCCEEDED ||
         status == ::parley::v1::TURN_STATUS_FAILED ||
         status == ::parley::v1::TURN_STATUS_CANCELLED;
}

absl::Status CheckPrintableAscii(const std::string& key, const char* field) {
  for (unsigned char c : key) {
    if (c < 0x20 || c > 0x7e) return InvalidArgumentError(field, "must be printable ASCII");
  }
  return absl::OkStatus();
}

::parley::v1::Message SelectMessageByKey(pqxx::work& tx, const std::string& session_id,
                                         const std::string& key, bool* found) {
  pqxx::result row =
      Exec(tx,
           absl::StrCat("SELECT ", kMessageColumns,
                        " FROM messages WHERE session_id = $1 AND idempotency_key = $2"),
           session_id, key);
  *found = !row.empty();
  return row.empty() ? ::parley::v1::Message() : MessageFromRow(row[0]);
}

// Inserts a message at the session's next position; the caller holds the session lock
// and bumps sessions.message_count.
::parley::v1::Message InsertMessage(pqxx::work& tx, const std::string& tenant_id,
                                    const ::parley::v1::Message& message, int64_t position) {
  ::parley::v1::Message parts;
  *parts.mutable_parts() = message.parts();
  pqxx::result row =
      Exec(tx,
           absl::StrCat("INSERT INTO messages (session_id, position, id, tenant_id, turn_id, role, "
                        "parts, idempotency_key) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, "
                        "NULLIF($8, '')) RETURNING ",
                        kMessageColumns),
           message.session_id(), position, message.id(), tenant_id, message.turn_id(),
           static_cast<int>(message.role()), ProtoToJson(parts), message.idempotency_key());
  return MessageFromRow(row[0]);
}

// A new queued turn with its user message, the session's counters updated to match: one
// statement instead of three round trips. The turn takes the session's agent
// configuration as it is now (the caller holds the session lock, so an UpdateSession
// from now on changes only later turns); `queued_turns` is the session's new count.
struct EnqueuedTurn {
  ::parley::v1::Message message;
  ::parley::v1::Turn turn;
};
EnqueuedTurn InsertQueuedTurn(pqxx::work& tx, const std::string& tenant_id,
                              const ::parley::v1::Message& message, int64_t message_position,
                              int64_t turn_position, int64_t queued_turns,
                              const std::string& traceparent) {
  ::parley::v1::Message parts;
  *parts.mutable_parts() = message.parts();
  // Data-modifying CTEs all run, whether or not the final SELECT reads them; they share
  // one snapshot, so the turn's agent_config is the session row as locked.
  static const std::string* const sql = new std::string(absl::StrCat(
      "WITH message AS (INSERT INTO messages (session_id, position, id, tenant_id, turn_id, "
      "  role, parts, idempotency_key) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, "
      "  NULLIF($8, '')) RETURNING ",
      kMessageColumns,
      "), turn AS (INSERT INTO turns (id, tenant_id, session_id, position, status, "
      "  user_message_id, steered_position, agent_config, traceparent) "
      "  VALUES ($5, $4, $1, $9, $10, $3, $2, (SELECT agent_config FROM sessions WHERE id = $1), "
      "  $11) RETURNING ",
      kTurnColumns,
      "), counted AS (UPDATE sessions SET message_count = message_count + 1, "
      "  turn_count = turn_count + 1, queued_turns = $12, "
      "  waiting_since = coalesce(waiting_since, now()) WHERE id = $1) "
      "SELECT message.*, turn.* FROM message, turn"));
  pqxx::result row =
      Exec(tx, *sql, message.session_id(), message_position, message.id(), tenant_id,
           message.turn_id(), static_cast<int>(message.role()), ProtoToJson(parts),
           message.idempotency_key(), turn_position, kQueued, traceparent, queued_turns);
  return {MessageFromRow(row[0]), TurnFromRow(row[0], kMessageColumnCount)};
}

// The assistant and tool messages a lease holder commits (CompleteTurn, CommitTurnStep).
absl::Status CheckTurnMessages(
    const google::protobuf::RepeatedPtrField<::parley::v1::Message>& messages,
    const StoreLimits& limits) {
  for (int i = 0; i < messages.size(); ++i) {
    const ::parley::v1::Message& m = messages[i];
    if (m.role() != ::parley::v1::ROLE_ASSISTANT && m.role() != ::parley::v1::ROLE_TOOL) {
      return InvalidArgumentError(absl::StrCat("messages[", i, "].role"),
                                  "must be ASSISTANT or TOOL");
    }
    if (absl::Status parts = CheckParts(m.parts(), "messages.parts", limits); !parts.ok()) {
      return parts;
    }
  }
  return absl::OkStatus();
}

// Ids are fixed before the transaction, so a retried commit stores the same rows.
std::vector<::parley::v1::Message> PrepareTurnMessages(
    const google::protobuf::RepeatedPtrField<::parley::v1::Message>& messages,
    const std::string& turn_id) {
  std::vector<::parley::v1::Message> prepared(messages.begin(), messages.end());
  for (::parley::v1::Message& m : prepared) {
    if (m.id().empty()) m.set_id(NewId("msg"));
    m.set_turn_id(turn_id);
    m.clear_idempotency_key();
  }
  return prepared;
}

// Steering messages of `turn_id` (user messages that joined it after it started) that it
// has not taken yet. steered_position starts at the turn's own user message, so only
// the messages after it are scanned, not the session's whole history.
// $1 session  $2 turn  $3 ROLE_USER
constexpr char kUntakenSteeringWhere[] =
    " FROM messages m JOIN turns t ON t.id = m.turn_id WHERE m.session_id = $1 AND "
    "m.turn_id = $2 AND m.role = $3 AND m.id <> t.user_message_id AND "
    "m.position > t.steered_position";

// Claims the turn just enqueued (its session idle, locked by the caller) for
// `claim.owner()` as ClaimNextTurn's statement would — RUNNING with a lease under the
// session's next fencing epoch, recorded on the session — unless another session has a
// turn waiting for a worker (the new turn must not jump ahead of it). One statement.
void ClaimOnEnqueue(pqxx::work& tx, const store_pb::ClaimOnEnqueue& claim,
                    const std::string& turn_id, const std::string& session_id,
                    store_pb::EnqueueTurnResponse* out) {
  pqxx::result rows = Exec(
      tx,
      absl::StrCat(
          "WITH claimed AS (UPDATE turns SET status = $3, lease_owner = $4, "
          "  lease_epoch = (SELECT lease_epoch + 1 FROM sessions WHERE id = $2), "
          "  lease_expiry = clock_timestamp() + $5 * interval '1 millisecond', "
          "  start_time = coalesce(start_time, clock_timestamp()), attempt = attempt + 1, "
          "  recovery = false "
          "  WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM sessions WHERE queued_turns > 0 "
          "    AND running_turn_id IS NULL AND id <> $2) "
          "  RETURNING ",
          kClaimedTurnColumns,
          "), bumped AS (UPDATE sessions SET running_turn_id = $1, lease_epoch = c.claim_epoch, "
          "  queued_turns = queued_turns - 1, waiting_since = NULL "
          "  FROM (SELECT lease_epoch AS claim_epoch FROM claimed) c "
          "  WHERE sessions.id = $2 RETURNING ",
          kSessionColumns, ") SELECT claimed.*, bumped.* FROM claimed, bumped"),
      turn_id, session_id, kRunning, claim.owner(), static_cast<int64_t>(claim.lease_ttl_ms()));
  if (rows.empty()) return;  // Another session waits: the claimers take it in order.
  store_pb::ClaimNextTurnResponse& claimed = *out->mutable_claim();
  ClaimedTurnFromRow(rows[0], 0, &claimed);
  *claimed.mutable_session() = SessionFromRow(rows[0], kClaimedTurnColumnCount);
  *claimed.mutable_user_message() = out->message();
  *out->mutable_turn() = claimed.turn();
}

// A retry of an enqueue whose turn was claimed for `owner` and has published nothing
// yet (its first answer was lost, or a concurrent retry raced it): the same claim again,
// so that the worker runs it now rather than after its lease expires. The worker runs a
// turn it already runs only once (Scheduler::RunReserved), so handing the claim out
// twice to one owner is safe; another owner never gets it.
void RepeatClaim(pqxx::work& tx, const std::string& owner, const std::string& turn_id,
                 const std::string& session_id, store_pb::EnqueueTurnResponse* out) {
  pqxx::result turn =
      Exec(tx,
           absl::StrCat("SELECT ", kClaimedTurnColumns,
                        " FROM turns WHERE id = $1 AND session_id = $2 AND status = $3 AND "
                        "lease_owner = $4 AND first_seq = 0 AND NOT recovery"),
           turn_id, session_id, kRunning, owner);
  if (turn.empty()) return;
  pqxx::result session = Exec(
      tx, absl::StrCat("SELECT ", kSessionColumns, " FROM sessions WHERE id = $1"), session_id);
  store_pb::ClaimNextTurnResponse& claimed = *out->mutable_claim();
  ClaimedTurnFromRow(turn[0], 0, &claimed);
  *claimed.mutable_session() = SessionFromRow(session[0]);
  *claimed.mutable_user_message() = out->message();
}

// Moves messages `ids` (in that order) to the end of the session's history, after
// `last_position`; returns the new last position. A steering message takes its place
// where the model saw it, after the step it interrupted. The caller holds the session
// lock and sets sessions.message_count to the result. (Positions may have gaps: every
// reader orders by them, none counts them.)
int64_t MoveToEnd(pqxx::work& tx, const std::string& session_id,
                  const std::vector<std::string>& ids, int64_t last_position) {
  for (const std::string& id : ids) {
    Exec(tx, "UPDATE messages SET position = $3 WHERE session_id = $1 AND id = $2", session_id, id,
         ++last_position);
  }
  return last_position;
}

// Moves the steering messages a completing turn never took into a new queued turn, after
// the turn's own messages, so they are answered. Returns the new last message position;
// `*turn_id` gets the new turn's id ("" when there were none). The caller holds the
// session lock and clears running_turn_id afterwards.
int64_t RequeueUntakenSteering(pqxx::work& tx, const std::string& tenant_id,
                               const std::string& session_id, const std::string& turn_id,
                               int64_t turn_position, int64_t last_position,
                               std::string* requeued) {
  pqxx::result untaken =
      Exec(tx, absl::StrCat("SELECT m.id", kUntakenSteeringWhere, " ORDER BY m.position"),
           session_id, turn_id, static_cast<int>(::parley::v1::ROLE_USER));
  if (untaken.empty()) return last_position;
  std::vector<std::string> ids;
  for (const auto& row : untaken) ids.push_back(row[0].as<std::string>());
  *requeued = NewId("turn");
  Exec(tx,
       "INSERT INTO turns (id, tenant_id, session_id, position, status, user_message_id, "
       "steered_position, agent_config) VALUES ($1, $2, $3, $4, $5, $6, $7, "
       "(SELECT agent_config FROM sessions WHERE id = $3))",
       *requeued, tenant_id, session_id, turn_position, kQueued, ids[0], last_position + 1);
  for (const std::string& id : ids) {
    Exec(tx, "UPDATE messages SET turn_id = $3 WHERE session_id = $1 AND id = $2", session_id, id,
         *requeued);
  }
  Exec(tx,
       "UPDATE sessions SET turn_count = turn_count + 1, queued_turns = queued_turns + 1 "
       "WHERE id = $1",
       session_id);
  return MoveToEnd(tx, session_id, ids, last_position);
}

// A turn locked the way every lease-holder's write takes it: its session first (the
// lock order of every session write), then the turn row.
struct LockedTurn {
  std::string session_id;
  LockedSession session;
  int status = 0;
  bool held_by_caller = false;  // Leased to the caller's owner at the caller's epoch.
  int64_t committed_steps = 0;
};

absl::StatusOr<LockedTurn> LockTurn(pqxx::work& tx, const std::string& tenant_id,
                                    const std::string& turn_id, const std::string& owner,
                                    uint64_t lease_epoch) {
  pqxx::result found =
      Exec(tx, "SELECT session_id FROM turns WHERE tenant_id = $1 AND id = $2", tenant_id, turn_id);
  if (found.empty()) return absl::NotFoundError("turn not found");
  LockedTurn locked;
  locked.session_id = found[0][0].as<std::string>();
  locked.session = LockSession(tx, tenant_id, locked.session_id);
  pqxx::result turn = Exec(tx,
                           "SELECT status, lease_owner, lease_epoch, committed_steps FROM turns "
                           "WHERE id = $1 FOR UPDATE",
                           turn_id);
  locked.status = turn[0][0].as<int>();
  locked.held_by_caller = !turn[0][1].is_null() && turn[0][1].as<std::string>() == owner &&
                          turn[0][2].as<int64_t>() == static_cast<int64_t>(lease_epoch);
  locked.committed_steps = turn[0][3].as<int64_t>();
  return locked;
}

}  // namespace

Status StoreServiceImpl::AppendMessage(ServerContext*,
                                       const store_pb::AppendMessageRequest* request,
                                       store_pb::AppendMessageResponse* response) {
  ::parley::v1::Message message = request->message();
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(message.session_id(), "message.session_id", limits_);
  if (valid.ok() && message.role() == ::parley::v1::ROLE_UNSPECIFIED) {
    valid = InvalidArgumentError("message.role", "is required");
  }
  if (valid.ok()) valid = CheckParts(message.parts(), "message.parts", limits_);
  if (valid.ok()) {
    valid = CheckIdempotencyKey(message.idempotency_key(), "message.idempotency_key", limits_);
  }
  if (valid.ok()) valid = CheckPrintableAscii(message.idempotency_key(), "message.idempotency_key");
  if (valid.ok()) valid = CheckId(message.turn_id(), "message.turn_id", limits_, false);
  if (!valid.ok()) return ToGrpcStatus(valid);
  if (message.id().empty()) message.set_id(NewId("msg"));

  auto result = pool_.Transact<store_pb::AppendMessageResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::AppendMessageResponse> {
        LockedSession session = LockSession(tx, request->tenant_id(), message.session_id());
        store_pb::AppendMessageResponse out;
        if (!message.idempotency_key().empty()) {
          bool found = false;
          ::parley::v1::Message existing =
              SelectMessageByKey(tx, message.session_id(), message.idempotency_key(), &found);
          if (found) {
            *out.mutable_message() = existing;
            out.set_duplicate(true);
            return out;
          }
        }
        if (session.status == ::parley::v1::SESSION_STATUS_CLOSED) return SessionClosed();
        *out.mutable_message() =
            InsertMessage(tx, request->tenant_id(), message, session.message_count + 1);
        Exec(tx, "UPDATE sessions SET message_count = message_count + 1 WHERE id = $1",
             message.session_id());
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::ListMessages(ServerContext*, const store_pb::ListMessagesRequest* request,
                                      store_pb::ListMessagesResponse* response) {
  const ::parley::v1::ListMessagesRequest& r = request->request();
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(r.session_id(), "session_id", limits_);
  if (valid.ok()) valid = CheckPageSize(r.limit(), "limit", limits_.max_page_size);
  if (!valid.ok()) return ToGrpcStatus(valid);
  const int64_t limit = r.limit() == 0 ? limits_.default_page_size : r.limit();

  // One statement per page: messages carry tenant_id, so tenancy needs no join, and the
  // cursor's position is a subquery. Only an empty page pays for finding out why (no
  // such session, an unknown cursor, or simply nothing more).
  std::string cursor;
  std::string where = "session_id = $1 AND tenant_id = $2";
  bool backwards = false;
  switch (r.position_case()) {
    case ::parley::v1::ListMessagesRequest::kAfterMessageId:
      cursor = r.after_message_id();
      where += " AND position > (SELECT position FROM messages WHERE session_id = $1 AND id = $4)";
      break;
    case ::parley::v1::ListMessagesRequest::kBeforeMessageId:
      cursor = r.before_message_id();
      backwards = true;
      where += " AND position < (SELECT position FROM messages WHERE session_id = $1 AND id = $4)";
      break;
    case ::parley::v1::ListMessagesRequest::kLatest:
      backwards = r.latest();
      break;
    case ::parley::v1::ListMessagesRequest::POSITION_NOT_SET:
      break;
  }
  const std::string sql = absl::StrCat("SELECT ", kMessageColumns, " FROM messages WHERE ", where,
                                       " ORDER BY position", backwards ? " DESC" : "", " LIMIT $3");
  auto result = pool_.Autocommit<store_pb::ListMessagesResponse>(
      [&](pqxx::nontransaction& tx) -> absl::StatusOr<store_pb::ListMessagesResponse> {
        pqxx::result rows =
            cursor.empty() ? Exec(tx, sql, r.session_id(), request->tenant_id(), limit + 1)
                           : Exec(tx, sql, r.session_id(), request->tenant_id(), limit + 1, cursor);
        if (rows.empty()) {
          if (Exec(tx, "SELECT 1 FROM sessions WHERE tenant_id = $1 AND id = $2",
                   request->tenant_id(), r.session_id())
                  .empty()) {
            return absl::NotFoundError("session not found");
          }
          if (!cursor.empty() &&
              Exec(tx, "SELECT 1 FROM messages WHERE session_id = $1 AND id = $2", r.session_id(),
                   cursor)
                  .empty()) {
            return absl::NotFoundError("cursor message not found");
          }
        }
        // Rows come in the direction read (newest first when backwards); the page keeps
        // as many as its byte budget holds, then reads in chronological order.
        store_pb::ListMessagesResponse out;
        PageBudget budget(limits_);
        for (int64_t i = 0; i < std::min<int64_t>(limit, rows.size()); ++i) {
          ::parley::v1::Message message = MessageFromRow(rows[i]);
          if (!budget.Take(message.ByteSizeLong())) break;
          *out.add_messages() = std::move(message);
        }
        auto* page = out.mutable_messages();
        if (backwards) std::reverse(page->pointer_begin(), page->pointer_end());
        out.set_has_more(static_cast<int64_t>(rows.size()) > out.messages_size());
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::EnqueueTurn(ServerContext*, const store_pb::EnqueueTurnRequest* request,
                                     store_pb::EnqueueTurnResponse* response) {
  const ::parley::v1::SendMessageRequest& r = request->request();
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(r.session_id(), "session_id", limits_);
  if (valid.ok()) valid = CheckParts(r.content(), "content", limits_);
  for (int i = 0; valid.ok() && i < r.content_size(); ++i) {
    auto kind = r.content(i).kind_case();
    if (kind != ::parley::v1::Part::kText && kind != ::parley::v1::Part::kImage &&
        kind != ::parley::v1::Part::kFile) {
      valid = InvalidArgumentError(absl::StrCat("content[", i, "]"),
                                   "users may send text, image or file parts only");
    }
  }
  if (valid.ok()) valid = CheckIdempotencyKey(r.idempotency_key(), "idempotency_key", limits_);
  if (valid.ok()) valid = CheckPrintableAscii(r.idempotency_key(), "idempotency_key");
  if (valid.ok() && !::parley::v1::MultitaskPolicy_IsValid(r.multitask_policy())) {
    valid = InvalidArgumentError("multitask_policy", "is not a known policy");
  }
  const bool claim_for_worker = !request->claim().owner().empty();
  if (valid.ok() && claim_for_worker) {
    valid = CheckId(request->claim().owner(), "claim.owner", limits_);
    if (valid.ok()) valid = CheckLeaseTtl(request->claim().lease_ttl_ms(), limits_);
  }
  if (valid.ok() && !request->traceparent().empty() &&
      (request->traceparent().size() > 256 ||
       !telemetry::TraceContext::Parse(request->traceparent()).has_value())) {
    valid = InvalidArgumentError("traceparent", "is not a W3C traceparent");
  }
  if (!valid.ok()) return ToGrpcStatus(valid);

  ::parley::v1::Message message;
  message.set_id(NewId("msg"));
  message.set_session_id(r.session_id());
  message.set_role(::parley::v1::ROLE_USER);
  *message.mutable_parts() = r.content();
  message.set_idempotency_key(r.idempotency_key());
  const std::string turn_id = NewId("turn");
  message.set_turn_id(turn_id);

  auto result = pool_.Transact<store_pb::EnqueueTurnResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::EnqueueTurnResponse> {
        LockedSession session = LockSession(tx, request->tenant_id(), r.session_id());
        store_pb::EnqueueTurnResponse out;
        if (!r.idempotency_key().empty()) {
          bool found = false;
          ::parley::v1::Message existing =
              SelectMessageByKey(tx, r.session_id(), r.idempotency_key(), &found);
          if (found) {
            *out.mutable_message() = existing;
            *out.mutable_turn() = SelectTurn(tx, request->tenant_id(), existing.turn_id());
            out.set_duplicate(true);
            if (claim_for_worker) {
              RepeatClaim(tx, request->claim().owner(), existing.turn_id(), r.session_id(), &out);
            }
            return out;
          }
        }
        if (session.status == ::parley::v1::SESSION_STATUS_CLOSED) return SessionClosed();
        int policy = r.multitask_policy() != ::parley::v1::MULTITASK_POLICY_UNSPECIFIED
                         ? r.multitask_policy()
                         : session.multitask_policy;
        const bool busy = !session.running_turn_id.empty() || session.queued_turns > 0;
        if (policy == ::parley::v1::MULTITASK_POLICY_REJECT && busy) {
          absl::Status rejected =
              absl::FailedPreconditionError("a turn is already queued or running");
          SetErrorInfo(rejected, "SESSION_BUSY", {{"turn_id", session.running_turn_id}});
          return rejected;
        }
        int64_t queued = session.queued_turns;
        if (policy == ::parley::v1::MULTITASK_POLICY_INTERRUPT && busy) {
          // The new message supersedes everything before it: queued turns are cancelled,
          // the running one is asked to stop (its owner keeps its partial output).
          pqxx::result cancelled =
              Exec(tx,
                   "UPDATE turns SET status = $2, finish_reason = $3, end_time = now(), "
                   "error = $5::jsonb WHERE session_id = $1 AND status = $4 RETURNING id, position",
                   r.session_id(), static_cast<int>(::parley::v1::TURN_STATUS_CANCELLED),
                   static_cast<int>(::parley::v1::FINISH_REASON_CANCELLED), kQueued,
                   QueuedCancelErrorJson("INTERRUPTED"));
          queued = 0;
          if (session.running_turn_id.empty() && !cancelled.empty()) {
            // No turn was running: name the oldest queued turn that was cancelled.
            auto oldest = cancelled.begin();
            for (auto row = cancelled.begin(); row != cancelled.end(); ++row) {
              if (row[1].as<int64_t>() < oldest[1].as<int64_t>()) oldest = row;
            }
            out.set_interrupted_turn_id(oldest[0].as<std::string>());
          }
          if (!session.running_turn_id.empty()) {
            Exec(tx, "UPDATE turns SET cancel_requested = true WHERE id = $1",
                 session.running_turn_id);
            out.set_interrupted_turn_id(session.running_turn_id);
          }
        }
        if (policy == ::parley::v1::MULTITASK_POLICY_STEER && !session.running_turn_id.empty()) {
          // The message joins the running turn, which takes it at its next step boundary
          // (TakeSteeringMessages) or leaves it to start a turn of its own (CompleteTurn).
          ::parley::v1::Message steering = message;
          steering.set_turn_id(session.running_turn_id);
          *out.mutable_message() =
              InsertMessage(tx, request->tenant_id(), steering, session.message_count + 1);
          *out.mutable_turn() = SelectTurn(tx, request->tenant_id(), session.running_turn_id);
          Exec(tx, "UPDATE sessions SET message_count = message_count + 1 WHERE id = $1",
               r.session_id());
          return out;
        }
        EnqueuedTurn enqueued =
            InsertQueuedTurn(tx, request->tenant_id(), message, session.message_count + 1,
                             session.turn_count + 1, queued + 1, request->traceparent());
        *out.mutable_message() = std::move(enqueued.message);
        *out.mutable_turn() = std::move(enqueued.turn);
        if (claim_for_worker && queued == 0 && session.running_turn_id.empty()) {
          ClaimOnEnqueue(tx, request->claim(), turn_id, r.session_id(), &out);
        }
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::HeartbeatTurn(ServerContext*,
                                       const store_pb::HeartbeatTurnRequest* request,
                                       store_pb::HeartbeatTurnResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->turn_id(), "turn_id", limits_);
  if (valid.ok()) valid = CheckId(request->owner(), "owner", limits_);
  if (valid.ok()) valid = CheckLeaseTtl(request->lease_ttl_ms(), limits_);
  if (!valid.ok()) return ToGrpcStatus(valid);
  auto result = pool_.Transact<store_pb::HeartbeatTurnResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::HeartbeatTurnResponse> {
        pqxx::result row =
            Exec(tx,
                 "UPDATE turns SET lease_expiry = now() + $5 * interval '1 millisecond', "
                 "first_seq = CASE WHEN first_seq = 0 THEN $6 ELSE first_seq END, "
                 "last_seq = GREATEST(last_seq, $7), steps = GREATEST(steps, $8) "
                 "WHERE tenant_id = $1 AND id = $2 AND status = $9 AND lease_owner = $3 AND "
                 "lease_epoch = $4 "
                 "RETURNING (extract(epoch from lease_expiry) * 1000000)::bigint, cancel_requested",
                 request->tenant_id(), request->turn_id(), request->owner(),
                 static_cast<int64_t>(request->lease_epoch()),
                 static_cast<int64_t>(request->lease_ttl_ms()),
                 static_cast<int64_t>(request->first_seq()),
                 static_cast<int64_t>(request->last_seq()), request->steps(), kRunning);
        if (row.empty()) {
          pqxx::result turn =
              Exec(tx, "SELECT lease_epoch FROM turns WHERE tenant_id = $1 AND id = $2",
                   request->tenant_id(), request->turn_id());
          if (turn.empty()) return absl::NotFoundError("turn not found");
          return LeaseLost(turn[0][0].as<int64_t>());
        }
        store_pb::HeartbeatTurnResponse out;
        *out.mutable_lease_expiry() = ToTimestamp(absl::FromUnixMicros(row[0][0].as<int64_t>()));
        out.set_cancel_requested(row[0][1].as<bool>());
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::CompleteTurn(ServerContext*, const store_pb::CompleteTurnRequest* request,
                                      store_pb::CompleteTurnResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->turn_id(), "turn_id", limits_);
  if (valid.ok()) valid = CheckId(request->owner(), "owner", limits_);
  if (valid.ok() && !IsTerminal(request->status())) {
    valid = InvalidArgumentError("status", "must be SUCCEEDED, FAILED or CANCELLED");
  }
  if (valid.ok()) valid = CheckTurnMessages(request->messages(), limits_);
  if (!valid.ok()) return ToGrpcStatus(valid);
  std::vector<::parley::v1::Message> messages =
      PrepareTurnMessages(request->messages(), request->turn_id());

  auto result = pool_.Transact<store_pb::CompleteTurnResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::CompleteTurnResponse> {
        absl::StatusOr<LockedTurn> locked = LockTurn(tx, request->tenant_id(), request->turn_id(),
                                                     request->owner(), request->lease_epoch());
        if (!locked.ok()) return locked.status();
        const std::string& session_id = locked->session_id;
        const LockedSession& session = locked->session;
        const int status = locked->status;
        const bool same_lease = locked->held_by_caller;
        store_pb::CompleteTurnResponse out;
        if (IsTerminal(status) && same_lease) {  // A retry of a completion that committed.
          *out.mutable_turn() = SelectTurn(tx, request->tenant_id(), request->turn_id());
          pqxx::result rows = Exec(
              tx,
              absl::StrCat("SELECT ", kMessageColumns,
                           " FROM messages WHERE session_id = $1 AND turn_id = $2 AND role <> $3 "
                           "ORDER BY position"),
              session_id, request->turn_id(), static_cast<int>(::parley::v1::ROLE_USER));
          for (const auto& row : rows) *out.add_messages() = MessageFromRow(row);
          return out;
        }
        if (status != kRunning || !same_lease) return LeaseLost(session.lease_epoch);

        int64_t position = session.message_count;
        for (::parley::v1::Message& m : messages) {
          m.set_session_id(session_id);
          *out.add_messages() = InsertMessage(tx, request->tenant_id(), m, ++position);
        }
        const bool has_error = request->has_error();
        pqxx::result updated = Exec(
            tx,
            absl::StrCat("UPDATE turns SET status = $2, finish_reason = $3, usage = $4::jsonb, "
                         "error = CASE WHEN $5 THEN $6::jsonb ELSE NULL END, steps = $7, "
                         "time_to_first_token_ms = $8, "
                         "first_seq = CASE WHEN $9 > 0 THEN $9 ELSE first_seq END, "
                         "last_seq = GREATEST(last_seq, $10), end_time = now(), "
                         "lease_expiry = NULL WHERE id = $1 RETURNING ",
                         kTurnColumns),
            request->turn_id(), static_cast<int>(request->status()),
            static_cast<int>(request->finish_reason()), ProtoToJson(request->usage()), has_error,
            ProtoToJson(request->error()), request->steps(),
            static_cast<int64_t>(request->time_to_first_token_ms()),
            static_cast<int64_t>(request->first_seq()), static_cast<int64_t>(request->last_seq()));
        *out.mutable_turn() = TurnFromRow(updated[0]);
        if (session.status != ::parley::v1::SESSION_STATUS_CLOSED) {
          std::string requeued;
          position =
              RequeueUntakenSteering(tx, request->tenant_id(), session_id, request->turn_id(),
                                     session.turn_count + 1, position, &requeued);
          out.set_requeued_turn_id(requeued);
        }
        Exec(tx,
             "UPDATE sessions SET message_count = $2, running_turn_id = NULL, "
             "waiting_since = CASE WHEN queued_turns > 0 THEN now() END WHERE id = $1",
             session_id, position);
        const ::parley::v1::Usage& usage = request->usage();
        Exec(tx,
             "INSERT INTO usage (turn_id, tenant_id, session_id, input_tokens, output_tokens, "
             "cache_read_tokens, cache_write_tokens) VALUES ($1, $2, $3, $4, $5, $6, $7) "
             "ON CONFLICT (turn_id) DO NOTHING",
             request->turn_id(), request->tenant_id(), session_id,
             static_cast<int64_t>(usage.input_tokens()),
             static_cast<int64_t>(usage.output_tokens()),
             static_cast<int64_t>(usage.cache_read_tokens()),
             static_cast<int64_t>(usage.cache_write_tokens()));
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::CommitTurnStep(ServerContext*,
                                        const store_pb::CommitTurnStepRequest* request,
                                        store_pb::CommitTurnStepResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->turn_id(), "turn_id", limits_);
  if (valid.ok()) valid = CheckId(request->owner(), "owner", limits_);
  if (valid.ok()) valid = CheckTurnMessages(request->messages(), limits_);
  if (!valid.ok()) return ToGrpcStatus(valid);
  std::vector<::parley::v1::Message> messages =
      PrepareTurnMessages(request->messages(), request->turn_id());
  auto result = pool_.Transact<store_pb::CommitTurnStepResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::CommitTurnStepResponse> {
        absl::StatusOr<LockedTurn> locked = LockTurn(tx, request->tenant_id(), request->turn_id(),
                                                     request->owner(), request->lease_epoch());
        if (!locked.ok()) return locked.status();
        if (locked->status != kRunning || !locked->held_by_caller) {
          return LeaseLost(locked->session.lease_epoch);
        }
        store_pb::CommitTurnStepResponse out;
        if (locked->committed_steps > static_cast<int64_t>(request->step())) return out;
        int64_t position = locked->session.message_count;
        for (::parley::v1::Message& m : messages) {
          m.set_session_id(locked->session_id);
          *out.add_messages() = InsertMessage(tx, request->tenant_id(), m, ++position);
        }
        Exec(tx,
             "UPDATE turns SET committed_steps = $2, usage = $3::jsonb, "
             "steps = GREATEST(steps, $2), "
             "first_seq = CASE WHEN first_seq = 0 THEN $4 ELSE first_seq END, "
             "last_seq = GREATEST(last_seq, $5) WHERE id = $1",
             request->turn_id(), static_cast<int64_t>(request->step()) + 1,
             ProtoToJson(request->usage()), static_cast<int64_t>(request->first_seq()),
             static_cast<int64_t>(request->last_seq()));
        Exec(tx, "UPDATE sessions SET message_count = $2 WHERE id = $1", locked->session_id,
             position);
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::TakeSteeringMessages(ServerContext*,
                                              const store_pb::TakeSteeringMessagesRequest* request,
                                              store_pb::TakeSteeringMessagesResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->turn_id(), "turn_id", limits_);
  if (valid.ok()) valid = CheckId(request->owner(), "owner", limits_);
  if (!valid.ok()) return ToGrpcStatus(valid);
  auto result = pool_.Transact<store_pb::TakeSteeringMessagesResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::TakeSteeringMessagesResponse> {
        absl::StatusOr<LockedTurn> locked = LockTurn(tx, request->tenant_id(), request->turn_id(),
                                                     request->owner(), request->lease_epoch());
        if (!locked.ok()) return locked.status();
        if (locked->status != kRunning || !locked->held_by_caller) {
          return LeaseLost(locked->session.lease_epoch);
        }
        store_pb::TakeSteeringMessagesResponse out;
        pqxx::result rows =
            Exec(tx,
                 absl::StrCat("SELECT m.id, m.session_id, m.turn_id, m.role, m.parts::text, "
                              "coalesce(m.idempotency_key, ''), "
                              "(extract(epoch from m.create_time) * 1000000)::bigint",
                              kUntakenSteeringWhere, " ORDER BY m.position"),
                 locked->session_id, request->turn_id(), static_cast<int>(::parley::v1::ROLE_USER));
        if (rows.empty()) return out;
        std::vector<std::string> ids;
        for (const auto& row : rows) {
          *out.add_messages() = MessageFromRow(row);
          ids.push_back(row[0].as<std::string>());
        }
        const int64_t last = MoveToEnd(tx, locked->session_id, ids, locked->session.message_count);
        Exec(tx, "UPDATE sessions SET message_count = $2 WHERE id = $1", locked->session_id, last);
        Exec(tx, "UPDATE turns SET steered_position = $2 WHERE id = $1", request->turn_id(), last);
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::CancelTurn(ServerContext*, const store_pb::CancelTurnRequest* request,
                                    store_pb::CancelTurnResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->session_id(), "session_id", limits_);
  if (valid.ok()) valid = CheckId(request->turn_id(), "turn_id", limits_, false);
  if (!valid.ok()) return ToGrpcStatus(valid);
  auto result = pool_.Transact<store_pb::CancelTurnResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::CancelTurnResponse> {
        LockedSession session = LockSession(tx, request->tenant_id(), request->session_id());
        std::string turn_id = request->turn_id();
        if (turn_id.empty()) {
          if (session.running_turn_id.empty()) {
            absl::Status none = absl::FailedPreconditionError("no turn is running");
            SetErrorInfo(none, "NO_RUNNING_TURN");
            return none;
          }
          turn_id = session.running_turn_id;
        }
        pqxx::result row =
            Exec(tx,
                 "SELECT status FROM turns WHERE tenant_id = $1 AND session_id = $2 AND id = $3 "
                 "FOR UPDATE",
                 request->tenant_id(), request->session_id(), turn_id);
        if (row.empty()) return absl::NotFoundError("turn not found");
        store_pb::CancelTurnResponse out;
        const int status = row[0][0].as<int>();
        if (status == kQueued) {
          Exec(tx,
               "UPDATE turns SET status = $2, finish_reason = $3, end_time = now(), "
               "error = $4::jsonb WHERE id = $1",
               turn_id, static_cast<int>(::parley::v1::TURN_STATUS_CANCELLED),
               static_cast<int>(::parley::v1::FINISH_REASON_CANCELLED),
               QueuedCancelErrorJson("CANCELLED_BY_USER"));
          Exec(tx,
               "UPDATE sessions SET queued_turns = GREATEST(queued_turns - 1, 0), "
               "waiting_since = CASE WHEN queued_turns > 1 THEN waiting_since END WHERE id = $1",
               request->session_id());
        } else if (status == kRunning) {
          Exec(tx, "UPDATE turns SET cancel_requested = true WHERE id = $1", turn_id);
          out.set_was_running(true);
        }
        *out.mutable_turn() = SelectTurn(tx, request->tenant_id(), turn_id);
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::ReleaseTurn(ServerContext*, const store_pb::ReleaseTurnRequest* request,
                                     store_pb::ReleaseTurnResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->turn_id(), "turn_id", limits_);
  if (valid.ok()) valid = CheckId(request->owner(), "owner", limits_);
  if (valid.ok() &&
      static_cast<int64_t>(request->reason().size()) > limits_.max_release_reason_bytes) {
    valid = InvalidArgumentError("reason", "is too long",
                                 absl::StrCat(limits_.max_release_reason_bytes, " bytes"));
  }
  if (!valid.ok()) return ToGrpcStatus(valid);
  auto result = pool_.Transact<store_pb::ReleaseTurnResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::ReleaseTurnResponse> {
        absl::StatusOr<LockedTurn> locked = LockTurn(tx, request->tenant_id(), request->turn_id(),
                                                     request->owner(), request->lease_epoch());
        if (!locked.ok()) return locked.status();
        if (locked->status != kRunning || !locked->held_by_caller) {
          return LeaseLost(locked->session.lease_epoch);
        }
        const std::string& session_id = locked->session_id;
        // Back to QUEUED at its own position, which is the session's lowest queued one: the
        // FIFO claim hands it out first, with attempt + 1 and a new epoch (the session's
        // lease_epoch stays, so the next claim's epoch is still greater than this one's).
        pqxx::result released = Exec(
            tx,
            absl::StrCat("UPDATE turns SET status = $2, lease_owner = NULL, lease_expiry = NULL, "
                         "recovery = false WHERE id = $1 RETURNING ",
                         kTurnColumns),
            request->turn_id(), kQueued);
        Exec(tx,
             "UPDATE sessions SET running_turn_id = NULL, queued_turns = queued_turns + 1, "
             "waiting_since = now() WHERE id = $1",
             session_id);
        store_pb::ReleaseTurnResponse out;
        *out.mutable_turn() = TurnFromRow(released[0]);
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::ReclaimExpiredLeases(ServerContext*,
                                              const store_pb::ReclaimExpiredLeasesRequest* request,
                                              store_pb::ReclaimExpiredLeasesResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_, false);
  if (valid.ok()) valid = CheckPageSize(request->limit(), "limit", limits_.max_page_size);
  if (!valid.ok()) return ToGrpcStatus(valid);
  const int64_t limit = request->limit() == 0 ? 100 : request->limit();
  auto result = pool_.Transact<store_pb::ReclaimExpiredLeasesResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::ReclaimExpiredLeasesResponse> {
        pqxx::result expired =
            Exec(tx,
                 "SELECT session_id FROM turns WHERE status = $3 AND lease_expiry < now() AND "
                 "($1 = '' OR tenant_id = $1) ORDER BY lease_expiry LIMIT $2",
                 request->tenant_id(), limit, kRunning);
        store_pb::ReclaimExpiredLeasesResponse out;
        for (const auto& candidate : expired) {
          const std::string session_id = candidate[0].as<std::string>();
          // Session first (the lock order), skipping sessions someone else holds.
          pqxx::result locked =
              Exec(tx, "SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE SKIP LOCKED", session_id);
          if (locked.empty()) continue;
          pqxx::result turn = Exec(
              tx,
              absl::StrCat("UPDATE turns SET status = $2, recovery = true, lease_owner = NULL, "
                           "lease_expiry = NULL WHERE session_id = $1 AND status = $3 AND "
                           "lease_expiry < now() RETURNING ",
                           kTurnColumns),
              session_id, kQueued, kRunning);
          if (turn.empty()) continue;
          *out.add_turns() = TurnFromRow(turn[0]);
          Exec(tx,
               "UPDATE sessions SET running_turn_id = NULL, queued_turns = queued_turns + 1, "
               "waiting_since = now() WHERE id = $1",
               session_id);
        }
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::GetTurn(ServerContext*, const store_pb::GetTurnRequest* request,
                                 store_pb::GetTurnResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->turn_id(), "turn_id", limits_);
  if (valid.ok()) valid = CheckId(request->session_id(), "session_id", limits_, false);
  if (!valid.ok()) return ToGrpcStatus(valid);
  auto result = pool_.Transact<store_pb::GetTurnResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::GetTurnResponse> {
        store_pb::GetTurnResponse out;
        *out.mutable_turn() = SelectTurn(tx, request->tenant_id(), request->turn_id());
        if (!request->session_id().empty() && out.turn().session_id() != request->session_id()) {
          return absl::NotFoundError("turn not found");
        }
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::ListTurns(ServerContext*, const store_pb::ListTurnsRequest* request,
                                   store_pb::ListTurnsResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->session_id(), "session_id", limits_);
  if (valid.ok()) valid = CheckPageSize(request->page_size(), "page_size", limits_.max_page_size);
  store_pb::ListTurnsRequest query = *request;
  query.clear_page_size();
  query.clear_page_token();
  std::string after = "0";
  if (valid.ok() && !request->page_token().empty()) {
    valid = DecodePageToken(request->page_token(), Fingerprint(query), "page_token", &after);
  }
  if (!valid.ok()) return ToGrpcStatus(valid);
  std::string statuses = "[";
  for (int i = 0; i < request->statuses_size(); ++i) {
    absl::StrAppend(&statuses, i ? "," : "", static_cast<int>(request->statuses(i)));
  }
  statuses += "]";
  const int64_t page_size =
      request->page_size() == 0 ? limits_.default_page_size : request->page_size();
  auto result = pool_.Transact<store_pb::ListTurnsResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::ListTurnsResponse> {
        pqxx::result session = Exec(tx, "SELECT 1 FROM sessions WHERE tenant_id = $1 AND id = $2",
                                    request->tenant_id(), request->session_id());
        if (session.empty()) return absl::NotFoundError("session not found");
        pqxx::result rows = Exec(
            tx,
            absl::StrCat("SELECT position, ", kTurnColumns,
                         " FROM turns WHERE tenant_id = $1 AND session_id = $2 AND position > $3 "
                         "AND (jsonb_array_length($4::jsonb) = 0 OR status IN "
                         "(SELECT jsonb_array_elements_text($4::jsonb)::smallint)) "
                         "ORDER BY position LIMIT $5"),
            request->tenant_id(), request->session_id(), std::stoll(after), statuses,
            page_size + 1);
        store_pb::ListTurnsResponse out;
        std::string last_position;
        PageBudget budget(limits_);
        for (int64_t i = 0; i < std::min<int64_t>(page_size, rows.size()); ++i) {
          ::parley::v1::Turn turn = TurnFromRow(rows[i], 1);
          if (!budget.Take(turn.ByteSizeLong())) break;
          last_position = rows[i][0].as<std::string>();
          *out.add_turns() = std::move(turn);
        }
        if (static_cast<int64_t>(rows.size()) > out.turns_size()) {
          out.set_next_page_token(EncodePageToken(last_position, Fingerprint(query)));
        }
        return out;
      });
  return Respond(result, response);
}

}  // namespace parley::store
