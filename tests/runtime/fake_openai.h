// What end-to-end tests need to run turns against FakeModelServer as an OpenAI-compatible
// provider: the providers file a replica reads and a streamed chat completion to queue.
//
//   auto server = FakeModelServer::Start();
//   StartCluster({.replica_flags = {"--providers_file=" +
//                                   FakeOpenAiProvidersFile((*server)->base_url())},
//                 .replica_env = {{"FAKE_MODEL_KEY", key}}});
//   (*server)->Enqueue(OpenAiAnswer("Hello."));
#pragma once

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/harness/services.h"
#include "tests/runtime/fake_model_server.h"

namespace parley::testing {

// Writes a providers file (in the test's temporary directory) naming `base_url` as the
// OpenAI-compatible provider "fake-openai", model "gpt-test", whose key is in the
// replica's FAKE_MODEL_KEY; returns its path.
inline std::string FakeOpenAiProvidersFile(const std::string& base_url) {
  const std::string path = TestTempDir() + "/providers.json";
  std::ofstream out(path);
  out << nlohmann::json{{"providers",
                         {{{"name", "fake-openai"},
                           {"kind", "openai"},
                           {"base_url", base_url},
                           {"api_key_env", "FAKE_MODEL_KEY"},
                           {"default_model", "gpt-test"}}}}}
             .dump();
  return path;
}

// A streamed OpenAI chat completion answering `text`.
inline FakeResponse OpenAiAnswer(const std::string& text) {
  auto data = [](const nlohmann::json& chunk) { return "data: " + chunk.dump() + "\n\n"; };
  return {
      .chunks = {
          data({{"choices", {{{"index", 0}, {"delta", {{"content", text}}}}}}}),
          data(
              {{"choices",
                {{{"index", 0}, {"delta", nlohmann::json::object()}, {"finish_reason", "stop"}}}}}),
          "data: [DONE]\n\n"}};
}

}  // namespace parley::testing
