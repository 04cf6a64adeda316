// Kubeconfig loading. Both formats become one JSON document first — JSON through
// nlohmann::json, YAML through yaml-cpp with the scalar types resolved the way a YAML
// 1.2 core-schema reader (kubectl's) would for the fields a kubeconfig has — so every
// lookup after that is written once. yaml-cpp reports errors by throwing; the throws
// stay inside this file.
#include "sandbox-svc/provider/kube_config.h"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace parley::sandbox {
namespace {

using nlohmann::json;

constexpr char kServiceAccountDir[] = "/var/run/secrets/kubernetes.io/serviceaccount";
// Kubeconfigs are a few levels deep and a few hundred nodes big; past these limits a
// document is not one (or is an alias cycle or an alias bomb).
constexpr int kMaxYamlDepth = 64;
constexpr int kMaxYamlNodes = 1'000'000;

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// A plain (unquoted, untagged) YAML scalar as the JSON value it stands for.
json PlainScalar(const std::string& text) {
  if (text == "null" || text == "Null" || text == "NULL" || text == "~") return nullptr;
  if (text == "true" || text == "True" || text == "TRUE") return true;
  if (text == "false" || text == "False" || text == "FALSE") return false;
  // Integers: -?[0-9]+ that fits; anything else (a version like 1.2, a port list) is text.
  const size_t digits_from = absl::StartsWith(text, "-") ? 1 : 0;
  int64_t number;
  if (text.size() > digits_from &&
      text.find_first_not_of("0123456789", digits_from) == std::string::npos &&
      absl::SimpleAtoi(text, &number)) {
    return number;
  }
  return text;
}

absl::StatusOr<json> YamlToJson(const YAML::Node& node, int depth, int* nodes_left) {
  if (depth > kMaxYamlDepth) return absl::InvalidArgumentError("nested too deeply");
  if (--*nodes_left < 0) return absl::InvalidArgumentError("too many nodes");
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return json(nullptr);
    case YAML::NodeType::Scalar:
      // "?" marks a plain scalar; quoted ones ("!") and explicit tags stay strings.
      return node.Tag() == "?" ? PlainScalar(node.Scalar()) : json(node.Scalar());
    case YAML::NodeType::Sequence: {
      json array = json::array();
      for (const YAML::Node& item : node) {
        absl::StatusOr<json> value = YamlToJson(item, depth + 1, nodes_left);
        if (!value.ok()) return value.status();
        array.push_back(*std::move(value));
      }
      return array;
    }
    case YAML::NodeType::Map: {
      json object = json::object();
      for (const auto& entry : node) {
        if (!entry.first.IsScalar()) {
          return absl::InvalidArgumentError(
              absl::StrCat("line ", entry.first.Mark().line + 1, ": keys must be scalars"));
        }
        absl::StatusOr<json> value = YamlToJson(entry.second, depth + 1, nodes_left);
        if (!value.ok()) return value.status();
        object[entry.first.Scalar()] = *std::move(value);
      }
      return object;
    }
  }
  return json(nullptr);
}

// Why `file` (a kubeconfig) is not usable, as one error.
absl::Status Bad(const std::string& file, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("kubeconfig ", file, ": ", what));
}

// A string field: absent or null is "", any other type an error naming `where.key`.
absl::StatusOr<std::string> StringField(const json& object, const char* key,
                                        const std::string& where, const std::string& file) {
  if (!object.is_object() || !object.contains(key) || object[key].is_null()) return "";
  if (!object[key].is_string()) {
    return Bad(file, absl::StrCat(where, ".", key, ": expected a string"));
  }
  return object[key].get<std::string>();
}

// Resolves a path named in a kubeconfig against the kubeconfig's directory, as kubectl does.
std::string Resolve(const std::string& path, const std::string& kubeconfig_path) {
  if (path.empty() || path[0] == '/') return path;
  std::filesystem::path dir = std::filesystem::path(kubeconfig_path).parent_path();
  return dir.empty() ? path : (dir / path).string();
}

