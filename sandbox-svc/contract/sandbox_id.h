// Sandbox ids and the replica that owns them.
//
// With several `parley-sandbox` replicas, each answers only for the sandboxes it created,
// so an id says where it lives: a replica with an ordinal N (the StatefulSet Pod
// `parley-sandbox-N`) mints "sbx_rN_<ulid>", one without (a single instance, `scripts/dev`)
// mints "sbx_<ulid>". Callers route every call for an id to its owner; the format is
// opaque to users, who only pass ids back.
//
//   std::string id = SandboxIdForReplica(ids.Next("sbx"), /*replica=*/2);  // "sbx_r2_01J..."
//   absl::StatusOr<std::optional<uint32_t>> owner = SandboxIdOwner(id);    // 2
//
// Header-only and free of service code, like the rest of contract/, so the gateway and
// session-svc parse ids with the same rules as sandbox-svc.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/algorithm/container.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace parley::sandbox {

// Ordinals are below this (a StatefulSet of 10000 sandbox replicas is far off), which
// keeps ids short enough for Unix socket paths under the state dir.
inline constexpr uint32_t kMaxReplicaOrdinal = 9999;
// The longest id SandboxIdForReplica makes: "sbx_r9999_" + 26.
inline constexpr size_t kMaxSandboxIdLength = 36;

// `ulid_id` is a fresh "sbx_<ulid>"; the result names `replica` when there is one.
inline std::string SandboxIdForReplica(absl::string_view ulid_id, std::optional<uint32_t> replica) {
  if (!replica) return std::string(ulid_id);
  absl::string_view ulid = ulid_id;
  absl::ConsumePrefix(&ulid, "sbx_");
  return absl::StrCat("sbx_r", *replica, "_", ulid);
}

// The replica that owns `id`: its ordinal, or nullopt for an id minted without one
// (route it to any replica; the one that holds it is the only one). INVALID_ARGUMENT for
// an id that claims an owner but does not name a valid one.
inline absl::StatusOr<std::optional<uint32_t>> SandboxIdOwner(absl::string_view id) {
  absl::string_view rest = id;
  if (!absl::ConsumePrefix(&rest, "sbx_r")) return std::optional<uint32_t>();
  const size_t underscore = rest.find('_');
  uint32_t ordinal = 0;
  const absl::string_view digits = rest.substr(0, underscore);
  const bool well_formed = underscore != absl::string_view::npos && !digits.empty() &&
                           digits.size() <= 4 && (digits.size() == 1 || digits[0] != '0') &&
                           absl::c_all_of(digits, absl::ascii_isdigit) &&
                           absl::SimpleAtoi(digits, &ordinal) && underscore + 1 < rest.size();
  if (!well_formed) {
    return absl::InvalidArgumentError(
        absl::StrCat("sandbox_id \"", id, "\" is malformed: expected sbx_r<replica>_<id>"));
  }
  return std::optional<uint32_t>(ordinal);
}

// The part of an id that orders sandboxes by creation time across replicas (the ULID:
// its last 26 characters), for ids that passed SandboxIdOwner.
inline absl::string_view SandboxIdCreationKey(absl::string_view id) {
  constexpr size_t kUlidLength = 26;
  return id.size() <= kUlidLength ? id : id.substr(id.size() - kUlidLength);
}

// A replica's ordinal from `--replica`: the number itself ("2") or a StatefulSet Pod
// name that ends in it ("parley-sandbox-2", as the Downward API gives metadata.name).
inline absl::StatusOr<uint32_t> ParseReplicaOrdinal(absl::string_view value) {
  const size_t dash = value.rfind('-');
  const absl::string_view digits = dash == absl::string_view::npos ? value : value.substr(dash + 1);
  uint32_t ordinal = 0;
  if (digits.empty() || !absl::c_all_of(digits, absl::ascii_isdigit) ||
      !absl::SimpleAtoi(digits, &ordinal) || ordinal > kMaxReplicaOrdinal) {
    return absl::InvalidArgumentError(
        absl::StrCat("replica \"", value, "\" is neither an ordinal 0..", kMaxReplicaOrdinal,
                     " nor a StatefulSet Pod name ending in one (parley-sandbox-2)"));
  }
  return ordinal;
}

}  // namespace parley::sandbox
