// Sandbox templates: name → provider, image, limits, network, env, defaults for TTL /
// idle / expiry, and warm-pool size. Loaded once at start from the --templates JSON
// file (format in sandbox-svc/README.md) or built in.
//
//   absl::StatusOr<TemplateSet> templates = LoadTemplates(path);  // "" = built-in
//   const TemplateConfig* t = templates->Find("python");
//
// Parsing is strict: an unknown key or a bad value is INVALID_ARGUMENT naming its path
// ("templates[1].limits.memory_bytes: expected an unsigned integer").
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parley/sandbox/v1/sandbox.pb.h"
#include "sandbox-svc/provider/provider.h"

namespace parley::sandbox {

struct TemplateConfig {
  // name, description, provider, image, limits, default_ttl_s, default_idle_timeout_s,
  // default_on_expiry (never UNSPECIFIED here), warm_pool_target.
  ::parley::sandbox::v1::Template proto;
  std::map<std::string, std::string> env;
  LocalTemplateOptions local;
  KubernetesTemplateOptions kubernetes;
};

struct TemplateSet {
  std::string default_name;
  std::map<std::string, TemplateConfig> by_name;

  const TemplateConfig* Find(const std::string& name) const {
    auto it = by_name.find(name.empty() ? default_name : name);
    return it == by_name.end() ? nullptr : &it->second;
  }
};

// The built-in set: one "default" local template (1 GiB address space, 256 processes,
// 1024 files, 1 GiB files, no network, TTL 1 h, idle 15 min, destroy, no warm pool).
TemplateSet DefaultTemplates();

absl::StatusOr<TemplateSet> ParseTemplates(const std::string& json_text);

// Reads and parses `path`; an empty path gives DefaultTemplates().
absl::StatusOr<TemplateSet> LoadTemplates(const std::string& path);

}  // namespace parley::sandbox
