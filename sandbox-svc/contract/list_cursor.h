// ListCursor: the position a ListSandboxes page token names — the create time (unix
// nanos) and id of the last sandbox of the previous page, as "<nanos>/<id>". The
// manager writes and reads it; the API refuses a malformed one before the manager sees it.
//
//   response.set_next_page_token(ListCursor{nanos, id}.ToToken());
//   absl::StatusOr<ListCursor> after = ListCursor::Parse(request.page_token());
#pragma once

#include <compare>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"

namespace parley::sandbox {

struct ListCursor {
  int64_t create_nanos = 0;
  std::string id;

  // INVALID_ARGUMENT naming page_token when `token` is not one ToToken wrote.
  static absl::StatusOr<ListCursor> Parse(const std::string& token) {
    ListCursor cursor;
    std::vector<std::string> parts = absl::StrSplit(token, '/');
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &cursor.create_nanos) ||
        parts[1].empty()) {
      return InvalidArgumentError("page_token", "not a token from a previous response");
    }
    cursor.id = parts[1];
    return cursor;
  }
  std::string ToToken() const { return absl::StrCat(create_nanos, "/", id); }
  auto operator<=>(const ListCursor&) const = default;
};

}  // namespace parley::sandbox
