// Input limits of the store, checked before any write (DESIGN §3: bad input gets a
// clear error and changes nothing). Each check returns INVALID_ARGUMENT naming the
// field and the limit.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "parley/store/v1/store.pb.h"

namespace parley::store {

struct StoreLimits {
  int64_t max_message_bytes = 1 << 20;  // Serialized parts of one message.
  int64_t max_message_parts = 64;
  int64_t max_metadata_bytes = 16 << 10;  // Keys plus values.
  int64_t max_tags = 32;
  int64_t max_tag_bytes = 64;
  int64_t max_idempotency_key_bytes = 256;
  int64_t max_id_bytes = 128;  // Tenant ids, external ids, user ids, owners.
  int64_t max_title_bytes = 1024;
  int64_t max_page_size = 1000;
  int64_t default_page_size = 50;
  int64_t max_read_events = 10000;
  // What one page of a list or read carries at most, past its first row (PageBudget):
  // well under gRPC's default 4 MiB limit on a received message, which every client
  // (the gateway's channel to the store among them) keeps unless it raises it. A page
  // cut short says has_more; the reader goes on from its last row.
  int64_t max_page_bytes = 2 << 20;
  int64_t max_event_batch = 10000;
  int64_t max_event_bytes = 4 << 20;
  int64_t max_lease_ttl_ms = 10 * 60 * 1000;
  int64_t max_running_per_tenant = 100000;  // The largest cap a claim may ask for.
  int64_t max_release_reason_bytes = 256;
};

// The bytes a page may still take (StoreLimits::max_page_bytes): each row is offered
// in order, and the first that would pass the budget ends the page (the first row of a
// page always goes, so a page is never empty for want of room).
class PageBudget {
 public:
  explicit PageBudget(const StoreLimits& limits) : left_(limits.max_page_bytes) {}
  // Whether a row of `bytes` goes in the page.
  bool Take(size_t bytes) {
    left_ -= static_cast<int64_t>(bytes);
    return rows_++ == 0 || left_ >= 0;
  }

 private:
  int64_t left_;
  int64_t rows_ = 0;
};

// Checks for one field; `field` is the path reported to the caller.
absl::Status CheckId(const std::string& value, const char* field, const StoreLimits& limits,
                     bool required = true);
absl::Status CheckTags(const google::protobuf::RepeatedPtrField<std::string>& tags,
                       const char* field, const StoreLimits& limits);
absl::Status CheckMetadata(const google::protobuf::Map<std::string, std::string>& metadata,
                           const char* field, const StoreLimits& limits);
absl::Status CheckParts(const google::protobuf::RepeatedPtrField<::parley::v1::Part>& parts,
                        const char* field, const StoreLimits& limits);
absl::Status CheckIdempotencyKey(const std::string& key, const char* field,
                                 const StoreLimits& limits);
// A lease duration: 1000 ms to limits.max_lease_ttl_ms.
absl::Status CheckLeaseTtl(uint64_t lease_ttl_ms, const StoreLimits& limits);
// 0 means the default; over the maximum is an error.
absl::Status CheckPageSize(uint32_t page_size, const char* field, int64_t max);

}  // namespace parley::store
