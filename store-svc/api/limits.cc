#include "store-svc/api/limits.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace parley::store {
namespace {

std::string Bytes(int64_t n) { return absl::StrCat(n, " bytes"); }

}  // namespace

absl::Status CheckId(const std::string& value, const char* field, const StoreLimits& limits,
                     bool required) {
  if (value.empty()) {
    return required ? InvalidArgumentError(field, "is required") : absl::OkStatus();
  }
  if (static_cast<int64_t>(value.size()) > limits.max_id_bytes) {
    return InvalidArgumentError(field, "is too long", Bytes(limits.max_id_bytes));
  }
  for (unsigned char c : value) {
    if (c < 0x20 || c == 0x7f) {
      return InvalidArgumentError(field, "must not contain control characters");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckTags(const google::protobuf::RepeatedPtrField<std::string>& tags,
                       const char* field, const StoreLimits& limits) {
  if (tags.size() > limits.max_tags) {
    return InvalidArgumentError(field, "has too many tags", absl::StrCat(limits.max_tags));
  }
  for (int i = 0; i < tags.size(); ++i) {
    std::string path = absl::StrCat(field, "[", i, "]");
    if (tags[i].empty()) return InvalidArgumentError(path, "must not be empty");
    if (static_cast<int64_t>(tags[i].size()) > limits.max_tag_bytes) {
      return InvalidArgumentError(path, "is too long", Bytes(limits.max_tag_bytes));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckMetadata(const google::protobuf::Map<std::string, std::string>& metadata,
                           const char* field, const StoreLimits& limits) {
  int64_t total = 0;
  for (const auto& [key, value] : metadata) {
    if (key.empty()) return InvalidArgumentError(field, "keys must not be empty");
    total += static_cast<int64_t>(key.size() + value.size());
  }
  if (total > limits.max_metadata_bytes) {
    return InvalidArgumentError(field, "is too large", Bytes(limits.max_metadata_bytes));
  }
  return absl::OkStatus();
}

absl::Status CheckParts(const google::protobuf::RepeatedPtrField<::parley::v1::Part>& parts,
                        const char* field, const StoreLimits& limits) {
  if (parts.empty()) return InvalidArgumentError(field, "needs at least one part");
  if (parts.size() > limits.max_message_parts) {
    return InvalidArgumentError(field, "has too many parts",
                                absl::StrCat(limits.max_message_parts));
  }
  int64_t total = 0;
  for (int i = 0; i < parts.size(); ++i) {
    if (parts[i].kind_case() == ::parley::v1::Part::KIND_NOT_SET) {
      return InvalidArgumentError(absl::StrCat(field, "[", i, "]"), "has no content");
    }
    total += static_cast<int64_t>(parts[i].ByteSizeLong());
  }
  if (total > limits.max_message_bytes) {
    return InvalidArgumentError(field, "is too large", Bytes(limits.max_message_bytes));
  }
  return absl::OkStatus();
}

absl::Status CheckIdempotencyKey(const std::string& key, const char* field,
                                 const StoreLimits& limits) {
  if (static_cast<int64_t>(key.size()) > limits.max_idempotency_key_bytes) {
    return InvalidArgumentError(field, "is too long", Bytes(limits.max_idempotency_key_bytes));
  }
  return absl::OkStatus();
}

absl::Status CheckLeaseTtl(uint64_t lease_ttl_ms, const StoreLimits& limits) {
  if (lease_ttl_ms < 1000 || static_cast<int64_t>(lease_ttl_ms) > limits.max_lease_ttl_ms) {
    return InvalidArgumentError("lease_ttl_ms", "must be between 1000 and the maximum",
                                absl::StrCat(limits.max_lease_ttl_ms, " ms"));
  }
  return absl::OkStatus();
}

absl::Status CheckPageSize(uint32_t page_size, const char* field, int64_t max) {
  if (page_size > max) return InvalidArgumentError(field, "is too large", absl::StrCat(max));
  return absl::OkStatus();
}

}  // namespace parley::store
