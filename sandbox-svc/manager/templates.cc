// Template file parsing with nlohmann::json. Every accessor checks the type and the
// allowed keys and reports the full path of what is wrong.
#include "sandbox-svc/manager/templates.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "sandbox-svc/contract/exec_validation.h"

namespace parley::sandbox {
namespace {

using nlohmann::json;
namespace sandbox_pb = ::parley::sandbox::v1;

absl::Status Bad(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

absl::Status CheckKeys(const json& object, const std::string& path,
                       const std::set<std::string>& allowed) {
  if (!object.is_object()) return Bad(path, "expected an object");
  for (const auto& [key, value] : object.items()) {
    if (!allowed.count(key)) {
      return Bad(absl::StrCat(path, path.empty() ? "" : ".", key),
                 absl::StrCat("unknown key (allowed: ", absl::StrJoin(allowed, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status GetString(const json& object, const std::string& path, const char* key,
                       std::string* out) {
  if (!object.contains(key)) return absl::OkStatus();
  const json& value = object.at(key);
  if (!value.is_string()) return Bad(absl::StrCat(path, ".", key), "expected a string");
  *out = value.get<std::string>();
  return absl::OkStatus();
}

template <typename T>
absl::Status GetUnsigned(const json& object, const std::string& path, const char* key, T* out) {
  if (!object.contains(key)) return absl::OkStatus();
  const json& value = object.at(key);
  if (!value.is_number_unsigned() && !(value.is_number_integer() && value.get<int64_t>() >= 0)) {
    return Bad(absl::StrCat(path, ".", key), "expected an unsigned integer");
  }
  uint64_t number = value.get<uint64_t>();
  if (number > std::numeric_limits<T>::max()) {
    return Bad(absl::StrCat(path, ".", key), "too large");
  }
  *out = static_cast<T>(number);
  return absl::OkStatus();
}

absl::Status GetBool(const json& object, const std::string& path, const char* key, bool* out) {
  if (!object.contains(key)) return absl::OkStatus();
  const json& value = object.at(key);
  if (!value.is_boolean()) return Bad(absl::StrCat(path, ".", key), "expected true or false");
  *out = value.get<bool>();
  return absl::OkStatus();
}

absl::Status GetStringMap(const json& object, const std::string& path, const char* key,
                          std::map<std::string, std::string>* out) {
  if (!object.contains(key)) return absl::OkStatus();
  const json& value = object.at(key);
  std::string here = absl::StrCat(path, ".", key);
  if (!value.is_object()) return Bad(here, "expected an object of strings");
  for (const auto& [name, entry] : value.items()) {
    if (!entry.is_string()) return Bad(absl::StrCat(here, ".", name), "expected a string");
    (*out)[name] = entry.get<std::string>();
  }
  return absl::OkStatus();
}

absl::Status ParseLimits(const json& object, const std::string& path,
                         sandbox_pb::SandboxLimits* limits) {
  PARLEY_RETURN_IF_ERROR(CheckKeys(object, path,
                                   {"cpu_ms", "memory_bytes", "max_processes", "max_open_files",
                                    "max_file_size_bytes", "network"}));
  uint64_t cpu_ms = limits->cpu_ms(), memory = limits->memory_bytes(),
           file_size = limits->max_file_size_bytes();
  uint32_t processes = limits->max_processes(), files = limits->max_open_files();
  bool network = limits->network();
  PARLEY_RETURN_IF_ERROR(GetUnsigned(object, path, "cpu_ms", &cpu_ms));
  PARLEY_RETURN_IF_ERROR(GetUnsigned(object, path, "memory_bytes", &memory));
  PARLEY_RETURN_IF_ERROR(GetUnsigned(object, path, "max_processes", &processes));
  PARLEY_RETURN_IF_ERROR(GetUnsigned(object, path, "max_open_files", &files));
  PARLEY_RETURN_IF_ERROR(GetUnsigned(object, path, "max_file_size_bytes", &file_size));
  PARLEY_RETURN_IF_ERROR(GetBool(object, path, "network", &network));
  if (memory > 0 && memory < (16ull << 20)) {
    return Bad(path + ".memory_bytes", "below 16 MiB no program can start");
  }
  limits->set_cpu_ms(cpu_ms);
  limits->set_memory_bytes(memory);
  limits->set_max_processes(processes);
  limits->set_max_open_files(files);
  limits->set_max_file_size_bytes(file_size);
  limits->set_network(network);
  return absl::OkStatus();
}

absl::Status ParseTemplate(const json& object, const std::string& path, TemplateConfig* out) {
  PARLEY_RETURN_IF_ERROR(CheckKeys(object, path,
                                   {"name", "description", "provider", "image", "limits",
                                    "default_ttl_s", "default_idle_timeout_s", "default_on_expiry",
                                    "warm_pool_target", "env", "local", "kubernetes"}));
  TemplateConfig config = DefaultTemplates().by_name.at("default");
  config.proto.clear_name();
  config.proto.clear_description();
  std::string name, description, provider = "local", image, on_expiry = "destroy";
  PARLEY_RETURN_IF_ERROR(GetString(object, path, "name", &name));
  if (name.empty()) return Bad(path + ".name", "required");
  PARLEY_RETURN_IF_ERROR(GetString(object, path, "description", &description));
  PARLEY_RETURN_IF_ERROR(GetString(object, path, "provider", &provider));
  if (provider != "local" && provider != "kubernetes") {
    return Bad(path + ".provider", "expected \"local\" or \"kubernetes\"");
  }
  PARLEY_RETURN_IF_ERROR(GetString(object, path, "image", &image));
  if (provider == "kubernetes" && image.empty()) {
    return Bad(path + ".image", "required for the kubernetes provider");
  }
  if (object.contains("limits")) {
    PARLEY_RETURN_IF_ERROR(
        ParseLimits(object.at("limits"), path + ".limits", config.proto.mutable_limits()));
  }
  uint64_t ttl = config.proto.default_ttl_s(), idle = config.proto.default_idle_timeout_s();
  uint32_t pool = 0;
  PARLEY_RETURN_IF_ERROR(GetUnsigned(object, path, "default_ttl_s", &ttl));
  PARLEY_RETURN_IF_ERROR(GetUnsigned(object, path, "default_idle_timeout_s", &idle));
  PARLEY_RETURN_IF_ERROR(GetUnsigned(object, path, "warm_pool_target", &pool));
  if (pool > 1000) return Bad(path + ".warm_pool_target", "at most 1000");
  PARLEY_RETURN_IF_ERROR(GetString(object, path, "default_on_expiry", &on_expiry));
  if (on_expiry != "destroy" && on_expiry != "pause") {
    return Bad(path + ".default_on_expiry", "expected \"destroy\" or \"pause\"");
  }
  config.env.clear();
  PARLEY_RETURN_IF_ERROR(GetStringMap(object, path, "env", &config.env));
  for (const auto& [env_name, value] : config.env) {
    if (!IsValidEnvName(env_name)) {
      return Bad(absl::StrCat(path, ".env.", env_name), "names match [A-Za-z_][A-Za-z0-9_]*");
    }
  }
  if (object.contains("local")) {
    const json& local = object.at("local");
    PARLEY_RETURN_IF_ERROR(CheckKeys(local, path + ".local", {"tmp_size_bytes", "cpu_percent"}));
    PARLEY_RETURN_IF_ERROR(
        GetUnsigned(local, path + ".local", "tmp_size_bytes", &config.local.tmp_size_bytes));
    PARLEY_RETURN_IF_ERROR(
        GetUnsigned(local, path + ".local", "cpu_percent", &config.local.cpu_percent));
  }
  if (object.contains("kubernetes")) {
    const json& kube = object.at("kubernetes");
    std::string here = path + ".kubernetes";
    PARLEY_RETURN_IF_ERROR(
        CheckKeys(kube, here,
                  {"namespace", "runtime_class_name", "service_account", "cpu_millis",
                   "ephemeral_storage_bytes", "workspace_storage_bytes", "storage_class_name",
                   "node_selector"}));
    auto& k = config.kubernetes;
    PARLEY_RETURN_IF_ERROR(GetString(kube, here, "namespace", &k.namespace_name));
    PARLEY_RETURN_IF_ERROR(GetString(kube, here, "runtime_class_name", &k.runtime_class_name));
    PARLEY_RETURN_IF_ERROR(GetString(kube, here, "service_account", &k.service_account));
    PARLEY_RETURN_IF_ERROR(GetUnsigned(kube, here, "cpu_millis", &k.cpu_millis));
    PARLEY_RETURN_IF_ERROR(
        GetUnsigned(kube, here, "ephemeral_storage_bytes", &k.ephemeral_storage_bytes));
    PARLEY_RETURN_IF_ERROR(
        GetUnsigned(kube, here, "workspace_storage_bytes", &k.workspace_storage_bytes));
    if (k.workspace_storage_bytes == 0) {
      return Bad(here + ".workspace_storage_bytes", "must be positive");
    }
    PARLEY_RETURN_IF_ERROR(GetString(kube, here, "storage_class_name", &k.storage_class_name));
    PARLEY_RETURN_IF_ERROR(GetStringMap(kube, here, "node_selector", &k.node_selector));
  }
  config.proto.set_name(name);
  config.proto.set_description(description);
  config.proto.set_provider(provider);
  config.proto.set_image(image);
  config.proto.set_default_ttl_s(ttl);
  config.proto.set_default_idle_timeout_s(idle);
  config.proto.set_default_on_expiry(on_expiry == "pause" ? sandbox_pb::ON_EXPIRY_PAUSE
                                                          : sandbox_pb::ON_EXPIRY_DESTROY);
  config.proto.set_warm_pool_target(pool);
  *out = std::move(config);
  return absl::OkStatus();
}

}  // namespace

TemplateSet DefaultTemplates() {
  TemplateConfig config;
  config.proto.set_name("default");
  config.proto.set_description("Debian userland, no network (built-in)");
  config.proto.set_provider("local");
  sandbox_pb::SandboxLimits* limits = config.proto.mutable_limits();
  limits->set_memory_bytes(1ull << 30);
  limits->set_max_processes(256);
  limits->set_max_open_files(1024);
  limits->set_max_file_size_bytes(1ull << 30);
  limits->set_network(false);
  config.proto.set_default_ttl_s(3600);
  config.proto.set_default_idle_timeout_s(900);
  config.proto.set_default_on_expiry(sandbox_pb::ON_EXPIRY_DESTROY);
  config.proto.set_warm_pool_target(0);
  TemplateSet set;
  set.default_name = "default";
  set.by_name.emplace("default", std::move(config));
  return set;
}

absl::StatusOr<TemplateSet> ParseTemplates(const std::string& json_text) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError("templates: not valid JSON");
  PARLEY_RETURN_IF_ERROR(CheckKeys(root, "", {"default_template", "templates"}));
  if (!root.contains("templates") || !root.at("templates").is_array() ||
      root.at("templates").empty()) {
    return absl::InvalidArgumentError("templates: expected a non-empty array");
  }
  TemplateSet set;
  const json& list = root.at("templates");
  for (size_t i = 0; i < list.size(); ++i) {
    TemplateConfig config;
    PARLEY_RETURN_IF_ERROR(ParseTemplate(list[i], absl::StrCat("templates[", i, "]"), &config));
    std::string name = config.proto.name();
    if (!set.by_name.emplace(name, std::move(config)).second) {
      return Bad(absl::StrCat("templates[", i, "].name"), absl::StrCat("duplicate \"", name, "\""));
    }
  }
  set.default_name = list[0].value("name", "");
  PARLEY_RETURN_IF_ERROR(GetString(root, "", "default_template", &set.default_name));
  if (!set.by_name.count(set.default_name)) {
    return Bad("default_template", absl::StrCat("no template named \"", set.default_name, "\""));
  }
  return set;
}

absl::StatusOr<TemplateSet> LoadTemplates(const std::string& path) {
  if (path.empty()) return DefaultTemplates();
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read template file ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  absl::StatusOr<TemplateSet> set = ParseTemplates(buffer.str());
  if (!set.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", set.status().message()));
  }
  return set;
}

}  // namespace parley::sandbox
