// ClaimNextTurn: which runnable session gets the next worker, and how.
//
// A claim locks one *session* row that has queued turns and none running (FOR UPDATE
// SKIP LOCKED, so concurrent claimers take different sessions), promotes that session's
// head turn to RUNNING with lease_epoch = sessions.lease_epoch + 1, and records it on the
// session. The session lock keeps "one running turn per session" and FIFO; all of it is
// one statement (ClaimSql) sent without BEGIN/COMMIT.
//
// Fairness between tenants: among all tenants with runnable sessions, a candidate's rank
// is its position in its tenant's queue (oldest waiting first) plus the number of turns
// its tenant already runs, and claims go in rank order, then to the tenant served least
// recently (tenants.last_claim_time), then by waiting time. So tenants take turns: a tenant with a
// thousand sessions waiting delays another tenant's single session by at most one claim, and a
// tenant that already runs many turns yields to one that runs few. Only a bounded list of
// candidates (the first few of each tenant) is ranked per claim; when all of them are locked by
// other claimers, the claim falls back to any unlocked runnable session.
//
// The per-tenant cap (max_running_per_tenant > 0) must hold exactly under concurrent
// claimers, which one statement cannot do: the claim becomes a short transaction that
// locks the tenant's row, counts its running turns in a new statement (READ COMMITTED:
// it sees every claim committed by whoever held the lock before), and claims only below
// the cap. Lock order: tenant, then session.
#include <google/protobuf/repeated_field.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "store-svc/api/rows.h"
#include "store-svc/api/store_service.h"

