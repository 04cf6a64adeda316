// Tool arguments checked against the tool's JSON schema before anything runs.
//
// Covers the part of JSON Schema the built-in tools use: "type" (object, string,
// integer, number, boolean, array), "properties", "required",
// "additionalProperties": false, "minimum"/"maximum", "minLength"/"maxLength" and
// "items". A model that sends anything else gets an error naming the field, which goes
// back to it as the tool's result.
//
//   absl::StatusOr<nlohmann::json> args = CheckArguments(schema, call.arguments_json());
//   if (!args.ok()) {
//     return ToolRun{.output = std::string(args.status().message()), .is_error = true};
//   }
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

#include "absl/status/statusor.h"

namespace parley::session::tools {

// Parses `arguments_json` and checks it against `schema`. INVALID_ARGUMENT with a
// message naming the first offending field ("arguments.path: required").
absl::StatusOr<nlohmann::json> CheckArguments(const nlohmann::json& schema,
                                              std::string_view arguments_json);

}  // namespace parley::session::tools
