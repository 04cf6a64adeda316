// Status payloads are stored under their proto type URL, exactly as they appear inside
// the Any of an RpcStatus, so the conversion in both directions is a loop with no
// per-type code.
#include "common/status.h"

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace parley {
namespace {

template <typename Message>
std::optional<Message> GetPayload(const absl::Status& status) {
  auto payload = status.GetPayload(TypeUrlFor(Message::descriptor()->full_name()));
  if (!payload) return std::nullopt;
  Message message;
  if (!message.ParseFromString(std::string(*payload))) return std::nullopt;
  return message;
}

template <typename Message>
void SetPayload(absl::Status& status, const Message& message) {
  status.SetPayload(TypeUrlFor(Message::descriptor()->full_name()),
                    absl::Cord(message.SerializeAsString()));
}

std::string FieldMessage(absl::string_view field, absl::string_view description,
                         absl::string_view limit) {
  std::string text = absl::StrCat(field, ": ", description);
  if (!limit.empty()) absl::StrAppend(&text, " (limit: ", limit, ")");
  return text;
}

}  // namespace

std::string TypeUrlFor(absl::string_view full_name) {
  return absl::StrCat("type.googleapis.com/", full_name);
}

absl::Status InvalidArgumentError(absl::string_view field, absl::string_view description,
                                  absl::string_view limit) {
  absl::Status status = absl::InvalidArgumentError(FieldMessage(field, description, limit));
  v1::BadRequest bad_request;
  v1::FieldViolation* violation = bad_request.add_field_violations();
  violation->set_field(std::string(field));
  violation->set_description(std::string(description));
  violation->set_limit(std::string(limit));
  SetPayload(status, bad_request);
  return status;
}

void AddFieldViolation(absl::Status& status, absl::string_view field, absl::string_view description,
                       absl::string_view limit) {
  v1::BadRequest bad_request = GetBadRequest(status).value_or(v1::BadRequest());
  v1::FieldViolation* violation = bad_request.add_field_violations();
  violation->set_field(std::string(field));
  violation->set_description(std::string(description));
  violation->set_limit(std::string(limit));
  absl::Status updated(
      status.code(), absl::StrCat(status.message(), "; ", FieldMessage(field, description, limit)));
  status.ForEachPayload(
      [&](absl::string_view url, const absl::Cord& payload) { updated.SetPayload(url, payload); });
  SetPayload(updated, bad_request);
  status = std::move(updated);
}

void SetErrorInfo(absl::Status& status, absl::string_view reason,
                  const std::map<std::string, std::string>& metadata) {
  v1::ErrorInfo info;
  info.set_reason(std::string(reason));
  info.set_domain("parley.dev");
  for (const auto& [key, value] : metadata) (*info.mutable_metadata())[key] = value;
  SetPayload(status, info);
}

void SetRetryDelay(absl::Status& status, int64_t retry_delay_ms) {
  v1::RetryInfo info;
  info.set_retry_delay_ms(retry_delay_ms);
  SetPayload(status, info);
}

std::optional<v1::BadRequest> GetBadRequest(const absl::Status& status) {
  return GetPayload<v1::BadRequest>(status);
}
std::optional<v1::ErrorInfo> GetErrorInfo(const absl::Status& status) {
  return GetPayload<v1::ErrorInfo>(status);
}
std::optional<v1::RetryInfo> GetRetryInfo(const absl::Status& status) {
  return GetPayload<v1::RetryInfo>(status);
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  auto code = static_cast<grpc::StatusCode>(status.code());
  std::string message(status.message());
  v1::RpcStatus rpc_status;
  status.ForEachPayload([&](absl::string_view url, const absl::Cord& payload) {
    google::protobuf::Any* any = rpc_status.add_details();
    any->set_type_url(std::string(url));
    any->set_value(std::string(payload));
  });
  if (rpc_status.details_size() == 0) return grpc::Status(code, message);
  rpc_status.set_code(static_cast<int32_t>(code));
  rpc_status.set_message(message);
  return grpc::Status(code, message, rpc_status.SerializeAsString());
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  absl::Status result(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  v1::RpcStatus rpc_status;
  if (!status.error_details().empty() && rpc_status.ParseFromString(status.error_details())) {
    for (const google::protobuf::Any& any : rpc_status.details()) {
      result.SetPayload(any.type_url(), absl::Cord(any.value()));
    }
  }
  return result;
}

}  // namespace parley
