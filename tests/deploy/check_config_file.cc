// check_config_file: runs a file the chart mounts through the parser of the service
// that reads it at start, so a file that would stop the service is caught at render
// time (tests/deploy/check_manifests.mjs calls it).
//
//   check_config_file templates FILE   parley-sandbox's --templates file
//   check_config_file providers FILE   parley-session's --providers_file
//
// Prints the parser's error and exits 1 when the service would refuse the file; exits 0
// when it would load it; 2 on bad usage. A provider's api_key_env is answered with a
// placeholder: which variables the pod gets is checked by check_manifests.mjs.
#include <iostream>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "sandbox-svc/manager/templates.h"
#include "session-svc/model/provider_config.h"

namespace {

absl::Status Check(const std::string& kind, const std::string& path) {
  if (kind == "templates") return parley::sandbox::LoadTemplates(path).status();
  return parley::session::model::LoadProvidersFile(
             path, [](const std::string&) -> std::optional<std::string> { return "placeholder"; })
      .status();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || (std::string(argv[1]) != "templates" && std::string(argv[1]) != "providers")) {
    std::cerr << "usage: check_config_file templates|providers FILE\n";
    return 2;
  }
  absl::Status status = Check(argv[1], argv[2]);
  if (!status.ok()) {
    std::cerr << status.message() << "\n";
    return 1;
  }
  return 0;
}
