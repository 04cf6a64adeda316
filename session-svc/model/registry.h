// ProviderRegistry: the model providers this replica is configured with, by name.
//
// Sessions choose a provider by name (AgentConfig.provider; empty means the default)
// and a model. The scripted provider is always there; the others come from the
// providers file (see session-svc/README.md, "Model providers").
//
//   ProviderRegistry registry("scripted");
//   registry.Add(std::make_unique<ScriptedProvider>(ScriptedOptions{}));
//   ModelProvider* provider = registry.Find(config.provider());
//
// Filled once at start-up, then read-only: Find() is thread-safe.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "session-svc/model/model.h"

namespace parley::session::model {

class ProviderRegistry {
 public:
  explicit ProviderRegistry(std::string default_name) : default_name_(std::move(default_name)) {}

  // Adds `provider` under its name; a second provider with the same name replaces it.
  void Add(std::unique_ptr<ModelProvider> provider);
  // The provider named `name` (empty: the default), or null.
  ModelProvider* Find(const std::string& name) const;
  const std::string& default_name() const { return default_name_; }
  void set_default_name(std::string name) { default_name_ = std::move(name); }

 private:
  std::string default_name_;
  std::map<std::string, std::unique_ptr<ModelProvider>> providers_;
};

}  // namespace parley::session::model
