// The durable event log.
//
// AppendEventBatch serialises appends per session with a transaction-scoped advisory
// lock (not the session row lock, so appends never make ClaimNextTurn's SKIP LOCKED
// pass a session by), compares any already-stored seqs byte for byte, and COPYs only
// the new events. The durable last seq is max(seq) over the primary key, so no counter
// row is rewritten per batch.
#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/serialize.h"
#include "common/status.h"
#include "store-svc/api/rows.h"
#include "store-svc/api/store_service.h"

namespace parley::store {

using grpc::ServerContext;
using grpc::Status;
namespace {

absl::Status WithInfo(absl::Status status, const char* reason, const char* key, int64_t value) {
  SetErrorInfo(status, reason, {{key, absl::StrCat(value)}});
  return status;
}

struct SessionEpoch {
  int64_t epoch = 0;
  int64_t last_seq = 0;
};

SessionEpoch ReadEpoch(pqxx::work& tx, const std::string& tenant_id,
                       const std::string& session_id) {
  pqxx::result row =
      Exec(tx,
           "SELECT epoch, (SELECT coalesce(max(seq), 0) FROM events WHERE session_id = $2) "
           "FROM sessions WHERE tenant_id = $1 AND id = $2",
           tenant_id, session_id);
  if (row.empty()) throw StatusException{absl::NotFoundError("session not found")};
  return {row[0][0].as<int64_t>(), row[0][1].as<int64_t>()};
}

absl::Status ValidateBatch(const store_pb::AppendEventsRequest& request,
                           const StoreLimits& limits) {
  absl::Status valid = CheckId(request.tenant_id(), "tenant_id", limits);
  if (valid.ok()) valid = CheckId(request.session_id(), "session_id", limits);
  if (!valid.ok()) return valid;
  if (request.events_size() > limits.max_event_batch) {
    return InvalidArgumentError("events", "has too many events",
                                absl::StrCat(limits.max_event_batch));
  }
  uint64_t previous = 0;
  for (int i = 0; i < request.events_size(); ++i) {
    const ::parley::v1::Event& event = request.events(i);
    if (event.transient()) continue;
    std::string field = absl::StrCat("events[", i, "]");
    if (!event.session_id().empty() && event.session_id() != request.session_id()) {
      return InvalidArgumentError(field + ".session_id", "must be the batch's session");
    }
    if (event.seq() == 0) return InvalidArgumentError(field + ".seq", "must be at least 1");
    if (previous != 0 && event.seq() != previous + 1) {
      return InvalidArgumentError(field + ".seq", "must follow the previous event's seq by 1");
    }
    if (static_cast<int64_t>(event.ByteSizeLong()) > limits.max_event_bytes) {
      return InvalidArgumentError(field, "is too large",
                                  absl::StrCat(limits.max_event_bytes, " bytes"));
    }
    previous = event.seq();
  }
  return absl::OkStatus();
}

// Serialises the writers of one session's event log (appends, epoch changes) for the
// rest of the transaction.
void LockEventLog(pqxx::work& tx, const std::string& session_id) {
  Exec(tx, "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", session_id);
}

}  // namespace

absl::StatusOr<store_pb::AppendEventsResponse> AppendEventBatch(
    PgPool& pool, const store_pb::AppendEventsRequest& request) {
  // Payloads are computed once, outside any retry.
  std::vector<const ::parley::v1::Event*> durable;
  std::vector<std::string> payloads;
  for (const ::parley::v1::Event& event : request.events()) {
    if (event.transient()) continue;
    ::parley::v1::Event copy = event;
    copy.set_session_id(request.session_id());
    payloads.push_back(SerializeDeterministic(copy));
    durable.push_back(&event);
  }
  store_pb::AppendEventsResponse out;
  absl::Status status = pool.Run([&](pqxx::connection& connection) -> absl::Status {
    out.Clear();
    pqxx::work tx(connection);
    LockEventLog(tx, request.session_id());
    SessionEpoch session = ReadEpoch(tx, request.tenant_id(), request.session_id());
    out.set_skipped(static_cast<uint32_t>(request.events_size() - durable.size()));
    if (durable.empty()) {
      out.set_last_seq(session.last_seq);
      return absl::OkStatus();
    }
    for (const ::parley::v1::Event* event : durable) {
      if (static_cast<int64_t>(event->epoch()) != session.epoch) {
        return WithInfo(absl::FailedPreconditionError(absl::StrCat("event epoch ", event->epoch(),
                                                                   " is not the session's epoch")),
                        "EPOCH_MISMATCH", "epoch", session.epoch);
      }
    }
    const int64_t first = static_cast<int64_t>(durable.front()->seq());
    const int64_t last = static_cast<int64_t>(durable.back()->seq());
    if (first > session.last_seq + 1) {
      return WithInfo(
          absl::FailedPreconditionError(absl::StrCat(
              "batch starts at seq ", first, " but the durable log ends at ", session.last_seq)),
          "SEQ_GAP", "last_seq", session.last_seq);
    }
    // Seqs already stored must be byte-identical: a replay, not a rewrite.
    size_t index = 0;
    if (first <= session.last_seq) {
      pqxx::result stored =
          Exec(tx,
               "SELECT seq, payload FROM events WHERE session_id = $1 AND seq BETWEEN $2 AND $3 "
               "ORDER BY seq",
               request.session_id(), first, std::min(last, session.last_seq));
      for (const auto& row : stored) {
        if (pqxx::binarystring(row[1]).str() != payloads[index]) {
          return WithInfo(absl::AlreadyExistsError(absl::StrCat(
                              "seq ", row[0].as<int64_t>(), " is stored with different content")),
                          "SEQ_CONFLICT", "seq", row[0].as<int64_t>());
        }
        ++index;
      }
    }
    if (index < durable.size()) {
      pqxx::stream_to copy(tx, "events",
                           std::vector<std::string>{"session_id", "seq", "tenant_id", "epoch",
                                                    "turn_id", "payload"});
      for (size_t i = index; i < durable.size(); ++i) {
        copy << std::make_tuple(request.session_id(), static_cast<int64_t>(durable[i]->seq()),
                                request.tenant_id(), session.epoch, durable[i]->turn_id(),
                                absl::StrCat("\\x", absl::BytesToHexString(payloads[i])));
      }
      copy.complete();
    }
    tx.commit();
    out.set_appended(static_cast<uint32_t>(durable.size() - index));
    out.set_skipped(out.skipped() + static_cast<uint32_t>(index));
    out.set_last_seq(static_cast<uint64_t>(std::max(last, session.last_seq)));
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return out;
}

Status StoreServiceImpl::AppendEvents(ServerContext*, const store_pb::AppendEventsRequest* request,
                                      store_pb::AppendEventsResponse* response) {
  if (absl::Status valid = ValidateBatch(*request, limits_); !valid.ok()) {
    return ToGrpcStatus(valid);
  }
  return Respond(AppendEventBatch(pool_, *request), response);
}

Status StoreServiceImpl::ReadEvents(ServerContext*, const store_pb::ReadEventsRequest* request,
                                    store_pb::ReadEventsResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->session_id(), "session_id", limits_);
  if (valid.ok()) valid = CheckPageSize(request->limit(), "limit", limits_.max_read_events);
  if (!valid.ok()) return ToGrpcStatus(valid);
  const int64_t limit = request->limit() == 0 ? 1000 : request->limit();
  auto result = pool_.Transact<store_pb::ReadEventsResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::ReadEventsResponse> {
        SessionEpoch session = ReadEpoch(tx, request->tenant_id(), request->session_id());
        pqxx::result rows =
            Exec(tx,
                 "SELECT payload FROM events WHERE session_id = $1 AND tenant_id = $2 AND seq > $3 "
                 "ORDER BY seq LIMIT $4",
                 request->session_id(), request->tenant_id(),
                 static_cast<int64_t>(request->after_seq()), limit + 1);
        store_pb::ReadEventsResponse out;
        PageBudget budget(limits_);
        for (int64_t i = 0; i < std::min<int64_t>(limit, rows.size()); ++i) {
          const pqxx::binarystring payload(rows[i][0]);
          if (!budget.Take(payload.size())) break;
          if (!out.add_events()->ParseFromString(payload.str())) {
            return absl::DataLossError("a stored event does not parse");
          }
        }
        out.set_has_more(static_cast<int64_t>(rows.size()) > out.events_size());
        out.set_last_seq(static_cast<uint64_t>(session.last_seq));
        out.set_epoch(static_cast<uint64_t>(session.epoch));
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::GetLastSeq(ServerContext*, const store_pb::GetLastSeqRequest* request,
                                    store_pb::GetLastSeqResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->session_id(), "session_id", limits_);
  if (valid.ok() && !request->turn_id().empty()) {
    valid = CheckId(request->turn_id(), "turn_id", limits_);
  }
  if (!valid.ok()) return ToGrpcStatus(valid);
  auto result = pool_.Transact<store_pb::GetLastSeqResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::GetLastSeqResponse> {
        SessionEpoch session = ReadEpoch(tx, request->tenant_id(), request->session_id());
        store_pb::GetLastSeqResponse out;
        out.set_last_seq(static_cast<uint64_t>(session.last_seq));
        out.set_epoch(static_cast<uint64_t>(session.epoch));
        if (!request->turn_id().empty()) {
          *out.mutable_turn() = SelectTurn(tx, request->tenant_id(), request->turn_id());
          if (out.turn().session_id() != request->session_id()) {
            return absl::NotFoundError("turn not found");
          }
        }
        return out;
      });
  return Respond(result, response);
}

Status StoreServiceImpl::AdvanceEpoch(ServerContext*, const store_pb::AdvanceEpochRequest* request,
                                      store_pb::AdvanceEpochResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_);
  if (valid.ok()) valid = CheckId(request->session_id(), "session_id", limits_);
  if (valid.ok() && request->expected_epoch() == 0) {
    valid = InvalidArgumentError("expected_epoch", "is required (epochs start at 1)");
  }
  if (!valid.ok()) return ToGrpcStatus(valid);
  auto result = pool_.Transact<store_pb::AdvanceEpochResponse>(
      [&](pqxx::work& tx) -> absl::StatusOr<store_pb::AdvanceEpochResponse> {
        // After any append in flight: its events belong to the epoch it read, and the
        // new epoch must start after them.
        LockEventLog(tx, request->session_id());
        pqxx::result advanced =
            Exec(tx,
                 "UPDATE sessions SET epoch = epoch + 1 WHERE tenant_id = $1 AND id = $2 AND "
                 "epoch = $3 RETURNING epoch",
                 request->tenant_id(), request->session_id(),
                 static_cast<int64_t>(request->expected_epoch()));
        SessionEpoch session = ReadEpoch(tx, request->tenant_id(), request->session_id());
        store_pb::AdvanceEpochResponse out;
        out.set_advanced(!advanced.empty());
        out.set_epoch(static_cast<uint64_t>(session.epoch));
        out.set_resume_after_seq(static_cast<uint64_t>(session.last_seq));
        return out;
      });
  return Respond(result, response);
}

}  // namespace parley::store
