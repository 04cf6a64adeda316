// A small JSON Schema checker: recursive over the schema, first error wins.
#include "session-svc/tools/schema.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace parley::session::tools {
namespace {

using nlohmann::json;

bool HasType(const json& value, const std::string& type) {
  if (type == "object") return value.is_object();
  if (type == "string") return value.is_string();
  if (type == "integer") return value.is_number_integer();
  if (type == "number") return value.is_number();
  if (type == "boolean") return value.is_boolean();
  if (type == "array") return value.is_array();
  if (type == "null") return value.is_null();
  return true;  // A schema word we do not check.
}

absl::Status Check(const json& schema, const json& value, const std::string& where) {
  auto fail = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
  };
  if (schema.contains("type") && !HasType(value, schema["type"].get<std::string>())) {
    return fail(absl::StrCat("must be ", schema["type"].get<std::string>()));
  }
  if (value.is_number()) {
    if (schema.contains("minimum") && value.get<double>() < schema["minimum"].get<double>()) {
      return fail(absl::StrCat("must be at least ", schema["minimum"].dump()));
    }
    if (schema.contains("maximum") && value.get<double>() > schema["maximum"].get<double>()) {
      return fail(absl::StrCat("must be at most ", schema["maximum"].dump()));
    }
  }
  if (value.is_string()) {
    const size_t size = value.get_ref<const std::string&>().size();
    if (schema.contains("minLength") && size < schema["minLength"].get<size_t>()) {
      return fail(absl::StrCat("must be at least ", schema["minLength"].dump(), " bytes"));
    }
    if (schema.contains("maxLength") && size > schema["maxLength"].get<size_t>()) {
      return fail(absl::StrCat("must be at most ", schema["maxLength"].dump(), " bytes"));
    }
  }
  if (value.is_array() && schema.contains("items")) {
    for (size_t i = 0; i < value.size(); ++i) {
      absl::Status item = Check(schema["items"], value[i], absl::StrCat(where, "[", i, "]"));
      if (!item.ok()) return item;
    }
  }
  if (!value.is_object()) return absl::OkStatus();
  const json empty = json::object();
  const json& properties = schema.contains("properties") ? schema["properties"] : empty;
  if (schema.contains("required")) {
    for (const json& name : schema["required"]) {
      if (!value.contains(name.get<std::string>())) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".", name.get<std::string>(), ": required"));
      }
    }
  }
  const bool closed = schema.value("additionalProperties", true) == false;
  for (const auto& [name, field] : value.items()) {
    const std::string at = absl::StrCat(where, ".", name);
    if (!properties.contains(name)) {
      if (closed) return absl::InvalidArgumentError(absl::StrCat(at, ": unknown argument"));
      continue;
    }
    if (absl::Status status = Check(properties[name], field, at); !status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<json> CheckArguments(const json& schema, std::string_view arguments_json) {
  json arguments = json::parse(arguments_json.empty() ? std::string_view("{}") : arguments_json,
                               nullptr, /*allow_exceptions=*/false);
  if (arguments.is_discarded()) {
    return absl::InvalidArgumentError("arguments: not valid JSON");
  }
  if (absl::Status status = Check(schema, arguments, "arguments"); !status.ok()) return status;
  return arguments;
}

}  // namespace parley::session::tools
