#include "store-svc/api/rows.h"

#include <google/protobuf/util/json_util.h>

#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/proto_time.h"
#include "common/serialize.h"
#include "common/status.h"
#include "store-svc/db/pool.h"

namespace parley::store {
namespace {

int64_t MicrosOrZero(const pqxx::field& field) { return field.is_null() ? 0 : field.as<int64_t>(); }

void FillStrings(const std::string& json, google::protobuf::RepeatedPtrField<std::string>* out) {
  const nlohmann::json array = nlohmann::json::parse(json);
  for (const auto& value : array) out->Add(value.get<std::string>());
}

void FillMap(const std::string& json, google::protobuf::Map<std::string, std::string>* out) {
  // Parse into a named object: iterating items() of a temporary would outlive it.
  const nlohmann::json object = nlohmann::json::parse(json);
  for (const auto& [key, value] : object.items()) (*out)[key] = value.get<std::string>();
}

}  // namespace

#define PARLEY_MICROS(column) "(extract(epoch from " column ") * 1000000)::bigint"

const char kSessionColumns[] =
    "id, tenant_id, coalesce(external_id, ''), user_id, title, status, agent_config::text, "
    "array_to_json(tags)::text, metadata::text, version, epoch, "
    "(SELECT coalesce(max(seq), 0) FROM events WHERE events.session_id = sessions.id), "
    "coalesce(running_turn_id, ''), " PARLEY_MICROS("create_time") ", " PARLEY_MICROS(
        "update_time") ", " PARLEY_MICROS("close_time");

const char kMessageColumns[] =
    "id, session_id, turn_id, role, parts::text, coalesce(idempotency_key, ''), " PARLEY_MICROS(
        "create_time");

#define PARLEY_TURN_COLUMNS                                                            \
  "id, session_id, status, user_message_id, finish_reason, usage::text, "              \
  "coalesce(error::text, ''), attempt, first_seq, last_seq, steps, cancel_requested, " \
  "time_to_first_token_ms, " PARLEY_MICROS("create_time") ", " PARLEY_MICROS(          \
      "start_time") ", " PARLEY_MICROS("end_time")
const char kTurnColumns[] = PARLEY_TURN_COLUMNS;
const char kClaimedTurnColumns[] = "lease_epoch, " PARLEY_MICROS(
    "lease_expiry") ", agent_config::text, traceparent, " PARLEY_TURN_COLUMNS;
#undef PARLEY_TURN_COLUMNS

const char kApiKeyColumns[] =
    "id, tenant_id, name, prefix, array_to_json(scopes)::text, " PARLEY_MICROS(
        "create_time") ", " PARLEY_MICROS("last_used_time") ", " PARLEY_MICROS("revoke_time");

#undef PARLEY_MICROS

::parley::v1::Session SessionFromRow(const pqxx::row& row, int o) {
  ::parley::v1::Session s;
  s.set_id(row[o + 0].as<std::string>());
  s.set_tenant_id(row[o + 1].as<std::string>());
  s.set_external_id(row[o + 2].as<std::string>());
  s.set_user_id(row[o + 3].as<std::string>());
  s.set_title(row[o + 4].as<std::string>());
  s.set_status(static_cast<::parley::v1::SessionStatus>(row[o + 5].as<int>()));
  ProtoFromJson(row[o + 6].as<std::string>(), s.mutable_agent_config());
  FillStrings(row[o + 7].as<std::string>(), s.mutable_tags());
  FillMap(row[o + 8].as<std::string>(), s.mutable_metadata());
  s.set_version(row[o + 9].as<uint64_t>());
  s.set_epoch(row[o + 10].as<uint64_t>());
  s.set_last_seq(row[o + 11].as<uint64_t>());
  s.set_current_turn_id(row[o + 12].as<std::string>());
  *s.mutable_create_time() = ToTimestamp(absl::FromUnixMicros(MicrosOrZero(row[o + 13])));
  *s.mutable_update_time() = ToTimestamp(absl::FromUnixMicros(MicrosOrZero(row[o + 14])));
  if (!row[o + 15].is_null())
    *s.mutable_close_time() = ToTimestamp(absl::FromUnixMicros(row[o + 15].as<int64_t>()));
  return s;
}

::parley::v1::Message MessageFromRow(const pqxx::row& row, int o) {
  ::parley::v1::Message m;
  m.set_id(row[o + 0].as<std::string>());
  m.set_session_id(row[o + 1].as<std::string>());
  m.set_turn_id(row[o + 2].as<std::string>());
  m.set_role(static_cast<::parley::v1::Role>(row[o + 3].as<int>()));
  ::parley::v1::Message parts;
  ProtoFromJson(row[o + 4].as<std::string>(), &parts);
  *m.mutable_parts() = std::move(*parts.mutable_parts());
  m.set_idempotency_key(row[o + 5].as<std::string>());
  *m.mutable_create_time() = ToTimestamp(absl::FromUnixMicros(MicrosOrZero(row[o + 6])));
  return m;
}

::parley::v1::Turn TurnFromRow(const pqxx::row& row, int o) {
  ::parley::v1::Turn t;
  t.set_id(row[o + 0].as<std::string>());
  t.set_session_id(row[o + 1].as<std::string>());
  t.set_status(static_cast<::parley::v1::TurnStatus>(row[o + 2].as<int>()));
  t.set_user_message_id(row[o + 3].as<std::string>());
  t.set_finish_reason(static_cast<::parley::v1::FinishReason>(row[o + 4].as<int>()));
  ProtoFromJson(row[o + 5].as<std::string>(), t.mutable_usage());
  if (std::string error = row[o + 6].as<std::string>(); !error.empty()) {
    ProtoFromJson(error, t.mutable_error());
  }
  t.set_attempt(row[o + 7].as<uint32_t>());
  t.set_first_seq(row[o + 8].as<uint64_t>());
  t.set_last_seq(row[o + 9].as<uint64_t>());
  t.set_steps(row[o + 10].as<uint32_t>());
  t.set_cancel_requested(row[o + 11].as<bool>());
  t.set_time_to_first_token_ms(row[o + 12].as<uint64_t>());
  *t.mutable_create_time() = ToTimestamp(absl::FromUnixMicros(MicrosOrZero(row[o + 13])));
  if (!row[o + 14].is_null())
    *t.mutable_start_time() = ToTimestamp(absl::FromUnixMicros(row[o + 14].as<int64_t>()));
  if (!row[o + 15].is_null())
    *t.mutable_end_time() = ToTimestamp(absl::FromUnixMicros(row[o + 15].as<int64_t>()));
  return t;
}

void ClaimedTurnFromRow(const pqxx::row& row, int o,
                        ::parley::store::v1::ClaimNextTurnResponse* claim) {
  claim->set_lease_epoch(row[o + 0].as<uint64_t>());
  *claim->mutable_lease_expiry() = ToTimestamp(absl::FromUnixMicros(row[o + 1].as<int64_t>()));
  ProtoFromJson(row[o + 2].as<std::string>(), claim->mutable_agent_config());
  claim->set_traceparent(row[o + 3].as<std::string>());
  *claim->mutable_turn() = TurnFromRow(row, o + 4);
}

::parley::v1::Turn SelectTurn(pqxx::work& tx, const std::string& tenant_id,
                              const std::string& turn_id) {
  pqxx::result row = Exec(
      tx, absl::StrCat("SELECT ", kTurnColumns, " FROM turns WHERE tenant_id = $1 AND id = $2"),
      tenant_id, turn_id);
  if (row.empty()) throw StatusException{absl::NotFoundError("turn not found")};
  return TurnFromRow(row[0]);
}

::parley::v1::ApiKey ApiKeyFromRow(const pqxx::row& row, int o) {
  ::parley::v1::ApiKey k;
  k.set_id(row[o + 0].as<std::string>());
  k.set_tenant_id(row[o + 1].as<std::string>());
  k.set_name(row[o + 2].as<std::string>());
  k.set_prefix(row[o + 3].as<std::string>());
  FillStrings(row[o + 4].as<std::string>(), k.mutable_scopes());
  *k.mutable_create_time() = ToTimestamp(absl::FromUnixMicros(MicrosOrZero(row[o + 5])));
  if (!row[o + 6].is_null())
    *k.mutable_last_used_time() = ToTimestamp(absl::FromUnixMicros(row[o + 6].as<int64_t>()));
  if (!row[o + 7].is_null())
    *k.mutable_revoke_time() = ToTimestamp(absl::FromUnixMicros(row[o + 7].as<int64_t>()));
  return k;
}

std::string ProtoToJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  return json;
}

