// A gRPC reflection client for tests: which services does a server list?
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace parley::testing {

// Service names the server at `target` lists through gRPC reflection (v1alpha).
absl::StatusOr<std::vector<std::string>> ListServicesByReflection(const std::string& target);

}  // namespace parley::testing
