// The configured providers, looked up by name.
#include "session-svc/model/registry.h"

namespace parley::session::model {

void ProviderRegistry::Add(std::unique_ptr<ModelProvider> provider) {
  std::string name = provider->name();
  providers_[name] = std::move(provider);
}

ModelProvider* ProviderRegistry::Find(const std::string& name) const {
  auto it = providers_.find(name.empty() ? default_name_ : name);
  return it == providers_.end() ? nullptr : it->second.get();
}

}  // namespace parley::session::model