void ProtoFromJson(const std::string& json, google::protobuf::Message* message) {
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;  // Rows written by a newer release.
  auto status = google::protobuf::util::JsonStringToMessage(json, message, options);
  if (!status.ok()) {
    throw StatusException{absl::InternalError(
        absl::StrCat("stored ", message->GetTypeName(), " does not parse: ", status.ToString()))};
  }
}

std::string JsonArray(const google::protobuf::RepeatedPtrField<std::string>& values) {
  nlohmann::json array = nlohmann::json::array();
  for (const std::string& value : values) array.push_back(value);
  return array.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string JsonObject(const google::protobuf::Map<std::string, std::string>& values) {
  nlohmann::json object = nlohmann::json::object();
  for (const auto& [key, value] : values) object[key] = value;
  return object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

uint64_t Fingerprint(const google::protobuf::Message& message) {
  uint64_t hash = 1469598103934665603ull;
  for (unsigned char c : SerializeDeterministic(message)) {
    hash = (hash ^ c) * 1099511628211ull;
  }
  return hash;
}

std::string EncodePageToken(const std::string& last_id, uint64_t fingerprint) {
  nlohmann::json token = {{"a", last_id}, {"f", absl::StrCat(fingerprint)}};
  return absl::WebSafeBase64Escape(token.dump());
}

absl::Status DecodePageToken(const std::string& token, uint64_t fingerprint, const char* field,
                             std::string* last_id) {
  std::string text;
  if (!absl::WebSafeBase64Unescape(token, &text)) {
    return InvalidArgumentError(field, "is not a page token from this API");
  }
  nlohmann::json json = nlohmann::json::parse(text, nullptr, false);
  if (json.is_discarded() || !json.is_object() || !json.contains("a") || !json.contains("f") ||
      !json["a"].is_string() || !json["f"].is_string()) {
    return InvalidArgumentError(field, "is not a page token from this API");
  }
  if (json["f"].get<std::string>() != absl::StrCat(fingerprint)) {
    return InvalidArgumentError(field, "was issued for different filters or order");
  }
  *last_id = json["a"].get<std::string>();
  return absl::OkStatus();
}

std::string QueuedCancelErrorJson(const std::string& reason) {
  ::parley::v1::TurnError error;
  error.set_kind(::parley::v1::TURN_ERROR_KIND_CANCELLED);
  error.set_reason(reason);
  error.set_message("the turn was cancelled before it started");
  return ProtoToJson(error);
}

}  // namespace parley::store
