// Conversions between Postgres rows and the protos of parley.v1, shared by every store
// handler. Each resource has one column list (k*Columns) and one reader, so a SELECT
// and its reader can never drift apart.
//
// Encoding choices: timestamps are read as microseconds since the epoch; text arrays
// and string maps travel as JSON text (`$1::jsonb`); message parts and agent configs
// are stored as the proto's JSON form (JSONB, readable in psql); events as the
// serialized proto (bytea).
#pragma once

#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>

#include <cstdint>
#include <pqxx/pqxx>
#include <string>

#include "absl/status/status.h"
#include "parley/store/v1/store.pb.h"
#include "parley/v1/resources.pb.h"

namespace parley::store {

// `alias.` is prefixed where a query joins tables.
extern const char kSessionColumns[];
extern const char kMessageColumns[];
extern const char kTurnColumns[];
extern const char kApiKeyColumns[];
// How many columns kTurnColumns, kSessionColumns and kMessageColumns select, for
// queries that read more after a turn, a session or a message.
inline constexpr int kTurnColumnCount = 16;
// A claimed turn: its lease epoch, lease expiry, agent configuration and traceparent,
// then kTurnColumns; ClaimedTurnFromRow reads them into a claim.
extern const char kClaimedTurnColumns[];
inline constexpr int kClaimedTurnColumnCount = 4 + kTurnColumnCount;
inline constexpr int kSessionColumnCount = 16;
inline constexpr int kMessageColumnCount = 7;

// Readers start at column `offset` of the row (for queries that select more first).
::parley::v1::Session SessionFromRow(const pqxx::row& row, int offset = 0);
::parley::v1::Message MessageFromRow(const pqxx::row& row, int offset = 0);
::parley::v1::Turn TurnFromRow(const pqxx::row& row, int offset = 0);
void ClaimedTurnFromRow(const pqxx::row& row, int offset,
                        ::parley::store::v1::ClaimNextTurnResponse* claim);
::parley::v1::ApiKey ApiKeyFromRow(const pqxx::row& row, int offset = 0);

// The tenant's turn `turn_id`; throws StatusException(NOT_FOUND) when there is none.
::parley::v1::Turn SelectTurn(pqxx::work& tx, const std::string& tenant_id,
                              const std::string& turn_id);

// Proto <-> JSON text. ProtoFromJson throws StatusException(INTERNAL) on a row that
// does not parse, which would be a bug or a corrupted table.
std::string ProtoToJson(const google::protobuf::Message& message);

// The error stored on a turn cancelled before it ran (kind CANCELLED, `reason` e.g.
// "CANCELLED_BY_USER", "SESSION_CLOSED", "INTERRUPTED"), as JSON for turns.error.
std::string QueuedCancelErrorJson(const std::string& reason);
void ProtoFromJson(const std::string& json, google::protobuf::Message* message);

std::string JsonArray(const google::protobuf::RepeatedPtrField<std::string>& values);
std::string JsonObject(const google::protobuf::Map<std::string, std::string>& values);

// Opaque, URL-safe page tokens that remember the last row and a fingerprint of the
// query they belong to. DecodePageToken fails with INVALID_ARGUMENT on a malformed
// token or one issued for another query.
std::string EncodePageToken(const std::string& last_id, uint64_t fingerprint);
absl::Status DecodePageToken(const std::string& token, uint64_t fingerprint, const char* field,
                             std::string* last_id);
// FNV-1a of the message's deterministic bytes (stable across processes and restarts).
uint64_t Fingerprint(const google::protobuf::Message& message);

}  // namespace parley::store
