// Sessions: create (idempotent on tenant + external_id), get, list with filters and
// stable cursors, update with optimistic concurrency, close, delete.
//
// Listing orders by id. Ids are ULIDs, so id order is creation order, and a cursor
// "after id X" neither skips nor repeats rows when new sessions arrive meanwhile: new
// rows sort after every existing one.
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/ids.h"
#include "common/proto_time.h"
#include "common/status.h"
#include "store-svc/api/rows.h"
#include "store-svc/api/store_service.h"

namespace parley::store {

using grpc::ServerContext;
using grpc::Status;
namespace {

absl::Status CheckAgentConfig(const ::parley::v1::AgentConfig& config, const char* field) {
  static const char* kTools[] = {"bash", "read_file", "write_file", "edit_file", "list_files"};
  // Providers are configured on session-svc by name; a name no replica knows fails the
  // turn with a PROVIDER error that says so.
  bool well_formed = config.provider().size() <= 64;
  for (char c : config.provider()) {
    well_formed =
        well_formed && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_');
  }
  if (!well_formed) {
    return InvalidArgumentError(absl::StrCat(field, ".provider"),
                                "must be a provider name: up to 64 of [a-z0-9_-]");
  }
  for (int i = 0; i < config.tools_size(); ++i) {
    bool tool_known = false;
    for (const char* t : kTools) tool_known = tool_known || config.tools(i) == t;
    if (!tool_known) {
      return InvalidArgumentError(absl::StrCat(field, ".tools[", i, "]"),
                                  absl::StrCat("unknown tool \"", config.tools(i), "\""));
    }
  }
  if (config.has_temperature() && (config.temperature() < 0 || config.temperature() > 2)) {
    return InvalidArgumentError(absl::StrCat(field, ".temperature"), "must be in [0, 2]");
  }
  if (config.retry_max_attempts() > 100) {
    return InvalidArgumentError(absl::StrCat(field, ".retry_max_attempts"), "is too large", "100");
  }
  if (config.retry_max_duration_ms() > 3600000) {
    return InvalidArgumentError(absl::StrCat(field, ".retry_max_duration_ms"), "is too large",
                                "3600000");
  }
  if (config.system_prompt().size() > (1u << 20)) {
    return InvalidArgumentError(absl::StrCat(field, ".system_prompt"), "is too long",
                                "1048576 bytes");
  }
  return absl::OkStatus();
}

const google::protobuf::FieldDescriptor* ConfigField(const std::string& name) {
  return ::parley::v1::AgentConfig::descriptor()->FindFieldByName(name);
}

// Replaces one field of `config` (scalar, repeated or map) with the patch's value.
void CopyConfigField(const ::parley::v1::AgentConfig& patch, const std::string& name,
                     ::parley::v1::AgentConfig* config) {
  const auto* field = ConfigField(name);
  const auto* reflection = ::parley::v1::AgentConfig::GetReflection();
  ::parley::v1::AgentConfig only = patch;
  for (int i = 0; i < ::parley::v1::AgentConfig::descriptor()->field_count(); ++i) {
    const auto* other = ::parley::v1::AgentConfig::descriptor()->field(i);
    if (other != field) reflection->ClearField(&only, other);
  }
  reflection->ClearField(config, field);
  config->MergeFrom(only);
}

::parley::v1::Session SelectSession(pqxx::work& tx, const std::string& tenant_id,
                                    const std::string& session_id) {
  pqxx::result row = Exec(
      tx,
      absl::StrCat("SELECT ", kSessionColumns, " FROM sessions WHERE tenant_id = $1 AND id = $2"),
      tenant_id, session_id);
  if (row.empty()) throw StatusException{absl::NotFoundError("session not found")};
  return SessionFromRow(row[0]);
}

}  // namespace

LockedSession LockSession(pqxx::work& tx, const std::string& tenant_id,
                          const std::string& session_id) {
  pqxx::result row =
      Exec(tx,
           "SELECT status, message_count, turn_count, queued_turns, coalesce(running_turn_id, ''), "
           "lease_epoch, coalesce((agent_config->>'multitask_policy'), '') "
           "FROM sessions WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
           tenant_id, session_id);
  if (row.empty()) throw StatusException{absl::NotFoundError("session not found")};
  LockedSession s;
  s.status = row[0][0].as<int>();
  s.message_count = row[0][1].as<int64_t>();
  s.turn_count = row[0][2].as<int64_t>();
  s.queued_turns = row[0][3].as<int64_t>();
  s.running_turn_id = row[0][4].as<std::string>();
  s.lease_epoch = row[0][5].as<int64_t>();
  ::parley::v1::MultitaskPolicy policy = ::parley::v1::MULTITASK_POLICY_ENQUEUE;
  ::parley::v1::MultitaskPolicy_Parse(row[0][6].as<std::string>(), &policy);
  s.multitask_policy = policy;
  return s;
}

Status StoreServiceImpl::CreateSession(ServerContext*,
                                       const store_pb::CreateSessionRequest* request,
                                       store_pb::CreateSessionResponse* response) {
  const ::parley::v1::CreateSessionRequest& r = request->request();
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(r.external_id(), "external_id", limits_, false);
  if (valid.ok()) valid = CheckId(r.user_id(), "user_id", limits_, false);
  if (valid.ok()) valid = CheckId(request->session_id(), "session_id", limits_, false);
  if (valid.ok() && static_cast<int64_t>(r.title().size()) > limits_.max_title_bytes) {
    valid = InvalidArgumentError("title", "is too long",
                                 absl::StrCat(limits_.max_title_bytes, " bytes"));
  }
  if (valid.ok()) valid = CheckTags(r.tags(), "tags", limits_);
  if (valid.ok()) valid = CheckMetadata(r.metadata(), "metadata", limits_);
  if (valid.ok()) valid = CheckAgentConfig(r.agent_config(), "agent_config");
  if (!valid.ok()) return ToGrpcStatus(valid);

  const std::string id = request->session_id().empty() ? NewId("ses") : request->session_id();
  auto result = pool_.Transact<store_pb::CreateSessionResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::CreateSessionResponse> {
        store_pb::CreateSessionResponse out;
        if (Exec(tx, "SELECT 1 FROM tenants WHERE id = $1", request->tenant_id()).empty()) {
          return absl::NotFoundError("tenant not found");
        }
        // A retry of a create whose commit was in doubt finds its own row.
        auto existing = [&] {
          return Exec(tx,
                      absl::StrCat("SELECT ", kSessionColumns,
                                   " FROM sessions WHERE tenant_id = $1 AND (id = $2 OR "
                                   "(external_id = NULLIF($3, '') AND external_id IS NOT NULL))"),
                      request->tenant_id(), id, r.external_id());
        };
        if (pqxx::result found = existing(); !found.empty()) {
          *out.mutable_session() = SessionFromRow(found[0]);
          out.set_created(false);
          return out;
        }
        pqxx::result row = Exec(
            tx,
            absl::StrCat(
                "INSERT INTO sessions (id, tenant_id, external_id, user_id, title, agent_config, "
                "tags, metadata) VALUES ($1, $2, NULLIF($3, ''), $4, $5, $6::jsonb, "
                "ARRAY(SELECT jsonb_array_elements_text($7::jsonb)), $8::jsonb) "
                "ON CONFLICT (tenant_id, external_id) WHERE external_id IS NOT NULL DO NOTHING "
                "RETURNING ",
                kSessionColumns),
            id, request->tenant_id(), r.external_id(), r.user_id(), r.title(),
            ProtoToJson(r.agent_config()), JsonArray(r.tags()), JsonObject(r.metadata()));
        out.set_created(!row.empty());
        if (!out.created()) {
          // A concurrent create with the same external_id won: DO NOTHING waited for it
          // to commit, and a new statement (READ COMMITTED) sees its row.
          row = existing();
          if (row.empty()) return absl::AbortedError("concurrent create, retry");
        }
        *out.mutable_session() = SessionFromRow(row[0]);
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::GetSession(ServerContext*, const store_pb::GetSessionRequest* request,
                                    store_pb::GetSessionResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->session_id(), "session_id", limits_);
  if (!valid.ok()) return ToGrpcStatus(valid);
  // One statement: the session, its queue counter and fencing epoch, and the running
  // turn's lease (the LATERAL exposes only its own aliases, so kSessionColumns stays
  // unambiguous).
  static const std::string* const sql = new std::string(absl::StrCat(
      "SELECT ", kSessionColumns,
      ", queued_turns, lease_epoch, coalesce(running.owner, ''), "
      "(extract(epoch from running.expiry) * 1000000)::bigint "
      "FROM sessions LEFT JOIN LATERAL (SELECT lease_owner AS owner, lease_expiry AS expiry "
      "  FROM turns WHERE turns.id = sessions.running_turn_id AND turns.status = $3) running "
      "ON true WHERE tenant_id = $1 AND id = $2"));
  constexpr int kQueueColumn = kSessionColumnCount;
  auto result = pool_.Autocommit<store_pb::GetSessionResponse>(
      [&](pqxx::nontransaction& tx) -> absl::StatusOr<store_pb::GetSessionResponse> {
        pqxx::result row = Exec(tx, *sql, request->tenant_id(), request->session_id(),
                                static_cast<int>(::parley::v1::TURN_STATUS_RUNNING));
        if (row.empty()) return absl::NotFoundError("session not found");
        store_pb::GetSessionResponse out;
        *out.mutable_session() = SessionFromRow(row[0]);
        out.set_queued_turns(row[0][kQueueColumn].as<uint32_t>());
        out.set_lease_epoch(row[0][kQueueColumn + 1].as<uint64_t>());
        out.set_lease_owner(row[0][kQueueColumn + 2].as<std::string>());
        if (!row[0][kQueueColumn + 3].is_null()) {
          *out.mutable_lease_expiry() =
              ToTimestamp(absl::FromUnixMicros(row[0][kQueueColumn + 3].as<int64_t>()));
        }
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::ListSessions(ServerContext*, const store_pb::ListSessionsRequest* request,
                                      store_pb::ListSessionsResponse* response) {
  const ::parley::v1::ListSessionsRequest& r = request->request();
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckPageSize(r.page_size(), "page_size", limits_.max_page_size);
  if (valid.ok()) valid = CheckTags(r.tags(), "tags", limits_);
  if (valid.ok()) valid = CheckMetadata(r.metadata(), "metadata", limits_);
  if (valid.ok()) valid = CheckId(r.user_id(), "user_id", limits_, false);
  if (valid.ok()) valid = CheckId(r.external_id(), "external_id", limits_, false);
  if (valid.ok() && !::parley::v1::SessionStatus_IsValid(r.status())) {
    valid = InvalidArgumentError("status", absl::StrCat("is not a session status: ", r.status()));
  }
  if (valid.ok() && !::parley::v1::SortOrder_IsValid(r.order())) {
    valid = InvalidArgumentError("order", absl::StrCat("is not a sort order: ", r.order()));
  }
  store_pb::ListSessionsRequest query = *request;
  query.mutable_request()->clear_page_token();
  query.mutable_request()->clear_page_size();
  std::string after;
  if (valid.ok() && !r.page_token().empty()) {
    valid = DecodePageToken(r.page_token(), Fingerprint(query), "page_token", &after);
  }
  if (!valid.ok()) return ToGrpcStatus(valid);

  const bool oldest_first = r.order() == ::parley::v1::SORT_ORDER_OLDEST_FIRST;
  const int64_t page_size = r.page_size() == 0 ? limits_.default_page_size : r.page_size();
  const std::string sql = absl::StrCat(
      "SELECT ", kSessionColumns,
      " FROM sessions WHERE tenant_id = $1"
      " AND ($2 = 0 OR status = $2)"
      " AND tags @> ARRAY(SELECT jsonb_array_elements_text($3::jsonb))"
      " AND metadata @> $4::jsonb"
      " AND ($5 = '' OR user_id = $5)"
      " AND ($6::bigint = 0 OR create_time >= to_timestamp($6::bigint / 1000000.0))"
      " AND ($7::bigint = 0 OR create_time < to_timestamp($7::bigint / 1000000.0))"
      " AND ($8 = '' OR external_id = $8)"
      " AND ($9 = '' OR id ",
      oldest_first ? ">" : "<", " $9) ORDER BY id ", oldest_first ? "ASC" : "DESC", " LIMIT $10");
  auto result = pool_.Transact<store_pb::ListSessionsResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::ListSessionsResponse> {
        // Planned per call, not prepared: which of the optional filters are in play
        // decides the best index, and a generic plan cannot know.
        pqxx::result rows = tx.exec_params(
            sql, request->tenant_id(), static_cast<int>(r.status()), JsonArray(r.tags()),
            JsonObject(r.metadata()), r.user_id(),
            r.has_created_after() ? absl::ToUnixMicros(FromTimestamp(r.created_after()))
                                  : int64_t{0},
            r.has_created_before() ? absl::ToUnixMicros(FromTimestamp(r.created_before()))
                                   : int64_t{0},
            r.external_id(), after, page_size + 1);
        store_pb::ListSessionsResponse out;
        PageBudget budget(limits_);
        for (int64_t i = 0; i < std::min<int64_t>(page_size, rows.size()); ++i) {
          ::parley::v1::Session session = SessionFromRow(rows[i]);
          if (!budget.Take(session.ByteSizeLong())) break;
          *out.add_sessions() = std::move(session);
        }
        if (static_cast<int64_t>(rows.size()) > out.sessions_size()) {
          out.set_next_page_token(
              EncodePageToken(out.sessions().rbegin()->id(), Fingerprint(query)));
        }
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::UpdateSession(ServerContext*,
                                       const store_pb::UpdateSessionRequest* request,
                                       store_pb::UpdateSessionResponse* response) {
  const ::parley::v1::UpdateSessionRequest& r = request->request();
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(r.session_id(), "session_id", limits_);
  if (valid.ok() && r.update_mask().paths().empty()) {
    valid = InvalidArgumentError("update_mask", "names no field to update");
  }
  const ::parley::v1::Session& patch = r.session();
  for (int i = 0; valid.ok() && i < r.update_mask().paths_size(); ++i) {
    const std::string& path = r.update_mask().paths(i);
    if (path == "title") {
      if (static_cast<int64_t>(patch.title().size()) > limits_.max_title_bytes) {
        valid = InvalidArgumentError("session.title", "is too long",
                                     absl::StrCat(limits_.max_title_bytes, " bytes"));
      }
    } else if (path == "user_id") {
      valid = CheckId(patch.user_id(), "session.user_id", limits_, false);
    } else if (path == "tags") {
      valid = CheckTags(patch.tags(), "session.tags", limits_);
    } else if (path == "metadata") {
      valid = CheckMetadata(patch.metadata(), "session.metadata", limits_);
    } else if (path == "agent_config" ||
               (path.rfind("agent_config.", 0) == 0 && ConfigField(path.substr(13)) != nullptr)) {
      valid = CheckAgentConfig(patch.agent_config(), "session.agent_config");
    } else {
      valid = InvalidArgumentError(absl::StrCat("update_mask.paths[", i, "]"),
                                   absl::StrCat("\"", path, "\" cannot be updated"));
    }
  }
  if (!valid.ok()) return ToGrpcStatus(valid);

  auto result = pool_.Transact<
      store_pb::UpdateSessionResponse>([&](pqxx::work& tx)
                                           -> absl::StatusOr<store_pb::UpdateSessionResponse> {
    pqxx::result locked =
        Exec(tx,
             absl::StrCat("SELECT ", kSessionColumns,
                          " FROM sessions WHERE tenant_id = $1 AND id = $2 FOR UPDATE"),
             request->tenant_id(), r.session_id());
    if (locked.empty()) return absl::NotFoundError("session not found");
    ::parley::v1::Session current = SessionFromRow(locked[0]);
    if (r.expected_version() != 0 && r.expected_version() != current.version()) {
      absl::Status mismatch = absl::AbortedError(
          absl::StrCat("session version is ", current.version(), ", not ", r.expected_version()));
      SetErrorInfo(mismatch, "VERSION_MISMATCH", {{"version", absl::StrCat(current.version())}});
      return mismatch;
    }
    ::parley::v1::AgentConfig config = current.agent_config();
    for (const std::string& path : r.update_mask().paths()) {
      if (path == "title") current.set_title(patch.title());
      if (path == "user_id") current.set_user_id(patch.user_id());
      if (path == "tags") *current.mutable_tags() = patch.tags();
      if (path == "metadata") *current.mutable_metadata() = patch.metadata();
      if (path == "agent_config") config = patch.agent_config();
      if (path.rfind("agent_config.", 0) == 0) {
        CopyConfigField(patch.agent_config(), path.substr(13), &config);
      }
    }
    pqxx::result row =
        Exec(tx,
             absl::StrCat("UPDATE sessions SET title = $3, user_id = $4, "
                          "tags = ARRAY(SELECT jsonb_array_elements_text($5::jsonb)), "
                          "metadata = $6::jsonb, agent_config = $7::jsonb, "
                          "version = version + 1, update_time = now() "
                          "WHERE tenant_id = $1 AND id = $2 RETURNING ",
                          kSessionColumns),
             request->tenant_id(), r.session_id(), current.title(), current.user_id(),
             JsonArray(current.tags()), JsonObject(current.metadata()), ProtoToJson(config));
    store_pb::UpdateSessionResponse out;
    *out.mutable_session() = SessionFromRow(row[0]);
    return out;
  });
  return Respond(result, response);
}

Status StoreServiceImpl::CloseSession(ServerContext*, const store_pb::CloseSessionRequest* request,
                                      store_pb::CloseSessionResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->session_id(), "session_id", limits_);
  if (!valid.ok()) return ToGrpcStatus(valid);
  auto result = pool_.Transact<store_pb::CloseSessionResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::CloseSessionResponse> {
        LockedSession session = LockSession(tx, request->tenant_id(), request->session_id());
        store_pb::CloseSessionResponse out;
        if (session.status != ::parley::v1::SESSION_STATUS_CLOSED) {
          out.set_changed(true);
          pqxx::result cancelled =
              Exec(tx,
                   "UPDATE turns SET status = $3, finish_reason = $4, end_time = now(), "
                   "error = $6::jsonb "
                   "WHERE tenant_id = $1 AND session_id = $2 AND status = $5 RETURNING id",
                   request->tenant_id(), request->session_id(),
                   static_cast<int>(::parley::v1::TURN_STATUS_CANCELLED),
                   static_cast<int>(::parley::v1::FINISH_REASON_CANCELLED),
                   static_cast<int>(::parley::v1::TURN_STATUS_QUEUED),
                   QueuedCancelErrorJson("SESSION_CLOSED"));
          for (const auto& row : cancelled) out.add_cancelled_turn_ids(row[0].as<std::string>());
          if (!session.running_turn_id.empty()) {
            Exec(tx, "UPDATE turns SET cancel_requested = true WHERE id = $1",
                 session.running_turn_id);
            out.set_running_turn_id(session.running_turn_id);
          }
          // With no turn running, the closer takes the next fencing epoch to publish
          // SessionStatusChanged; otherwise the running turn's owner publishes it.
          const bool idle = session.running_turn_id.empty();
          pqxx::result closed =
              Exec(tx,
                   "UPDATE sessions SET status = $3, close_time = now(), update_time = now(), "
                   "version = version + 1, queued_turns = 0, waiting_since = NULL, "
                   "lease_epoch = lease_epoch + CASE WHEN $4 THEN 1 ELSE 0 END "
                   "WHERE tenant_id = $1 AND id = $2 RETURNING lease_epoch",
                   request->tenant_id(), request->session_id(),
                   static_cast<int>(::parley::v1::SESSION_STATUS_CLOSED), idle);
          if (idle) out.set_close_lease_epoch(closed[0][0].as<uint64_t>());
        }
        *out.mutable_session() = SelectSession(tx, request->tenant_id(), request->session_id());
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::DeleteSession(ServerContext*,
                                       const store_pb::DeleteSessionRequest* request,
                                       store_pb::DeleteSessionResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->session_id(), "session_id", limits_);
  if (!valid.ok()) return ToGrpcStatus(valid);
  auto result = pool_.Transact<store_pb::DeleteSessionResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::DeleteSessionResponse> {
        store_pb::DeleteSessionResponse out;
        pqxx::result running = Exec(
            tx, "SELECT running_turn_id FROM sessions WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
            request->tenant_id(), request->session_id());
        if (!running.empty() && !running[0][0].is_null()) {
          absl::Status busy = absl::FailedPreconditionError(
              "a turn is running: cancel it or close the session first");
          SetErrorInfo(busy, "SESSION_BUSY", {{"turn_id", running[0][0].as<std::string>()}});
          return busy;
        }
        pqxx::result deleted =
            Exec(tx, "DELETE FROM sessions WHERE tenant_id = $1 AND id = $2 RETURNING id",
                 request->tenant_id(), request->session_id());
        out.set_deleted(!deleted.empty());
        if (deleted.empty()) return out;
        // Usage rows stay: they are the billing record.
        for (const char* table : {"events", "messages", "turns"}) {
          Exec(tx, absl::StrCat("DELETE FROM ", table, " WHERE tenant_id = $1 AND session_id = $2"),
               request->tenant_id(), request->session_id());
        }
        return out;
      });
  return Respond(result, response);
}

}  // namespace parley::store