// Decodes a "-data" field (base64) or reads the file the plain field names.
absl::StatusOr<std::string> DataOrFile(const json& object, const std::string& where,
                                       const char* data_key, const char* file_key,
                                       const std::string& file) {
  absl::StatusOr<std::string> data = StringField(object, data_key, where, file);
  if (!data.ok()) return data.status();
  if (!data->empty()) {
    std::string decoded;
    if (!absl::Base64Unescape(*data, &decoded)) {
      return Bad(file, absl::StrCat(where, ".", data_key, ": not valid base64"));
    }
    return decoded;
  }
  absl::StatusOr<std::string> path = StringField(object, file_key, where, file);
  if (!path.ok()) return path.status();
  if (path->empty()) return std::string();
  return ReadFile(Resolve(*path, file));
}

// The `inner` object of the entry of list `list` whose name is `name`
// (clusters[].cluster, users[].user, contexts[].context), or null.
const json* FindNamed(const json& root, const char* list, const std::string& name,
                      const char* inner) {
  if (!root.contains(list) || !root[list].is_array()) return nullptr;
  for (const json& entry : root[list]) {
    if (!entry.is_object() || !entry.contains("name") || entry["name"] != name) continue;
    if (!entry.contains(inner) || !entry[inner].is_object()) return nullptr;
    return &entry[inner];
  }
  return nullptr;
}

absl::StatusOr<KubeConfig> LoadInCluster() {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (host == nullptr || port == nullptr) {
    return absl::FailedPreconditionError(
        "not running in a cluster (KUBERNETES_SERVICE_HOST is unset) and no --kubeconfig given");
  }
  KubeConfig config;
  std::string h(host);
  config.server =
      absl::StrCat("https://", absl::StrContains(h, ":") ? "[" + h + "]" : h, ":", port);
  absl::StatusOr<std::string> token = ReadFile(absl::StrCat(kServiceAccountDir, "/token"));
  if (!token.ok()) return token.status();
  config.token = std::string(absl::StripAsciiWhitespace(*token));
  absl::StatusOr<std::string> ca = ReadFile(absl::StrCat(kServiceAccountDir, "/ca.crt"));
  if (ca.ok()) config.ca_pem = *ca;
  absl::StatusOr<std::string> ns = ReadFile(absl::StrCat(kServiceAccountDir, "/namespace"));
  if (ns.ok()) config.namespace_name = std::string(absl::StripAsciiWhitespace(*ns));
  return config;
}

absl::Status ReadCluster(const json& cluster, const std::string& where, const std::string& file,
                         KubeConfig* config) {
  absl::StatusOr<std::string> server = StringField(cluster, "server", where, file);
  if (!server.ok()) return server.status();
  if (server->empty()) return Bad(file, absl::StrCat(where, " has no server"));
  config->server = *server;
  if (cluster.contains("insecure-skip-tls-verify")) {
    const json& insecure = cluster["insecure-skip-tls-verify"];
    if (!insecure.is_boolean()) {
      return Bad(file, absl::StrCat(where, ".insecure-skip-tls-verify: expected true or false"));
    }
    config->insecure_skip_tls_verify = insecure.get<bool>();
  }
  absl::StatusOr<std::string> ca =
      DataOrFile(cluster, where, "certificate-authority-data", "certificate-authority", file);
  if (!ca.ok()) return ca.status();
  config->ca_pem = *ca;
  return absl::OkStatus();
}