namespace parley::store {

using grpc::ServerContext;
using grpc::Status;
namespace {

constexpr int kQueued = ::parley::v1::TURN_STATUS_QUEUED;
constexpr int kRunning = ::parley::v1::TURN_STATUS_RUNNING;

// Candidates ranked per fair claim, shared out among the tenants with work (at least one
// each). More than the number of concurrent claimers keeps the fair order under
// contention; few enough that ranking them costs little.
constexpr int kFairCandidates = 32;
// Bounds the work of one call: drifted sessions repaired, or capped tenants passed over.
constexpr int kClaimRounds = 4;
constexpr int kCappedClaimRounds = 16;

// Columns of a claim row.
constexpr int kLockedSessionColumn = 0;
constexpr int kClaimedTurnColumn = 1;  // NULL when the locked session had no turn to promote.
constexpr int kRecoveryColumn = 3;
// Epoch, expiry, agent config, traceparent and the turn, as kClaimedTurnColumns lays
// them out.
constexpr int kLeaseColumn = 4;
constexpr int kSessionColumn = kLeaseColumn + kClaimedTurnColumnCount;
constexpr int kUserMessageColumn = kSessionColumn + kSessionColumnCount;
constexpr int kMessageColumnCount = 7;  // kMessageColumns.
// True when a message of another turn that ran lies after the claimed turn's user
// message (it was sent while that turn ran): see OrderQueuedMessagesLast.
constexpr int kAnswersAfterColumn = kUserMessageColumn + kMessageColumnCount;

#define PARLEY_RUNNABLE "queued_turns > 0 AND running_turn_id IS NULL"

// The tenants that have runnable sessions, by a skip scan over
// sessions_runnable_by_tenant (one index probe per tenant, however many sessions each
// has). The recursion ends with a NULL row, which readers filter out.
constexpr char kTenantsWithWork[] =
    "ready (tenant_id) AS ("
    "  (SELECT tenant_id FROM sessions WHERE " PARLEY_RUNNABLE
    " ORDER BY tenant_id LIMIT 1) "
    "  UNION ALL "
    "  SELECT (SELECT n.tenant_id FROM sessions n WHERE n.queued_turns > 0 "
    "    AND n.running_turn_id IS NULL AND n.tenant_id > ready.tenant_id "
    "    ORDER BY n.tenant_id LIMIT 1) "
    "  FROM ready WHERE ready.tenant_id IS NOT NULL)";

enum class ClaimScope { kAnyTenant, kOneTenant, kOneSession };

ClaimScope ScopeOf(const store_pb::ClaimNextTurnRequest& request) {
  if (!request.session_id().empty()) return ClaimScope::kOneSession;
  if (!request.tenant_id().empty()) return ClaimScope::kOneTenant;
  return ClaimScope::kAnyTenant;
}

// The CTEs that choose and lock the session, ending in `s (claim_session, claim_epoch)`.
std::string ChooseSessionSql(ClaimScope scope) {
  constexpr char kLockColumns[] = "id AS claim_session, lease_epoch + 1 AS claim_epoch";
  switch (scope) {
    case ClaimScope::kOneSession:  // $5 tenant ('' = any), $6 session.
      return absl::StrCat(
          "WITH s AS (SELECT ", kLockColumns,
          " FROM sessions WHERE id = $6 AND ($5 = '' OR tenant_id = $5) AND " PARLEY_RUNNABLE
          " FOR UPDATE SKIP LOCKED)");
    case ClaimScope::kOneTenant:  // $5 tenant.
      return absl::StrCat("WITH s AS (SELECT ", kLockColumns,
                          " FROM sessions WHERE tenant_id = $5 AND " PARLEY_RUNNABLE
                          " ORDER BY waiting_since LIMIT 1 FOR UPDATE SKIP LOCKED)");
    case ClaimScope::kAnyTenant:
      break;
  }
  return absl::StrCat(
      "WITH RECURSIVE ", kTenantsWithWork,
      // With one tenant waiting there is nothing to share out: `busy` stays empty (a
      // one-time filter), so does `picked`, and `spill` takes the oldest session; nothing
      // is counted or ranked.
      ", busy AS (SELECT ready.tenant_id, (SELECT count(*) FROM sessions r "
      "    WHERE r.tenant_id = ready.tenant_id AND r.running_turn_id IS NOT NULL) AS running, "
      "    t.last_claim_time "
      "  FROM ready JOIN tenants t ON t.id = ready.tenant_id "
      "  WHERE (SELECT count(*) FROM ready WHERE tenant_id IS NOT NULL) > 1), "
      "candidates AS (SELECT c.id, c.waiting_since, busy.last_claim_time, busy.running + "
      "  row_number() OVER (PARTITION BY busy.tenant_id ORDER BY c.waiting_since) AS fair_rank "
      "  FROM busy CROSS JOIN LATERAL (SELECT id, waiting_since FROM sessions "
      "    WHERE tenant_id = busy.tenant_id AND " PARLEY_RUNNABLE
      "    ORDER BY waiting_since LIMIT greatest(1, ",
      kFairCandidates,
      " / (SELECT count(*) FROM busy))) c), "
      // The lock sits in a LATERAL subquery under LIMIT 1, driven by the candidates in
      // rank order: Postgres locks them one at a time and stops at the first it gets.
      // (A lock on a join sorted afterwards would lock every candidate.)
      "picked AS (SELECT locked.* FROM "
      "  (SELECT id FROM candidates "
      "   ORDER BY fair_rank, last_claim_time NULLS FIRST, waiting_since) c "
      "  CROSS JOIN LATERAL (SELECT ",
      kLockColumns,
      " FROM sessions WHERE sessions.id = c.id AND " PARLEY_RUNNABLE
      "    FOR UPDATE SKIP LOCKED) locked LIMIT 1), "
      // One tenant waiting, or every candidate locked by another claimer (or claimed
      // since this statement's snapshot): take the oldest unlocked runnable session
      // rather than report none. Runs only when `picked` is empty.
      "spill AS (SELECT ",
      kLockColumns,
      " FROM sessions WHERE " PARLEY_RUNNABLE
      "  AND NOT EXISTS (SELECT 1 FROM picked) "
      "  ORDER BY tenant_id, waiting_since LIMIT 1 FOR UPDATE SKIP LOCKED), "
      "s AS (SELECT * FROM picked UNION ALL SELECT * FROM spill)");
}

// A claim in one statement: lock a session (ChooseSessionSql), promote its head turn,
// then record the running turn and the new fencing epoch on the session. The turn's
// UPDATE re-checks status = QUEUED, and the session is updated only through what that
// UPDATE returned, so a turn cancelled after this statement's snapshot was taken is
// never claimed. Returns no row when nothing is runnable, and a row whose claimed turn id
// is NULL when a session looked runnable but no turn was promoted.
//   $1 owner  $2 lease ttl ms  $3 QUEUED  $4 RUNNING  (then the scope's parameters)
// Columns: see k*Column above.
const std::string& ClaimSql(ClaimScope scope) {
  auto build = [](ClaimScope scope) {
    return new std::string(absl::StrCat(
        ChooseSessionSql(scope),
        ", head AS (SELECT turns.id AS head_id, turns.recovery AS was_recovery "
        "  FROM turns JOIN s ON turns.session_id = s.claim_session "
        "  WHERE turns.status = $3 ORDER BY turns.position LIMIT 1), "
        "claimed AS (UPDATE turns SET status = $4, lease_owner = $1, lease_epoch = s.claim_epoch, "
        // clock_timestamp(), not now(): a claim whose transaction waited on a lock
        // while the session's previous turn completed must not start before that
        // turn ended, and its lease counts from the claim itself.
        "  lease_expiry = clock_timestamp() + $2 * interval '1 millisecond', "
        "  start_time = coalesce(start_time, clock_timestamp()), attempt = attempt + 1, "
        "  recovery = false "
        "  FROM head, s WHERE turns.id = head.head_id AND turns.status = $3 "
        "  RETURNING turns.id AS claimed_turn, turns.session_id AS claimed_session, "
        "  head.was_recovery, s.claim_epoch, "
        "  (extract(epoch from lease_expiry) * 1000000)::bigint AS expiry_micros, "
        "  turns.agent_config::text AS turn_agent_config, turns.traceparent AS turn_traceparent, ",
        kTurnColumns,
        "), "
        "bumped AS (UPDATE sessions SET running_turn_id = c.claimed_turn, "
        "  lease_epoch = c.claim_epoch, queued_turns = queued_turns - 1, waiting_since = NULL "
        "  FROM (SELECT claimed_turn, claimed_session, claim_epoch FROM claimed) c "
        "  WHERE sessions.id = c.claimed_session RETURNING ",
        kSessionColumns, ")",
        // Tenants that compete remember when they were last served: equal ranks go to
        // the one served least recently. Only stamped while several tenants wait, so a
        // lone tenant's claims never queue on its tenant row.
        scope == ClaimScope::kAnyTenant
            ? ", stamped AS (UPDATE tenants SET last_claim_time = clock_timestamp() "
              "  FROM bumped WHERE tenants.id = bumped.tenant_id AND EXISTS (SELECT 1 FROM busy)) "
            : " ",
        "SELECT s.claim_session, claimed.*, bumped.*, um.*, "
        "EXISTS (SELECT 1 FROM messages later JOIN turns t ON t.id = later.turn_id "
        "  WHERE later.session_id = claimed.claimed_session "
        "  AND later.turn_id <> claimed.claimed_turn AND t.status <> $3 AND t.start_time IS NOT "
        "NULL "
        "  AND later.position > (SELECT position FROM messages "
        "    WHERE session_id = claimed.claimed_session AND id = claimed.user_message_id)) "
        "  AS answers_after "
        "FROM s LEFT JOIN claimed ON true "
        "LEFT JOIN bumped ON true LEFT JOIN LATERAL (SELECT ",
        kMessageColumns,
        " FROM messages WHERE messages.session_id = claimed.claimed_session "
        "  AND messages.id = claimed.user_message_id) um ON true"));
  };
  static const std::string* const any = build(ClaimScope::kAnyTenant);
  static const std::string* const tenant = build(ClaimScope::kOneTenant);
  static const std::string* const session = build(ClaimScope::kOneSession);
  switch (scope) {
    case ClaimScope::kOneSession:
      return *session;
    case ClaimScope::kOneTenant:
      return *tenant;
    case ClaimScope::kAnyTenant:
      break;
  }
  return *any;
}

pqxx::result RunClaim(pqxx::transaction_base& tx, ClaimScope scope,
                      const store_pb::ClaimNextTurnRequest& request, const std::string& tenant_id) {
  const std::string& sql = ClaimSql(scope);
  const auto ttl_ms = static_cast<int64_t>(request.lease_ttl_ms());
  switch (scope) {
    case ClaimScope::kOneSession:
      return Exec(tx, sql, request.owner(), ttl_ms, kQueued, kRunning, tenant_id,
                  request.session_id());
    case ClaimScope::kOneTenant:
      return Exec(tx, sql, request.owner(), ttl_ms, kQueued, kRunning, tenant_id);
    case ClaimScope::kAnyTenant:
      break;
  }
  return Exec(tx, sql, request.owner(), ttl_ms, kQueued, kRunning);
}

// Fills `response` from a claim row; false when the row claimed nothing (the locked
// session's counters promised a turn it does not have).
bool ReadClaim(const pqxx::row& row, store_pb::ClaimNextTurnResponse* response) {
  if (row[kClaimedTurnColumn].is_null()) return false;
  response->set_recovery(row[kRecoveryColumn].as<bool>());
  ClaimedTurnFromRow(row, kLeaseColumn, response);
  *response->mutable_session() = SessionFromRow(row, kSessionColumn);
  if (!row[kUserMessageColumn].is_null()) {
    *response->mutable_user_message() = MessageFromRow(row, kUserMessageColumn);
  }
  return true;
}

// Recounts a session's queued turns after a claim found none behind its counters. The
// session is locked first, so no enqueue or cancel can slip in between.
void RepairQueueCounters(pqxx::work& tx, const std::string& session_id) {
  Exec(tx, "SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session_id);
  Exec(tx,
       "UPDATE sessions SET queued_turns = q.queued, "
       "waiting_since = CASE WHEN q.queued > 0 THEN coalesce(waiting_since, now()) END "
       "FROM (SELECT count(*) AS queued FROM turns WHERE session_id = $1 AND status = $2) q "
       "WHERE id = $1",
       session_id, kQueued);
}

// What one round of a claim came to.
struct ClaimRound {
  enum Outcome { kClaimed, kNothingRunnable, kDrifted, kPassOver, kRepaired } outcome;
  // kDrifted: the session whose counters need repair. kPassOver: the tenant to skip.
  std::string id;
  store_pb::ClaimNextTurnResponse claim;  // kClaimed.
  bool answers_after = false;             // kClaimed: see kAnswersAfterColumn.
};

// Reads a claim statement's result into a round.
ClaimRound ToRound(const pqxx::result& rows) {
  ClaimRound round{ClaimRound::kClaimed};
  if (rows.empty()) {
    round.outcome = ClaimRound::kNothingRunnable;
  } else if (!ReadClaim(rows[0], &round.claim)) {
    round.outcome = ClaimRound::kDrifted;
    round.id = rows[0][kLockedSessionColumn].as<std::string>();
  } else {
    round.answers_after = rows[0][kAnswersAfterColumn].as<bool>();
  }
  return round;
}

absl::StatusOr<ClaimRound> ClaimUncapped(PgPool& pool,
                                         const store_pb::ClaimNextTurnRequest& request) {
  const ClaimScope scope = ScopeOf(request);
  for (int round = 0; round < kClaimRounds; ++round) {
    auto result =
        pool.Autocommit<ClaimRound>([&](pqxx::nontransaction& tx) -> absl::StatusOr<ClaimRound> {
          return ToRound(RunClaim(tx, scope, request, request.tenant_id()));
        });
    if (!result.ok()) return result.status();
    if (result->outcome != ClaimRound::kDrifted) return result;
    auto repaired = pool.Transact<bool>([&](pqxx::work& tx) -> absl::StatusOr<bool> {
      RepairQueueCounters(tx, result->id);
      return true;
    });
    if (!repaired.ok()) return repaired.status();
  }
  return ClaimRound{ClaimRound::kNothingRunnable};
}

// The tenant of the first candidate in fair order among tenants below the cap (counted
// without a lock, so only a pre-filter) and not passed over yet; empty when none.
//   $1 cap  $2 tenants passed over (JSON array)
const std::string& PickTenantSql() {
  static const std::string* const sql = new std::string(absl::StrCat(
      "WITH RECURSIVE ", kTenantsWithWork,
      ", busy AS (SELECT ready.tenant_id, (SELECT count(*) FROM (SELECT 1 FROM sessions r "
      "    WHERE r.tenant_id = ready.tenant_id AND r.running_turn_id IS NOT NULL LIMIT $1) x) "
      "    AS running "
      "  FROM ready WHERE ready.tenant_id IS NOT NULL "
      "  AND ready.tenant_id NOT IN (SELECT jsonb_array_elements_text($2::jsonb))) "
      "SELECT busy.tenant_id FROM busy CROSS JOIN LATERAL (SELECT waiting_since FROM sessions "
      "  WHERE tenant_id = busy.tenant_id AND " PARLEY_RUNNABLE
      "  ORDER BY waiting_since LIMIT 1) oldest "
      "WHERE busy.running < $1 ORDER BY busy.running, oldest.waiting_since LIMIT 1"));
  return *sql;
}

#undef PARLEY_RUNNABLE

// The tenant a capped claim tries next: the request's (or its session's), or the fairest
// one not passed over yet. Empty when there is none.
std::string CappedClaimTenant(pqxx::work& tx, const store_pb::ClaimNextTurnRequest& request,
                              const google::protobuf::RepeatedPtrField<std::string>& passed_over) {
  const auto cap = static_cast<int64_t>(request.max_running_per_tenant());
  pqxx::result row;
  if (ScopeOf(request) == ClaimScope::kOneSession) {
    row = Exec(tx, "SELECT tenant_id FROM sessions WHERE id = $1 AND ($2 = '' OR tenant_id = $2)",
               request.session_id(), request.tenant_id());
  } else if (ScopeOf(request) == ClaimScope::kOneTenant) {
    return request.tenant_id();
  } else {
    row = Exec(tx, PickTenantSql(), cap, JsonArray(passed_over));
  }
  return row.empty() ? "" : row[0][0].as<std::string>();
}

// One round of a capped claim, in one transaction: choose a tenant, lock it, count its
// running turns, claim below the cap.
ClaimRound ClaimCappedRound(pqxx::work& tx, const store_pb::ClaimNextTurnRequest& request,
                            const google::protobuf::RepeatedPtrField<std::string>& passed_over) {
  const std::string tenant_id = CappedClaimTenant(tx, request, passed_over);
  if (tenant_id.empty()) return {ClaimRound::kNothingRunnable};
  // FOR NO KEY UPDATE: serialises this tenant's capped claims without blocking the
  // FOR KEY SHARE that inserting a session takes on its tenant.
  Exec(tx, "SELECT 1 FROM tenants WHERE id = $1 FOR NO KEY UPDATE", tenant_id);
  pqxx::result running =
      Exec(tx, "SELECT count(*) FROM sessions WHERE tenant_id = $1 AND running_turn_id IS NOT NULL",
           tenant_id);
  if (running[0][0].as<int64_t>() >= static_cast<int64_t>(request.max_running_per_tenant())) {
    return {ClaimRound::kPassOver, tenant_id};
  }
  const ClaimScope scope = ScopeOf(request) == ClaimScope::kOneSession ? ClaimScope::kOneSession
                                                                       : ClaimScope::kOneTenant;
  ClaimRound round = ToRound(RunClaim(tx, scope, request, tenant_id));
  switch (round.outcome) {
    case ClaimRound::kNothingRunnable:  // Its sessions were taken or are locked by others.
      return {ClaimRound::kPassOver, tenant_id};
    case ClaimRound::kDrifted:
      RepairQueueCounters(tx, round.id);
      return {ClaimRound::kRepaired};
    default:
      return round;
  }
}

absl::StatusOr<ClaimRound> ClaimCapped(PgPool& pool,
                                       const store_pb::ClaimNextTurnRequest& request) {
  google::protobuf::RepeatedPtrField<std::string> passed_over;
  for (int round = 0; round < kCappedClaimRounds; ++round) {
    auto result = pool.Transact<ClaimRound>([&](pqxx::work& tx) -> absl::StatusOr<ClaimRound> {
      return ClaimCappedRound(tx, request, passed_over);
    });
    if (!result.ok()) return result.status();
    if (result->outcome == ClaimRound::kPassOver) {
      // A claim scoped to one tenant or session has nowhere else to go.
      if (ScopeOf(request) != ClaimScope::kAnyTenant) break;
      passed_over.Add()->assign(result->id);
    } else if (result->outcome != ClaimRound::kRepaired) {
      return result;
    }
  }
  return ClaimRound{ClaimRound::kNothingRunnable};
}

// Messages sent while a turn ran were stored then, before that turn's answer: left
// there, a queued turn's prompt would lack the answer before it, and the conversation
// would read out of order. So when the claimed turn's user message has messages of
// another turn that ran after it, the user messages of the claimed turn and of every
// turn queued behind it move to the end, in turn order (each turn's own user messages
// keep their order, and its steered_position follows its user message). The session
// lock orders this with enqueues and completions.
absl::Status OrderQueuedMessagesLast(PgPool& pool, const std::string& session_id,
                                     const std::string& claimed_turn_id) {
  return pool
      .Transact<bool>([&](pqxx::work& tx) -> absl::StatusOr<bool> {
        pqxx::result session =
            Exec(tx, "SELECT message_count FROM sessions WHERE id = $1 FOR UPDATE", session_id);
        if (session.empty()) return false;
        pqxx::result waiting =
            Exec(tx,
                 "SELECT m.id FROM messages m JOIN turns t ON t.id = m.turn_id "
                 "WHERE m.session_id = $1 AND m.role = $2 AND (t.id = $3 OR t.status = $4) "
                 "ORDER BY t.position, m.position",
                 session_id, static_cast<int>(::parley::v1::ROLE_USER), claimed_turn_id, kQueued);
        int64_t last = session[0][0].as<int64_t>();
        for (const auto& row : waiting) {
          Exec(tx, "UPDATE messages SET position = $3 WHERE session_id = $1 AND id = $2",
               session_id, row[0].as<std::string>(), ++last);
        }
        Exec(tx,
             "UPDATE turns SET steered_position = m.position FROM messages m "
             "WHERE turns.session_id = $1 AND (turns.id = $2 OR turns.status = $3) "
             "AND m.session_id = $1 AND m.id = turns.user_message_id",
             session_id, claimed_turn_id, kQueued);
        Exec(tx, "UPDATE sessions SET message_count = $2 WHERE id = $1", session_id, last);
        return true;
      })
      .status();
}

}  // namespace

Status StoreServiceImpl::ClaimNextTurn(ServerContext*,
                                       const store_pb::ClaimNextTurnRequest* request,
                                       store_pb::ClaimNextTurnResponse* response) {
  absl::Status valid = CheckId(request->tenant_id(), "tenant_id", limits_, false);
  if (valid.ok()) valid = CheckId(request->session_id(), "session_id", limits_, false);
  if (valid.ok()) valid = CheckId(request->owner(), "owner", limits_);
  if (valid.ok()) valid = CheckLeaseTtl(request->lease_ttl_ms(), limits_);
  if (valid.ok() &&
      static_cast<int64_t>(request->max_running_per_tenant()) > limits_.max_running_per_tenant) {
    valid = InvalidArgumentError("max_running_per_tenant", "is too large",
                                 absl::StrCat(limits_.max_running_per_tenant));
  }
  if (!valid.ok()) return ToGrpcStatus(valid);
  absl::StatusOr<ClaimRound> round = request->max_running_per_tenant() == 0
                                         ? ClaimUncapped(pool_, *request)
                                         : ClaimCapped(pool_, *request);
  if (!round.ok()) return ToGrpcStatus(round.status());
  absl::StatusOr<store_pb::ClaimNextTurnResponse> result = std::move(round->claim);
  if (round->answers_after && !result->recovery()) {
    // Best effort: should it fail, the turn still runs, its history in stored order.
    (void)OrderQueuedMessagesLast(pool_, result->turn().session_id(), result->turn().id());
  }
  if (result.ok() && result->recovery()) {
    // A recovered turn may have committed steps; its new owner must not store them again.
    auto steps =
        pool_.Autocommit<uint32_t>([&](pqxx::nontransaction& tx) -> absl::StatusOr<uint32_t> {
          pqxx::result row =
              Exec(tx, "SELECT committed_steps FROM turns WHERE id = $1", result->turn().id());
          return row.empty() ? 0u : row[0][0].as<uint32_t>();
        });
    if (!steps.ok()) return ToGrpcStatus(steps.status());
    result->set_committed_steps(*steps);
  }
  return Respond(result, response);
}

}  // namespace parley::store