absl::Status ReadUser(const json& user, const std::string& where, const std::string& file,
                      KubeConfig* config) {
  absl::StatusOr<std::string> token = StringField(user, "token", where, file);
  if (!token.ok()) return token.status();
  config->token = *token;
  absl::StatusOr<std::string> token_file = StringField(user, "tokenFile", where, file);
  if (!token_file.ok()) return token_file.status();
  if (config->token.empty() && !token_file->empty()) {
    absl::StatusOr<std::string> text = ReadFile(Resolve(*token_file, file));
    if (!text.ok()) return text.status();
    config->token = std::string(absl::StripAsciiWhitespace(*text));
  }
  absl::StatusOr<std::string> cert =
      DataOrFile(user, where, "client-certificate-data", "client-certificate", file);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = DataOrFile(user, where, "client-key-data", "client-key", file);
  if (!key.ok()) return key.status();
  if (cert->empty() != key->empty()) {
    return Bad(file, absl::StrCat(where, ": a client certificate needs its key and vice versa"));
  }
  config->client_cert_pem = *cert;
  config->client_key_pem = *key;
  if (config->token.empty() && config->client_cert_pem.empty()) {
    for (const char* plugin : {"exec", "auth-provider"}) {
      if (user.contains(plugin)) {
        return Bad(file, absl::StrCat(where, " authenticates through an ", plugin,
                                      " plugin, which parley-sandbox does not run; give it a "
                                      "token, a tokenFile or a client certificate"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<json> ParseKubeConfigDocument(const std::string& text) {
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    try {
      int nodes_left = kMaxYamlNodes;
      absl::StatusOr<json> converted = YamlToJson(YAML::Load(text), 0, &nodes_left);
      if (!converted.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("not valid YAML: ", converted.status().message()));
      }
      root = *std::move(converted);
    } catch (const YAML::Exception& error) {
      return absl::InvalidArgumentError(absl::StrCat("not valid YAML or JSON (line ",
                                                     error.mark.line + 1, ", column ",
                                                     error.mark.column + 1, "): ", error.msg));
    }
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        "expected a mapping at the top (apiVersion, clusters, contexts, users, current-context)");
  }
  return root;
}

absl::StatusOr<KubeConfig> LoadKubeConfig(const std::string& kubeconfig_path) {
  if (kubeconfig_path.empty()) return LoadInCluster();
  const std::string& file = kubeconfig_path;
  absl::StatusOr<std::string> text = ReadFile(file);
  if (!text.ok()) return text.status();
  absl::StatusOr<json> document = ParseKubeConfigDocument(*text);
  if (!document.ok()) return Bad(file, document.status().message());
  const json& root = *document;

  absl::StatusOr<std::string> context_name = StringField(root, "current-context", "", file);
  if (!context_name.ok()) return context_name.status();
  if (context_name->empty()) return Bad(file, "no current-context");
  const std::string context_where = absl::StrCat("context \"", *context_name, "\"");
  const json* context = FindNamed(root, "contexts", *context_name, "context");
  if (context == nullptr) return Bad(file, absl::StrCat(context_where, " not found"));
  absl::StatusOr<std::string> cluster_name = StringField(*context, "cluster", context_where, file);
  absl::StatusOr<std::string> user_name = StringField(*context, "user", context_where, file);
  absl::StatusOr<std::string> namespace_name =
      StringField(*context, "namespace", context_where, file);
  if (!cluster_name.ok()) return cluster_name.status();
  if (!user_name.ok()) return user_name.status();
  if (!namespace_name.ok()) return namespace_name.status();

  KubeConfig config;
  const std::string cluster_where = absl::StrCat("cluster \"", *cluster_name, "\"");
  const json* cluster = FindNamed(root, "clusters", *cluster_name, "cluster");
  if (cluster == nullptr) return Bad(file, absl::StrCat(cluster_where, " not found"));
  if (absl::Status s = ReadCluster(*cluster, cluster_where, file, &config); !s.ok()) return s;
  // A context without a user (or naming none that exists) talks to the server
  // anonymously, as kubectl does.
  if (const json* user = FindNamed(root, "users", *user_name, "user"); user != nullptr) {
    const std::string user_where = absl::StrCat("user \"", *user_name, "\"");
    if (absl::Status s = ReadUser(*user, user_where, file, &config); !s.ok()) return s;
  }
  if (!namespace_name->empty()) config.namespace_name = *namespace_name;
  return config;
}

}  // namespace parley::sandbox
